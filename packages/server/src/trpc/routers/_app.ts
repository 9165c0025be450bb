import type { inferRouterInputs, inferRouterOutputs } from '@trpc/server';
import { router } from '../init.ts';
import { creditsRouter } from './credits.ts';
import { giftsRouter } from './gifts.ts';
import { guildRouter } from './guild.ts';
import { internalRouter } from './internal.ts';

export const appRouter = router({
  credits: creditsRouter,
  gifts: giftsRouter,
  internal: internalRouter,
  guild: guildRouter,
});

export type AppRouter = typeof appRouter;
export type RouterInputs = inferRouterInputs<AppRouter>;
export type RouterOutputs = inferRouterOutputs<AppRouter>;
