import { z } from 'zod';
import { MAX_BATCH_ITEMS, useCreditsBatch } from '../../domain/credits/batch.ts';
import {
  balanceOf,
  grantCredits,
  initBalance,
  refundUsage,
  spendCredits,
} from '../../domain/credits/personal.ts';
import { commitReservation, releaseReservation, reserveCredits } from '../../domain/credits/reservations.ts';
import {
  amount,
  appId,
  description,
  guildId,
  idempotencyKey,
  metadata,
  text,
  userId,
  uuid,
} from '../../schemas.ts';
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
    .mutation(({ ctx, input }) => spendCredits(ctx.deps.db, input)),

  grant: internalProcedure
    .input(z.strictObject({ userId, amount, reason: text(500).min(1), idempotencyKey }))
    .mutation(({ ctx, input }) => grantCredits(ctx.deps.db, { ...input, appId: ctx.service.appId })),

  refund: internalProcedure
    .input(
      z.strictObject({ userId, transactionId: uuid, amount: amount.optional(), description, idempotencyKey }),
    )
    .mutation(({ ctx, input }) => refundUsage(ctx.deps.db, input)),

  reserve: internalProcedure
    .input(
      z.strictObject({
        userId,
        amount,
        appId,
        description,
        ttlSeconds: z.int().min(1).max(86_400).default(600),
        idempotencyKey,
        guildId: guildId.optional(),
        metadata: metadata.optional(),
      }),
    )
    .mutation(({ ctx, input }) => reserveCredits(ctx.deps.db, input)),

  commit: internalProcedure
    .input(
      z.strictObject({
        reservationId: uuid,
        amount: amount.optional(),
        description: description.optional(),
        metadata: metadata.optional(),
      }),
    )
    .mutation(({ ctx, input }) => commitReservation(ctx.deps.db, input)),

  release: internalProcedure
    .input(z.strictObject({ reservationId: uuid }))
    .mutation(({ ctx, input }) => releaseReservation(ctx.deps.db, input.reservationId)),

  // Items are checked one by one inside (a bad item fails alone), so here only the list itself is.
  useBatch: internalProcedure
    .input(z.strictObject({ items: z.array(z.unknown()).min(1).max(MAX_BATCH_ITEMS) }))
    .mutation(({ ctx, input }) => useCreditsBatch(ctx.deps.db, input.items)),
});

export const internalRouter = router({
  credits: internalCreditsRouter,
});
