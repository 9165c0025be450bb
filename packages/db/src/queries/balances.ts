import type { Kysely } from 'kysely';
import type { Database } from '../database.ts';

export interface BalanceView {
  /** Spendable now: balance − reserved. */
  balance: number;
  reserved: number;
  totalEarned: number;
  totalSpent: number;
  updatedAt: Date | null;
}

export async function getBalance(db: Kysely<Database>, userId: string): Promise<BalanceView> {
  const row = await db
    .selectFrom('credits.balances')
    .select(['balance', 'reserved', 'total_earned', 'total_spent', 'updated_at'])
    .where('user_id', '=', userId)
    .executeTakeFirst();
  if (!row) return { balance: 0, reserved: 0, totalEarned: 0, totalSpent: 0, updatedAt: null };
  return {
    balance: row.balance - row.reserved,
    reserved: row.reserved,
    totalEarned: row.total_earned,
    totalSpent: row.total_spent,
    updatedAt: row.updated_at,
  };
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
