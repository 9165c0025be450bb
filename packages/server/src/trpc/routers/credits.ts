import { z } from 'zod';
import {
  activePackages,
  balanceOf,
  spendCredits,
  transactionHistory,
} from '../../domain/credits/personal.ts';
import { useGuildCreditsViaCreditsUse } from '../../domain/guild/pools.ts';
import { amount, appId, description, guildId, idempotencyKey, metadata, pageInput } from '../../schemas.ts';
import { authedProcedure, publicProcedure, router } from '../init.ts';

export const useInput = z.strictObject({
  amount,
  appId,
  description,
  idempotencyKey: idempotencyKey.optional(),
  metadata: metadata.optional(),
  /** Spend from this guild's pool instead of the personal balance. */
  guildId: guildId.optional(),
});

export const creditsRouter = router({
  balance: authedProcedure.query(({ ctx }) => balanceOf(ctx.deps.db, ctx.user.id)),

  use: authedProcedure
    .input(useInput)
    .mutation(({ ctx, input: { guildId, ...spend } }) =>
      guildId
        ? useGuildCreditsViaCreditsUse(ctx.deps, { ...spend, guildId, userId: ctx.user.id })
        : spendCredits(ctx.deps.db, { ...spend, userId: ctx.user.id }),
    ),

  transactions: authedProcedure
    .input(pageInput.optional())
    .query(({ ctx, input }) => transactionHistory(ctx.deps.db, ctx.user.id, input ?? { limit: 20 })),

  packages: publicProcedure.query(({ ctx }) => activePackages(ctx.deps.db)),
});
