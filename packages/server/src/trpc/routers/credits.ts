import { z } from 'zod';
import { lotsOf, transactionWithLots } from '../../domain/credits/lots.ts';
import { activePackages, balanceOf, transactionHistory } from '../../domain/credits/personal.ts';
import { setUserAlerts, userAlerts } from '../../domain/events/alerts.ts';
import { useGuildCreditsViaCreditsUse } from '../../domain/guild/pools.ts';
import { balanceAt } from '../../domain/history/balance.ts';
import { statement } from '../../domain/history/statement.ts';
import { myUsage } from '../../domain/history/usage.ts';
import { autoTopUpOf, disableAutoTopUpOf, setupAutoTopUp } from '../../domain/stripe/auto-top-up.ts';
import { purchaseHistory, purchaseStatus, startPurchase } from '../../domain/stripe/purchases.ts';
import {
  amount,
  appId,
  description,
  guildId,
  idempotencyKey,
  metadata,
  pageInput,
  text,
  uuid,
} from '../../schemas.ts';
import { authedProcedure, publicProcedure, router } from '../init.ts';
import { lowBalanceThreshold } from './events.ts';
import { balanceAtInput, statementInput, usageInput } from './history-inputs.ts';

export const useInput = z.strictObject({
  amount,
  appId,
  description,
  idempotencyKey: idempotencyKey.optional(),
  metadata: metadata.optional(),
  /** Spend from this guild's pool instead of the personal balance. */
  guildId: guildId.optional(),
});

export const purchaseInput = z.strictObject({
  packageId: uuid,
  mode: z.enum(['payment_intent', 'checkout']).default('payment_intent'),
  successUrl: text(2048).optional(),
  cancelUrl: text(2048).optional(),
});

export const autoTopUpSetupInput = z.strictObject({
  packageId: uuid,
  /** Buy when your available credits fall below this many. */
  threshold: amount,
  /** At most this many automatic purchases per UTC month (default 5). */
  maxPerMonth: z.int().min(1).max(1000).optional(),
});

/** Auto top-up (issue 19): buy a package with a saved card when the balance runs low. */
const autoTopUpRouter = router({
  setup: authedProcedure
    .input(autoTopUpSetupInput)
    .mutation(({ ctx, input }) =>
      setupAutoTopUp({ db: ctx.deps.db, stripe: ctx.deps.stripe }, { user: ctx.user, ...input }),
    ),
  get: authedProcedure.query(({ ctx }) => autoTopUpOf(ctx.deps.db, ctx.user.id)),
  disable: authedProcedure.mutation(({ ctx }) => disableAutoTopUpOf(ctx.deps.db, ctx.user.id)),
});

export const creditsRouter = router({
  autoTopUp: autoTopUpRouter,

  balance: authedProcedure.query(({ ctx }) =>
    balanceOf(ctx.deps.db, ctx.user.id, ctx.deps.config.expiryNoticeDays),
  ),

  /** Your credit lots in burn order: where your credits came from and when they expire. */
  lots: authedProcedure
    .input(z.strictObject({ includeSpent: z.boolean().optional() }).optional())
    .query(({ ctx, input }) =>
      lotsOf(ctx.deps.db, 'user', ctx.user.id, { includeSpent: input?.includeSpent }),
    ),

  /** One of your ledger entries, with the lots that paid for it (or that it filled). */
  transaction: authedProcedure
    .input(z.strictObject({ transactionId: uuid }))
    .query(({ ctx, input }) => transactionWithLots(ctx.deps.db, ctx.user.id, input.transactionId)),

  use: authedProcedure
    .input(useInput)
    .mutation(({ ctx, input: { guildId, ...spend } }) =>
      guildId
        ? useGuildCreditsViaCreditsUse(ctx.deps, { ...spend, guildId, userId: ctx.user.id })
        : ctx.deps.spend({ ...spend, userId: ctx.user.id }),
    ),

  transactions: authedProcedure
    .input(pageInput.optional())
    .query(({ ctx, input }) => transactionHistory(ctx.deps.db, ctx.user.id, input ?? { limit: 20 })),

  packages: publicProcedure.query(({ ctx }) => activePackages(ctx.deps.db)),

  purchase: authedProcedure.input(purchaseInput).mutation(({ ctx, input }) =>
    startPurchase(
      {
        db: ctx.deps.db,
        stripe: ctx.deps.stripe,
        redirectOrigins: [...ctx.deps.config.corsOrigins, ...ctx.deps.config.checkoutAllowedOrigins],
      },
      { user: ctx.user, ...input },
    ),
  ),

  purchases: authedProcedure
    .input(pageInput.optional())
    .query(({ ctx, input }) => purchaseHistory(ctx.deps.db, ctx.user.id, input ?? { limit: 20 })),

  purchaseStatus: authedProcedure
    .input(z.strictObject({ purchaseId: uuid }))
    .query(({ ctx, input }) => purchaseStatus(ctx.deps.db, ctx.user.id, input.purchaseId)),

  balanceAt: authedProcedure
    .input(balanceAtInput)
    .query(({ ctx, input }) => balanceAt(ctx.deps.db, ctx.user.id, input.at)),

  usage: authedProcedure
    .input(usageInput)
    .query(({ ctx, input }) => myUsage(ctx.deps.db, ctx.user.id, input)),

  statement: authedProcedure
    .input(statementInput)
    .query(({ ctx, input }) => statement(ctx.deps.db, ctx.user.id, input)),
  /** The low-balance threshold of the caller's balance (events: balance.low/depleted/recovered). */
  alerts: authedProcedure.query(({ ctx }) => userAlerts(ctx.deps.db, ctx.user.id)),

  setAlerts: authedProcedure
    .input(z.strictObject({ lowBalanceThreshold }))
    .mutation(({ ctx, input }) => setUserAlerts(ctx.deps.db, ctx.user.id, input.lowBalanceThreshold)),
});
