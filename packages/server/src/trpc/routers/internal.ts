import { z } from 'zod';
import {
  balanceOf,
  grantCredits,
  initBalance,
  refundUsage,
  spendCredits,
} from '../../domain/credits/personal.ts';
import { initPool, useGuildCreditsViaCreditsUse } from '../../domain/guild/pools.ts';
import { amount, description, guildId, idempotencyKey, text, userId, uuid } from '../../schemas.ts';
import { internalProcedure, router } from '../init.ts';
import { useInput } from './credits.ts';

const internalCreditsRouter = router({
  balance: internalProcedure
    .input(z.strictObject({ userId }))
    .query(({ ctx, input }) => balanceOf(ctx.deps.db, input.userId)),

  init: internalProcedure
    .input(z.strictObject({ userId }))
    .mutation(({ ctx, input }) => initBalance(ctx.deps.db, input.userId)),

  use: internalProcedure
    .input(useInput.extend({ userId }))
    .mutation(({ ctx, input: { guildId, ...spend } }) =>
      guildId
        ? useGuildCreditsViaCreditsUse(ctx.deps, { ...spend, guildId })
        : spendCredits(ctx.deps.db, spend),
    ),

  grant: internalProcedure
    .input(z.strictObject({ userId, amount, reason: text(500).min(1), idempotencyKey }))
    .mutation(({ ctx, input }) => grantCredits(ctx.deps.db, { ...input, appId: ctx.service.appId })),

  refund: internalProcedure
    .input(
      z.strictObject({ userId, transactionId: uuid, amount: amount.optional(), description, idempotencyKey }),
    )
    .mutation(({ ctx, input }) => refundUsage(ctx.deps.db, input)),
});

const internalGuildPoolRouter = router({
  init: internalProcedure
    .input(z.strictObject({ guildId }))
    .mutation(({ ctx, input }) => initPool(ctx.deps.db, input.guildId)),
});

export const internalRouter = router({
  credits: internalCreditsRouter,
  guildPool: internalGuildPoolRouter,
});
