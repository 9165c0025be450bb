import { balanceAtInstant, type Database } from '@mana-credits/db';
import type { Kysely } from 'kysely';

/**
 * What a user owned at an instant: the balance after the last ledger entry dated at or before `at` (holds
 * are not entries, so this is `balance`, not the spendable part); 0 and no entry before the first one.
 */
export async function balanceAt(db: Kysely<Database>, userId: string, at: Date) {
  const { balance, lastTransactionId } = await balanceAtInstant(db, userId, at);
  return { balance, at, lastTransactionId };
}
