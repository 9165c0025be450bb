import { type Kysely, type RawBuilder, sql, type Transaction } from 'kysely';
import type { Database } from '../database.ts';

export interface BalanceView {
  /** Spendable now: balance − reserved. */
  balance: number;
  reserved: number;
  totalEarned: number;
  totalSpent: number;
  updatedAt: Date | null;
}

/**
 * A user's balance as they may spend it now. `reserved` counts only holds that are still open at the time of
 * the read: a hold whose time is up is already spendable (every spend returns such holds first), even before
 * the sweep or a check on access has closed it. Likewise credits of a lot whose time is up are gone before
 * their expiry is posted.
 */
export async function getBalance(db: Kysely<Database>, userId: string): Promise<BalanceView> {
  const { rows } = await sql<{
    balance: number;
    reserved: number;
    total_earned: number;
    total_spent: number;
    updated_at: Date;
  }>`
    select b.balance - ${lapsedLots('user', sql`b.user_id`, sql`b.next_lot_expiry`)}
             - ${lapsedHeldLots(sql`r.user_id = b.user_id and r.organization_id is null`)} as balance,
           b.reserved - ${lapsedHolds(sql`r.user_id = b.user_id and r.organization_id is null`)} as reserved,
           b.total_earned, b.total_spent, b.updated_at
      from credits.balances b
     where b.user_id = ${userId}`.execute(db);
  const row = rows[0];
  if (!row) return { balance: 0, reserved: 0, totalEarned: 0, totalSpent: 0, updatedAt: null };
  return {
    balance: row.balance - row.reserved,
    reserved: row.reserved,
    totalEarned: row.total_earned,
    totalSpent: row.total_spent,
    updatedAt: row.updated_at,
  };
}

/** Σ of the open holds matching `where` (on `credits.reservations r`) whose time is up: held no longer. */
export function lapsedHolds(where: RawBuilder<boolean>): RawBuilder<number> {
  return sql<number>`(select coalesce(sum(r.amount), 0)::int8 from credits.reservations r
                        where ${where} and r.status = 'open' and r.expires_at <= now())`;
}

/**
 * Σ of what the open holds matching `where` whose time is up pinned in lots whose time is up too: returned
 * with the hold, those credits expire at once (owned no longer). Costs one index probe when no hold lapsed.
 */
export function lapsedHeldLots(where: RawBuilder<boolean>): RawBuilder<number> {
  return sql<number>`(select coalesce(sum(h.amount), 0)::int8 from credits.reservations r
                        cross join lateral unnest(r.lot_ids, r.lot_amounts) as h(lot_id, amount)
                        join credits.lots l on l.id = h.lot_id
                       where ${where} and r.status = 'open' and r.expires_at <= now() and l.expires_at <= now())`;
}

/**
 * Σ of an account's credits in lots whose time is up but whose expiry is not posted yet (unpinned only):
 * owned no longer. Costs nothing unless the account's next_lot_expiry has passed.
 */
export function lapsedLots(
  kind: 'user' | 'guild',
  accountId: RawBuilder<string>,
  nextLotExpiry: RawBuilder<Date | null>,
): RawBuilder<number> {
  return sql<number>`(case when ${nextLotExpiry} <= now() then
      (select coalesce(sum(l.remaining - l.pinned), 0)::int8 from credits.lots l
        where l.account_kind = ${kind} and l.account_id = ${accountId} and not l.spent and l.remaining > l.pinned
          and l.expires_at <= now())
      else 0 end)`;
}

/** Creates the user's balance row if missing; safe when called concurrently. Returns true if it was created. */
export async function ensureBalance(db: Kysely<Database>, userId: string): Promise<boolean> {
  const result = await db
    .insertInto('credits.balances')
    .values({ user_id: userId })
    .onConflict((oc) => oc.column('user_id').doNothing())
    .executeTakeFirst();
  return Number(result.numInsertedOrUpdatedRows ?? 0) > 0;
}

/**
 * Locks the user's balance row (FOR UPDATE) and reads what it holds: what the caller then takes from it (a
 * clawback) is decided from numbers no concurrent spend can change. Undefined when the user has no row.
 */
export async function lockBalance(
  trx: Transaction<Database>,
  userId: string,
): Promise<{ balance: number; reserved: number } | undefined> {
  return trx
    .selectFrom('credits.balances')
    .select(['balance', 'reserved'])
    .where('user_id', '=', userId)
    .forUpdate()
    .executeTakeFirst();
}

/**
 * Whether the user's total_earned is past `limit`, compared in SQL (a total past 2^53 − 1 cannot be read into
 * a JS number). Run it in the transaction that just credited the balance: that credit holds the row lock, so
 * this reads exactly what will commit, and a refusal rolls the credit back.
 */
export async function totalEarnedExceeds(
  trx: Transaction<Database>,
  userId: string,
  limit: number,
): Promise<boolean> {
  const { rows } = await sql<{ over: boolean }>`
    select total_earned > ${limit}::int8 as over from credits.balances where user_id = ${userId}`.execute(
    trx,
  );
  return rows[0]?.over ?? false;
}
