import { type Kysely, type RawBuilder, sql, type Transaction } from 'kysely';
import type { Database, LedgerRow } from '../database.ts';

/**
 * Reads of the past (issue 18): the balance at an instant, usage per time bucket, and a ledger statement in
 * keyset pages. Read-only; every range is half-open, [from, to), and every bucket a UTC calendar unit.
 */

type Reader = Kysely<Database> | Transaction<Database>;

export type UsageGranularity = 'hour' | 'day' | 'month';

export interface BalanceAtRow {
  balance: number;
  /** The entry the balance is the result of; null before the user's first entry. */
  lastTransactionId: string | null;
}

/**
 * A user's balance right after the last ledger entry dated at or before `at` (`inclusive`), or strictly
 * before it: 0 and no entry before the first one. Three index probes of transactions_user_history. Entries
 * of one user dated by the same microsecond (possible inside one set-based statement) are taken together:
 * the balance is the one before that instant plus all of them, whatever their order; the id named is the
 * one that ends at that balance.
 */
export async function balanceAtInstant(
  db: Reader,
  userId: string,
  at: Date,
  inclusive = true,
): Promise<BalanceAtRow> {
  // Instants reach us in milliseconds (what the API shows and parses), the ledger dates entries in
  // microseconds: "at or before" an instant takes its whole millisecond, so an entry's own createdAt includes it.
  const bound = inclusive
    ? sql`created_at < ${at}::timestamptz + interval '1 millisecond'`
    : sql`created_at < ${at}`;
  // `last` is read by scalar subqueries so that each probe bounds the index range; materialized CTEs are
  // read once.
  const { rows } = await sql<{ balance: number | null; last_id: string | null }>`
    with last as (
      select created_at from credits.transactions
       where user_id = ${userId} and ${bound}
       order by created_at desc, id desc limit 1
    ), tied as materialized (
      select id, amount, balance_after from credits.transactions
       where user_id = ${userId} and created_at = (select created_at from last)
    ), answer as materialized (
      select (coalesce((select balance_after from credits.transactions
                         where user_id = ${userId} and created_at < (select created_at from last)
                         order by created_at desc, id desc limit 1), 0)
              + (select sum(amount) from tied))::int8 as balance
    )
    select answer.balance,
           (select tied.id from tied where tied.balance_after = answer.balance order by tied.id desc limit 1)
             as last_id
      from answer`.execute(db);
  const row = rows[0];
  return row?.balance == null
    ? { balance: 0, lastTransactionId: null }
    : { balance: row.balance, lastTransactionId: row.last_id };
}

export interface UsageQuery {
  from: Date;
  to: Date;
  granularity: UsageGranularity;
  /** Only the `limit` groups that spent the most in the whole range (ties by group key); all when unset. */
  limit?: number | undefined;
}

export interface UsageBucketRow {
  /** The start of the UTC hour, day or month. */
  start: Date;
  /** The group's key (app id or user id); null when ungrouped, or for usage without an app. */
  group: string | null;
  /** Credits spent: −Σ amount of the usage entries. */
  credits: number;
  /** How many usage entries. */
  entries: number;
}

/**
 * Usage per bucket (and group) from one ledger table: its `usage` rows in [from, to) matching `where`,
 * summed per UTC bucket. Gross: a refund is an entry of its own and does not lower the usage it refunds,
 * so a bucket never changes after it has passed (the figure usage_stats and the debit metric count).
 */
async function usageBuckets(
  db: Reader,
  table: 'credits.transactions' | 'credits.guild_transactions',
  where: RawBuilder<unknown>,
  group: 'app_id' | 'user_id' | undefined,
  query: UsageQuery,
): Promise<UsageBucketRow[]> {
  const key = group ? sql.ref(group) : sql`null::text`;
  const rowsOfRange = sql`
    from ${sql.table(table)}
   where type = 'usage' and created_at >= ${query.from} and created_at < ${query.to} and ${where}`;
  const bucket = sql`date_trunc(${query.granularity}::text, created_at at time zone 'UTC') at time zone 'UTC'`;
  if (group === 'user_id' && query.limit !== undefined) {
    // Users are many: the top ones first (one aggregation per user), then only their buckets, by index
    // probes per user, rather than bucketing every (bucket, user) pair of the range and ranking them all.
    const { rows } = await sql<UsageBucketRow>`
      with top as (
        select user_id as grp ${rowsOfRange}
         group by 1 order by sum(amount), user_id collate "C" limit ${query.limit}
      )
      select ${bucket} as start, user_id as "group", (-sum(amount))::int8 as credits, count(*)::int8 as entries
        ${rowsOfRange} and user_id in (select grp from top)
       group by 1, 2
       order by 1, user_id collate "C"`.execute(db);
    return rows;
  }
  // Apps are few: one pass over the range, then the top groups kept by their totals over the buckets.
  const kept =
    group && query.limit !== undefined
      ? sql`(select start, grp, credits, entries,
                    dense_rank() over (order by total desc, grp collate "C") as place
               from (select buckets.*, sum(credits) over (partition by grp) as total from buckets) totals) ranked
             where place <= ${query.limit}`
      : sql`buckets`;
  const { rows } = await sql<UsageBucketRow>`
    with buckets as (
      select ${bucket} as start, ${key} as grp, (-sum(amount))::int8 as credits, count(*)::int8 as entries
        ${rowsOfRange}
       group by 1, 2
    )
    select start, grp as "group", credits, entries from ${kept}
     order by start, grp collate "C"`.execute(db);
  return rows;
}

/** A user's own usage (credits.usage): transactions_user_history narrows it to the user and the range. */
export function userUsage(db: Reader, userId: string, query: UsageQuery & { groupBy?: 'app' | undefined }) {
  return usageBuckets(
    db,
    'credits.transactions',
    sql`user_id = ${userId}`,
    query.groupBy === 'app' ? 'app_id' : undefined,
    query,
  );
}

/**
 * Every user's usage (internal.usage), optionally of one app; by app or by user (top spenders). Selected by
 * time alone: transactions_created_at_brin narrows the scan to the pages of the range.
 */
export function allUsage(
  db: Reader,
  query: UsageQuery & { groupBy?: 'app' | 'user' | undefined; appId?: string | undefined },
) {
  const group = query.groupBy === 'app' ? 'app_id' : query.groupBy === 'user' ? 'user_id' : undefined;
  const where = query.appId === undefined ? sql`true` : sql`app_id = ${query.appId}`;
  return usageBuckets(db, 'credits.transactions', where, group, query);
}

/** A guild pool's usage (guild.usage): guild_transactions_history narrows it to the guild and the range. */
export function guildUsage(
  db: Reader,
  guildId: string,
  query: UsageQuery & { groupBy?: 'member' | 'app' | undefined },
) {
  const group = query.groupBy === 'app' ? 'app_id' : query.groupBy === 'member' ? 'user_id' : undefined;
  return usageBuckets(db, 'credits.guild_transactions', sql`organization_id = ${guildId}`, group, query);
}

export interface StatementPageRequest {
  userId: string;
  from: Date;
  to: Date;
  limit: number;
  /** The id of the last entry of the previous page. */
  cursor?: string | undefined;
}

export interface StatementPage {
  /** The balance before `from` (after the last entry dated before it). */
  openingBalance: number;
  /** The balance before `to`: the opening balance plus every entry of the range. */
  closingBalance: number;
  /** Entries of [from, to), oldest first (created_at, id), after the cursor. */
  items: LedgerRow[];
  nextCursor: string | null;
}

/**
 * One page of a user's statement, oldest first, read in one repeatable-read snapshot so that the page and
 * both balances agree. The cursor must be an entry of this user inside the range, else undefined (the caller
 * says INVALID_CURSOR); the keyset is compared inside Postgres, so microsecond timestamps stay exact.
 */
export async function statementPage(
  db: Kysely<Database>,
  request: StatementPageRequest,
): Promise<StatementPage | undefined> {
  const { userId, from, to, limit, cursor } = request;
  return db
    .transaction()
    .setIsolationLevel('repeatable read')
    .setAccessMode('read only')
    .execute(async (trx) => {
      let listing = trx
        .selectFrom('credits.transactions')
        .selectAll()
        .where('user_id', '=', userId)
        .where('created_at', '>=', from)
        .where('created_at', '<', to);
      if (cursor) {
        const anchor = await listing.clearSelect().select('id').where('id', '=', cursor).executeTakeFirst();
        if (!anchor) return undefined;
        listing = listing.where(
          sql<boolean>`(created_at, id) > (select c.created_at, c.id from credits.transactions c where c.id = ${cursor}::uuid)`,
        );
      }
      const rows = await listing
        .orderBy('created_at', 'asc')
        .orderBy('id', 'asc')
        .limit(limit + 1)
        .execute();
      const opening = await balanceAtInstant(trx, userId, from, false);
      const closing = await balanceAtInstant(trx, userId, to, false);
      const items = rows.slice(0, limit);
      const last = items[items.length - 1];
      return {
        openingBalance: opening.balance,
        closingBalance: closing.balance,
        items,
        nextCursor: rows.length > limit && last ? last.id : null,
      };
    });
}
