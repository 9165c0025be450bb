import { type Kysely, sql, type Transaction } from 'kysely';
import type { Database, GuildLedgerRow, GuildLedgerType, GuildPoolRow } from '../database.ts';
import { lapsedHeldLots, lapsedHolds, lapsedLots } from './balances.ts';
import { type LedgerFilter, ledgerFilterConditions } from './ledger-filter.ts';
import {
  type GuildRow,
  guildLedgerRow,
  memberCounter,
  type PostedEntry,
  type PostedRow,
  toPostedEntry,
  usageCounter,
} from './ledger-rows.ts';
import { expiryOfCredit, type LotCredit, lotsOfCredit } from './lots.ts';
import { newestFirst, type Page, type PageRequest } from './pagination.ts';
import { notRefused } from './refusals.ts';

/** The unique index that makes guild idempotency atomic: (organization_id, user_id, idempotency_key). */
export const GUILD_IDEMPOTENCY_INDEX = 'guild_transactions_idempotency_key';

/** The CHECK that keeps a pool balance within the safe integer range. */
export const GUILD_POOL_SAFE_INTEGER_CHECK = 'guild_pools_balance_safe_integer';

/** A guild ledger entry to post; `amount` is always positive, the function says which way it moves. */
export type GuildEntryInput = GuildRow;

export type PostedGuildEntry = PostedEntry;

/** Creates the pool if missing; safe when called concurrently. Returns true if this call created it. */
export async function ensureGuildPool(db: Kysely<Database>, guildId: string): Promise<boolean> {
  const result = await db
    .insertInto('credits.guild_pools')
    .values({ organization_id: guildId })
    .onConflict((oc) => oc.column('organization_id').doNothing())
    .executeTakeFirst();
  return Number(result.numInsertedOrUpdatedRows ?? 0) > 0;
}

/**
 * A pool as it may be spent now: like getBalance, `reserved` counts only holds still open at the time of the
 * read (a lapsed hold is returned by the next spend before it checks the pool). Not for locking: see
 * lockGuildPool.
 */
export async function findGuildPool(
  db: Kysely<Database>,
  guildId: string,
): Promise<GuildPoolRow | undefined> {
  return db
    .selectFrom('credits.guild_pools as p')
    .select(
      sql<number>`p.balance - ${lapsedLots('guild', sql`p.organization_id`, sql`p.next_lot_expiry`)}
                   - ${lapsedHeldLots(sql`r.organization_id = p.organization_id`)}`.as('balance'),
    )
    .select([
      'organization_id',
      'total_funded',
      'total_spent',
      'version',
      'created_at',
      'updated_at',
      'next_lot_expiry',
      'total_expired',
    ])
    .select(
      sql<number>`p.reserved - ${lapsedHolds(sql`r.organization_id = p.organization_id`)}`.as('reserved'),
    )
    .where('organization_id', '=', guildId)
    .executeTakeFirst();
}

/**
 * Locks the pool row for the rest of the transaction and says whether it covers a spend of `amount`
 * (credits.covers) and whether a lot of it has lapsed (expire its lots, then lock again). Every spend from a pool takes this lock first, so checks made after it (balance, member
 * limits) cannot be overtaken by a concurrent spend of the same pool.
 */
export async function lockGuildPool(
  trx: Transaction<Database>,
  guildId: string,
  amount: number,
): Promise<(GuildPoolRow & { covers: boolean; lotsLapsed: boolean }) | undefined> {
  const { rows } = await sql<GuildPoolRow & { covers: boolean; lotsLapsed: boolean }>`
    select *, credits.covers(balance, reserved, next_lot_expiry, ${amount}::int8) as covers,
           coalesce(next_lot_expiry <= now(), false) as "lotsLapsed"
      from credits.guild_pools
     where organization_id = ${guildId}
       for update
  `.execute(trx);
  return rows[0];
}

export interface MemberLimitsRow {
  /** null = unlimited. */
  dailyLimit: number | null;
  monthlyLimit: number | null;
}

/** Sets a member's caps (null = unlimited), creating their limits row or replacing what it held. */
export async function upsertMemberLimits(
  db: Kysely<Database>,
  guildId: string,
  userId: string,
  limits: MemberLimitsRow,
): Promise<void> {
  await db
    .insertInto('credits.guild_spending_limits')
    .values({
      organization_id: guildId,
      user_id: userId,
      daily_limit: limits.dailyLimit,
      monthly_limit: limits.monthlyLimit,
    })
    .onConflict((oc) =>
      oc.columns(['organization_id', 'user_id']).doUpdateSet({
        daily_limit: limits.dailyLimit,
        monthly_limit: limits.monthlyLimit,
        updated_at: sql`now()`,
      }),
    )
    .execute();
}

export interface MemberSpending extends MemberLimitsRow {
  spentToday: number;
  spentThisMonth: number;
  /** The member's open pool holds, which count in the current day and month: not spent yet, but they may be. */
  heldToday: number;
  heldThisMonth: number;
}

/**
 * A member's caps (null = unlimited, also when none were set), what they spent from the pool and what their
 * open pool holds keep back, in the UTC day and UTC calendar month that contain `day` ('YYYY-MM-DD';
 * default: today in UTC by credits.clock(), the clock that dates the guild ledger and so the counters). One
 * round trip. The window rule is the SQL function credits.member_spending (functions/member_spending.sql),
 * which coalesced pool spends (credits.pool_use_batch) read too. Inside a spend or a hold it must run after
 * lockGuildPool, as its own statement, so that it reads every spend, hold, commit and release committed
 * before the lock was granted (each of them writes the pool row).
 */
export async function memberSpending(
  db: Kysely<Database>,
  guildId: string,
  userId: string,
  day?: string,
): Promise<MemberSpending> {
  const { rows } = await sql<{
    daily_limit: number | null;
    monthly_limit: number | null;
    spent_today: number;
    spent_this_month: number;
    held: number;
  }>`
    select * from credits.member_spending(
      ${guildId}, ${userId}, coalesce(${day ?? null}::date, (credits.clock() at time zone 'utc')::date))
  `.execute(db);
  const row = rows[0];
  return {
    dailyLimit: row?.daily_limit ?? null,
    monthlyLimit: row?.monthly_limit ?? null,
    spentToday: row?.spent_today ?? 0,
    spentThisMonth: row?.spent_this_month ?? 0,
    heldToday: row?.held ?? 0,
    heldThisMonth: row?.held ?? 0,
  };
}

/**
 * Debits a pool for a member's usage in one statement: the conditional UPDATE cannot overdraw or touch held
 * credits, the guild ledger row comes from its RETURNING, and the member's day counter and usage_stats are
 * upserted. Returns null when the spendable pool is too small (nothing written). A replayed idempotency key
 * fails the statement with a unique violation on GUILD_IDEMPOTENCY_INDEX, a key refused before on
 * REFUSAL_KEY_INDEX. It checks no member limit: call it after lockGuildPool and that check, in the same
 * transaction (as placePoolHold).
 */
export async function debitGuildPool(
  trx: Transaction<Database>,
  entry: GuildEntryInput,
): Promise<PostedGuildEntry | null> {
  const { rows } = await sql<PostedRow>`
    with debit as (
      update credits.guild_pools
         set balance = balance - ${entry.amount}::int8,
             total_spent = total_spent + ${entry.amount}::int8,
             version = version + 1,
             updated_at = now()
       where organization_id = ${entry.guildId}
         and credits.covers(balance, reserved, next_lot_expiry, ${entry.amount}::int8)
      returning organization_id, balance, reserved${notRefused(
        entry.idempotencyKey
          ? { space: 'guild', userId: entry.userId, organizationId: entry.guildId, key: entry.idempotencyKey }
          : undefined,
      )}
    ), burned as (
      select t.* from debit d
       cross join lateral credits.take_lots('guild', d.organization_id, ${entry.amount}::int8, false) t
    ), entry as (${guildLedgerRow('debit', entry, -1, 'burned')}),
    member_usage as (${memberCounter('entry', entry.guildId, entry.userId, entry.amount)})${
      entry.appId
        ? sql`, usage as (${usageCounter('entry', entry.userId, entry.appId, entry.amount)})`
        : sql``
    }
    select id, balance_after, available_after as available, created_at, lot_ids, lot_amounts from entry
  `.execute(trx);
  const row = rows[0];
  return row ? toPostedEntry(row) : null;
}

/**
 * Credits a pool (funding) in one statement, its credits in lots as `lots` says (funding mirrors the lot
 * portions the funder's debit took). Returns null when the pool does not exist. In the caller's transaction:
 * the funder's debit and the check of total_funded (totalFundedExceeds, under the row lock this credit takes)
 * commit or roll back with it.
 */
export async function creditGuildPool(
  trx: Transaction<Database>,
  entry: GuildEntryInput,
  lots: LotCredit,
): Promise<PostedGuildEntry | null> {
  const { rows } = await sql<PostedRow>`
    with credit as (
      update credits.guild_pools
         set balance = balance + ${entry.amount}::int8,
             total_funded = total_funded + ${entry.amount}::int8,
             next_lot_expiry = least(next_lot_expiry, ${expiryOfCredit(lots)}),
             version = version + 1,
             updated_at = now()
       where organization_id = ${entry.guildId}
      returning organization_id, balance, reserved
    ), filled as (
      select t.* from credit c
       cross join lateral ${lotsOfCredit('guild', sql<string>`c.organization_id`, entry.amount, lots)} t
    ), entry as (${guildLedgerRow('credit', entry, 1, 'filled')})
    select id, balance_after, available_after as available, created_at, lot_ids, lot_amounts from entry
  `.execute(trx);
  const row = rows[0];
  return row ? toPostedEntry(row) : null;
}

/**
 * Whether the pool's total_funded is past `limit`, compared in SQL (past 2^53 − 1 the pool could no longer be
 * read); it has no CHECK. Run it in the transaction that just credited the pool, under the row lock that
 * credit holds, so a refusal rolls back exactly this funding.
 */
export async function totalFundedExceeds(
  trx: Transaction<Database>,
  guildId: string,
  limit: number,
): Promise<boolean> {
  const { rows } = await sql<{ over: boolean }>`
    select total_funded > ${limit}::int8 as over from credits.guild_pools
     where organization_id = ${guildId}`.execute(trx);
  return rows[0]?.over ?? false;
}

/** A pool's guild ledger row by id (a committed pool hold's entry, for replaying the commit). */
export async function findGuildEntry(
  db: Kysely<Database>,
  guildId: string,
  transactionId: string,
): Promise<GuildLedgerRow | undefined> {
  return db
    .selectFrom('credits.guild_transactions')
    .selectAll()
    .where('organization_id', '=', guildId)
    .where('id', '=', transactionId)
    .executeTakeFirst();
}

/** The guild ledger row a member's idempotency key produced: the first execution a replay answers with. */
export async function findGuildEntryByKey(
  db: Kysely<Database>,
  guildId: string,
  userId: string,
  idempotencyKey: string,
): Promise<GuildLedgerRow | undefined> {
  return db
    .selectFrom('credits.guild_transactions')
    .selectAll()
    .where('organization_id', '=', guildId)
    .where('user_id', '=', userId)
    .where('idempotency_key', '=', idempotencyKey)
    .executeTakeFirst();
}

/** Filters of a pool's ledger listing: a ledger filter, and only one member's rows when `memberId` is given. */
export type PoolLedgerFilter = LedgerFilter<GuildLedgerType> & { memberId?: string | undefined };

/**
 * One page of a pool's ledger, newest first, optionally filtered. Undefined when the cursor names no row this
 * listing could show.
 */
export async function listGuildEntries(
  db: Kysely<Database>,
  guildId: string,
  page: PageRequest,
  filter: PoolLedgerFilter = {},
): Promise<Page<GuildLedgerRow> | undefined> {
  const conditions = ledgerFilterConditions(filter);
  return newestFirst(
    db
      .selectFrom('credits.guild_transactions')
      .selectAll()
      .where('organization_id', '=', guildId)
      .$if(filter.memberId !== undefined, (q) => q.where('user_id', '=', filter.memberId as string))
      .$if(conditions.length > 0, (q) => q.where((eb) => eb.and(conditions))),
    { table: 'credits.guild_transactions', idOf: (row) => row.id },
    page,
  );
}
