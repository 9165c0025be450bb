import { randomUUID } from 'node:crypto';
import {
  creditGuildPool,
  type Database,
  debitBalance,
  debitGuildPool,
  ensureGuildPool,
  findGuildPool,
  findLedgerEntry,
  GUILD_POOL_SAFE_INTEGER_CHECK,
  isCheckViolation,
  type JsonObject,
  listGuildEntries,
  lockGuildPool,
  totalFundedExceeds,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { MAX_CREDITS } from '../credits/balance-limit.ts';
import { lotsOf } from '../credits/lots.ts';
import { usageFields } from '../credits/personal.ts';
import { InvalidCursorError, PreconditionFailedError } from '../errors.ts';
import { guildKeys, isReplayed, markReplayed, requestHash, withIdempotency } from '../idempotency.ts';
import { spendingTransaction } from '../refusals.ts';
import { expireAccountLots, lockPersonalBalance, spendPersonal, spendPool } from '../spending.ts';
import { poolNotFound } from './limits.ts';
import {
  type PoolUseResult,
  toFundResult,
  toGuildTransactionView,
  toPoolUseResult,
  toPoolView,
  toPostedFundResult,
  toPostedPoolUseResult,
} from './mappers.ts';
import { MANAGERS, type MembershipClient, requireRole } from './membership.ts';

export interface GuildDeps {
  db: Kysely<Database>;
  membership: MembershipClient;
  /** Members' pool spends go through here (coalesced per hot pool); absent: spendFromPool, one by one. */
  spendFromPool?: PoolSpender | undefined;
}

/** Creates a guild's pool; idempotent and safe when called concurrently. */
export async function initPool(db: Kysely<Database>, guildId: string) {
  const created = await ensureGuildPool(db, guildId);
  const pool = await findGuildPool(db, guildId);
  if (!pool) throw poolNotFound();
  return { created, ...toPoolView(pool) };
}

/** A pool's lots in burn order, for its owners and admins. */
export async function poolLots(
  deps: GuildDeps,
  actorId: string,
  input: { guildId: string; includeSpent?: boolean | undefined },
) {
  await requireRole(deps.membership, input.guildId, actorId, MANAGERS);
  if (!(await findGuildPool(deps.db, input.guildId))) throw poolNotFound();
  return lotsOf(deps.db, 'guild', input.guildId, { includeSpent: input.includeSpent });
}

export async function poolBalance(deps: GuildDeps, actorId: string, guildId: string) {
  await requireRole(deps.membership, guildId, actorId);
  const pool = await findGuildPool(deps.db, guildId);
  if (!pool) throw poolNotFound();
  return toPoolView(pool);
}

const poolLimit = (requested: number) =>
  new PreconditionFailedError(
    `The pool cannot hold more than ${MAX_CREDITS} credits (balance and total funded)`,
    'POOL_BALANCE_LIMIT',
    { limit: MAX_CREDITS, requested },
  );

export interface FundInput {
  guildId: string;
  amount: number;
  idempotencyKey?: string | undefined;
}

/**
 * An owner or admin moves personal credits into the pool: personal debit (ledger `guild_funding`) and pool
 * credit (guild ledger `funding`) in one transaction. Locks: the funder's balance row first, then the pool
 * row — the fixed order for every transaction that touches both. The two ledger rows name each other in
 * their metadata, so a replay can answer both balances as they were. A keyed refusal (too few personal
 * credits) is recorded under the guild key, under the funder's balance row lock, which a late funding with
 * that key takes before it checks the key.
 */
export async function fundPool(deps: GuildDeps, actorId: string, input: FundInput) {
  await requireRole(deps.membership, input.guildId, actorId, MANAGERS);
  const { db } = deps;
  const hash = requestHash('guild.fund', { amount: input.amount });
  return withIdempotency(
    guildKeys(db, input.guildId, actorId),
    { key: input.idempotencyKey, hash },
    (claim) =>
      spendingTransaction(db, async (trx) => {
        // Pools are never deleted, so an unlocked look is enough to refuse early.
        if (!(await findGuildPool(trx, input.guildId))) throw poolNotFound();
        if (claim) {
          // The key is shared with guild.use, which decides it under the pool's lock: a keyed funding holds that
          // lock too (after the funder's balance row: the fixed order) before it decides or records anything.
          await lockPersonalBalance(trx, actorId);
          await lockGuildPool(trx, input.guildId, input.amount);
        }
        const guildTransactionId = randomUUID();
        const personal = await spendPersonal(
          trx,
          { userId: actorId, amount: input.amount, claim },
          (executor) =>
            debitBalance(
              executor,
              {
                userId: actorId,
                type: 'guild_funding',
                amount: input.amount,
                description: 'Guild pool funding',
                metadata: { guildTransactionId },
                guildId: input.guildId,
              },
              'spent',
              claim,
            ),
        );
        // Lapsed pool lots are expired first (check on access, as a personal credit does), so the pool balance
        // this funding answers and writes on its ledger row never counts credits whose time is up.
        await expireAccountLots(trx, 'guild', input.guildId);
        // The pool gets the funder's credits as they were: one lot per lot portion the debit took, with its
        // expiry, category and priority (moving never makes credits last longer or count as paid).
        const pooled = await creditGuildPool(
          trx,
          {
            id: guildTransactionId,
            guildId: input.guildId,
            userId: actorId,
            type: 'funding',
            amount: input.amount,
            description: 'Pool funding',
            metadata: { personalTransactionId: personal.id },
            idempotencyKey: input.idempotencyKey,
            requestHash: hash,
          },
          { kind: 'mirror', source: 'funding', portions: personal.lots, demote: false },
        ).catch((error: unknown) => {
          if (isCheckViolation(error, GUILD_POOL_SAFE_INTEGER_CHECK)) throw poolLimit(input.amount);
          throw error;
        });
        if (!pooled) throw poolNotFound();
        // total_funded has no CHECK; past 2^53 − 1 the pool could no longer be read. Compared in SQL, under the
        // row lock the credit holds, so a refusal rolls back exactly this funding.
        if (await totalFundedExceeds(trx, input.guildId, MAX_CREDITS)) throw poolLimit(input.amount);
        return toPostedFundResult(pooled, personal);
      }),
    async (first) => {
      const personalId = (first.metadata as { personalTransactionId?: string } | null)?.personalTransactionId;
      const personal = personalId ? await findLedgerEntry(db, actorId, personalId) : undefined;
      if (!personal) throw new Error(`funding ${first.id} has no personal ledger row`);
      return toFundResult(first, personal);
    },
  );
}

export interface PoolUseInput {
  guildId: string;
  userId: string;
  amount: number;
  appId: string;
  description: string;
  idempotencyKey?: string | undefined;
  metadata?: JsonObject | undefined;
}

/** Spends from a pool for a member whose membership was checked: spendFromPool, or coalesced (pool-coalescer.ts). */
export type PoolSpender = (input: PoolUseInput) => Promise<PoolUseResult>;

/** A member spends from the pool (guild.use, credits.use with a guildId): members only. */
export async function useGuildCredits(deps: GuildDeps, input: PoolUseInput): Promise<PoolUseResult> {
  await requireRole(deps.membership, input.guildId, input.userId);
  return deps.spendFromPool ? deps.spendFromPool(input) : spendFromPool(deps.db, input);
}

/** The fingerprint of a pool spend (its key is scoped to guild and member). */
export function poolUseRequestHash(
  input: Omit<PoolUseInput, 'guildId' | 'userId' | 'idempotencyKey'>,
): string {
  return requestHash('guild.use', {
    amount: input.amount,
    appId: input.appId,
    description: input.description,
    metadata: input.metadata,
  });
}

/**
 * One pool spend on its own (the single path; the caller checked membership). Everything happens after the
 * pool row is locked, in one transaction: pool balance, daily and monthly limits are checked, then the
 * debit, the guild ledger row, the member's day counter and usage_stats are written in one statement. The key
 * is scoped to (guild, member); a keyed refusal (pool short, member limit) is recorded under it, under the pool
 * lock. credits.pool_use_batch makes the same moves for coalesced spends.
 */
export async function spendFromPool(db: Kysely<Database>, input: PoolUseInput): Promise<PoolUseResult> {
  const hash = poolUseRequestHash(input);
  return withIdempotency(
    guildKeys(db, input.guildId, input.userId),
    { key: input.idempotencyKey, hash },
    (claim) =>
      spendingTransaction(db, async (trx) => {
        const posted = await spendPool(trx, { ...input, claim }, () =>
          debitGuildPool(trx, {
            guildId: input.guildId,
            userId: input.userId,
            type: 'usage',
            ...usageFields(input, hash),
          }),
        );
        return toPostedPoolUseResult(posted);
      }),
    toPoolUseResult,
  );
}

/**
 * `credits.use` with a guildId: the guild.use path, answered in credits.use's shape, where `balance` is what
 * is left in the account that was charged — here the pool.
 */
export async function useGuildCreditsViaCreditsUse(deps: GuildDeps, input: PoolUseInput) {
  const result = await useGuildCredits(deps, input);
  const answer = { ...result, balance: result.poolBalance };
  return isReplayed(result) ? markReplayed(answer) : answer;
}

/** The pool's ledger, newest first: owners and admins see every row, members only their own. */
export async function poolTransactions(
  deps: GuildDeps,
  actorId: string,
  input: { guildId: string; limit: number; cursor?: string | undefined },
) {
  const role = await requireRole(deps.membership, input.guildId, actorId);
  if (!(await findGuildPool(deps.db, input.guildId))) throw poolNotFound();
  const onlyUserId = MANAGERS.includes(role) ? undefined : actorId;
  const result = await listGuildEntries(deps.db, input.guildId, input, { memberId: onlyUserId });
  if (!result) throw new InvalidCursorError('a transaction you can see');
  return { items: result.items.map(toGuildTransactionView), nextCursor: result.nextCursor };
}
