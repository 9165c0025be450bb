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
/** What a webhook receiver or internal.events.list gets (issue 16); re-exported by @mana-credits/client. */
export type { EventEnvelope, EventType } from '../../domain/events/types.ts';
export type RouterInputs = inferRouterInputs<AppRouter>;
export type RouterOutputs = inferRouterOutputs<AppRouter>;
