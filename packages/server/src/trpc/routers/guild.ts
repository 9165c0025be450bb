import { z } from 'zod';
import { guildAlerts, setGuildAlerts } from '../../domain/events/alerts.ts';
import { memberLimits, setMemberLimits } from '../../domain/guild/limits.ts';
import {
  fundPool,
  poolBalance,
  poolLots,
  poolTransactions,
  useGuildCredits,
} from '../../domain/guild/pools.ts';
import { poolUsage } from '../../domain/history/usage.ts';
import {
  amount,
  appId,
  description,
  guildId,
  idempotencyKey,
  metadata,
  pageInput,
  userId,
} from '../../schemas.ts';
import { authedProcedure, router } from '../init.ts';
import { lowBalanceThreshold } from './events.ts';
import { guildUsageInput } from './history-inputs.ts';

/** A cap in credits: null = unlimited, 0 = blocked. Always sent explicitly. */
const limit = z.int({ error: 'must be a whole number of credits or null' }).min(0).nullable();

export const guildRouter = router({
  balance: authedProcedure
    .input(z.strictObject({ guildId }))
    .query(({ ctx, input }) => poolBalance(ctx.deps, ctx.user.id, input.guildId)),

  fund: authedProcedure
    .input(z.strictObject({ guildId, amount, idempotencyKey: idempotencyKey.optional() }))
    .mutation(({ ctx, input }) => fundPool(ctx.deps, ctx.user.id, input)),

  use: authedProcedure
    .input(
      z.strictObject({
        guildId,
        amount,
        appId,
        description,
        idempotencyKey: idempotencyKey.optional(),
        metadata: metadata.optional(),
      }),
    )
    .mutation(({ ctx, input }) => useGuildCredits(ctx.deps, { ...input, userId: ctx.user.id })),

  /** The pool's credit lots in burn order (owners and admins). */
  lots: authedProcedure
    .input(z.strictObject({ guildId, includeSpent: z.boolean().optional() }))
    .query(({ ctx, input }) => poolLots(ctx.deps, ctx.user.id, input)),

  transactions: authedProcedure
    .input(pageInput.extend({ guildId }))
    .query(({ ctx, input }) => poolTransactions(ctx.deps, ctx.user.id, input)),

  memberLimits: authedProcedure
    .input(z.strictObject({ guildId, userId }))
    .query(({ ctx, input }) => memberLimits(ctx.deps, ctx.user.id, input)),

  setMemberLimits: authedProcedure
    .input(z.strictObject({ guildId, userId, dailyLimit: limit, monthlyLimit: limit }))
    .mutation(({ ctx, input }) => setMemberLimits(ctx.deps, ctx.user.id, input)),

  usage: authedProcedure
    .input(guildUsageInput)
    .query(({ ctx, input }) => poolUsage(ctx.deps, ctx.user.id, input)),
  /** The pool's low-balance threshold (events: guild.pool.low/depleted/recovered); any member reads it. */
  alerts: authedProcedure
    .input(z.strictObject({ guildId }))
    .query(({ ctx, input }) => guildAlerts(ctx.deps, ctx.user.id, input.guildId)),

  /** Owners and admins set it. */
  setAlerts: authedProcedure
    .input(z.strictObject({ guildId, lowBalanceThreshold }))
    .mutation(({ ctx, input }) => setGuildAlerts(ctx.deps, ctx.user.id, input)),
});
