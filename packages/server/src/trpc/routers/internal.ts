import { z } from 'zod';
import { reconcile } from '../../domain/audit/reconcile.ts';
import { MAX_BATCH_ITEMS, useCreditsBatch } from '../../domain/credits/batch.ts';
import { lotsOf, transactionWithLots } from '../../domain/credits/lots.ts';
import { upsertPackage } from '../../domain/credits/packages.ts';
import { balanceOf, grantCredits, initBalance, refundUsage } from '../../domain/credits/personal.ts';
import { commitReservation, releaseReservation, reserveCredits } from '../../domain/credits/reservations.ts';
import { setUserAlerts, userAlerts } from '../../domain/events/alerts.ts';
import { initPool, useGuildCreditsViaCreditsUse } from '../../domain/guild/pools.ts';
import { balanceAt } from '../../domain/history/balance.ts';
import { instant } from '../../domain/history/range.ts';
import { statement } from '../../domain/history/statement.ts';
import { serviceUsage } from '../../domain/history/usage.ts';
import { autoTopUpOf, disableAutoTopUpOf } from '../../domain/stripe/auto-top-up.ts';
import {
  amount,
  appId,
  description,
  guildId,
  idempotencyKey,
  identifier,
  metadata,
  text,
  userId,
  uuid,
} from '../../schemas.ts';
import { internalProcedure, router } from '../init.ts';
import { useInput } from './credits.ts';
import { internalEventsRouter, internalWebhooksRouter, lowBalanceThreshold } from './events.ts';
import { internalGiftsRouter } from './gifts.ts';
import { internalBalanceAtInput, internalStatementInput, internalUsageInput } from './history-inputs.ts';

const internalCreditsRouter = router({
  autoTopUp: router({
    get: internalProcedure
      .input(z.strictObject({ userId }))
      .query(({ ctx, input }) => autoTopUpOf(ctx.deps.db, input.userId)),
    disable: internalProcedure
      .input(z.strictObject({ userId }))
      .mutation(({ ctx, input }) => disableAutoTopUpOf(ctx.deps.db, input.userId)),
  }),

  balance: internalProcedure
    .input(z.strictObject({ userId }))
    .query(({ ctx, input }) => balanceOf(ctx.deps.db, input.userId, ctx.deps.config.expiryNoticeDays)),

  lots: internalProcedure
    .input(z.strictObject({ userId, includeSpent: z.boolean().optional() }))
    .query(({ ctx, input }) =>
      lotsOf(ctx.deps.db, 'user', input.userId, { includeSpent: input.includeSpent }),
    ),

  transaction: internalProcedure
    .input(z.strictObject({ userId, transactionId: uuid }))
    .query(({ ctx, input }) => transactionWithLots(ctx.deps.db, input.userId, input.transactionId)),

  init: internalProcedure
    .input(z.strictObject({ userId }))
    .mutation(({ ctx, input }) => initBalance(ctx.deps.db, input.userId)),

  use: internalProcedure
    .input(useInput.extend({ userId }))
    .mutation(({ ctx, input: { guildId, ...spend } }) =>
      guildId ? useGuildCreditsViaCreditsUse(ctx.deps, { ...spend, guildId }) : ctx.deps.spend(spend),
    ),

  grant: internalProcedure
    .input(
      z
        .strictObject({
          userId,
          amount,
          reason: text(500).min(1),
          idempotencyKey,
          /**
           * When the credits expire: an ISO 8601 date-time in the future. Checked by grantCredits, not here, so
           * that a retry with the same key after that time is answered with the first grant (a replay).
           */
          expiresAt: instant.optional(),
          /** Or this many days after the grant. Neither: they never expire. */
          expiresInDays: z.int().min(1).max(3650).optional(),
          category: z.enum(['paid', 'promotional']).optional(),
          /** 0..100, lower burns first; default by category (promotional 10, paid 50). */
          priority: z.int().min(0).max(100).optional(),
        })
        .refine((input) => input.expiresAt === undefined || input.expiresInDays === undefined, {
          path: ['expiresInDays'],
          error: 'give expiresAt or expiresInDays, not both',
        }),
    )
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
    .mutation(({ ctx, input }) => reserveCredits(ctx.deps, input)),

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
    .mutation(({ ctx, input }) => useCreditsBatch(ctx.deps, input.items)),

  balanceAt: internalProcedure
    .input(internalBalanceAtInput)
    .query(({ ctx, input }) => balanceAt(ctx.deps.db, input.userId, input.at)),

  statement: internalProcedure
    .input(internalStatementInput)
    .query(({ ctx, input: { userId, ...request } }) => statement(ctx.deps.db, userId, request)),
  alerts: internalProcedure
    .input(z.strictObject({ userId }))
    .query(({ ctx, input }) => userAlerts(ctx.deps.db, input.userId)),

  setAlerts: internalProcedure
    .input(z.strictObject({ userId, lowBalanceThreshold }))
    .mutation(({ ctx, input }) => setUserAlerts(ctx.deps.db, input.userId, input.lowBalanceThreshold)),
});

/** Stripe's bounds for one EUR charge, in cents. */
const MIN_PRICE_EURO_CENTS = 50;
const MAX_PRICE_EURO_CENTS = 99_999_999;

const internalPackagesRouter = router({
  upsert: internalProcedure
    .input(
      z.strictObject({
        id: uuid.optional(),
        name: text(200).trim().min(1),
        description: text(1000).optional(),
        credits: amount,
        priceEuroCents: z
          .int()
          .min(MIN_PRICE_EURO_CENTS, {
            error: `must be at least ${MIN_PRICE_EURO_CENTS} (Stripe's minimum charge)`,
          })
          .max(MAX_PRICE_EURO_CENTS),
        stripePriceId: identifier(255).optional(),
        active: z.boolean(),
        sortOrder: z.int().min(-1_000_000).max(1_000_000),
        /** Days a purchase's credits stay valid; null or absent = they never expire. */
        validityDays: z.int().min(1).max(3650).nullable().optional(),
      }),
    )
    .mutation(({ ctx, input }) => upsertPackage(ctx.deps.db, input)),
});

const internalGuildPoolRouter = router({
  init: internalProcedure
    .input(z.strictObject({ guildId }))
    .mutation(({ ctx, input }) => initPool(ctx.deps.db, input.guildId)),
});

export const internalRouter = router({
  credits: internalCreditsRouter,
  audit: router({
    reconcile: internalProcedure.query(({ ctx }) => reconcile(ctx.deps.db)),
  }),
  gifts: internalGiftsRouter,
  packages: internalPackagesRouter,
  guildPool: internalGuildPoolRouter,
  usage: internalProcedure
    .input(internalUsageInput)
    .query(({ ctx, input }) => serviceUsage(ctx.deps.db, input)),
  webhooks: internalWebhooksRouter,
  events: internalEventsRouter,
});
