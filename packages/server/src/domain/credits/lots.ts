import {
  type Database,
  expireDueLots,
  findLedgerEntry,
  type LotAccountKind,
  type LotView,
  listLots,
  portionsOf,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { effects } from '../effects.ts';
import { NotFoundError } from '../errors.ts';
import { toTransactionView } from './mappers.ts';

// Reads of credit lots (issue 15): where an account's credits came from, in the order they will be spent,
// and which lots paid for (or received) one ledger entry. The burn order itself is credits.burn_lots
// (packages/db/src/functions/lots.sql); everything that moves credits names its lots there.

/** A lot as callers see it. */
export function toLotItem(lot: LotView) {
  return {
    id: lot.id,
    source: lot.source,
    category: lot.category,
    priority: lot.priority,
    amount: lot.amount,
    /** Left in the lot (held credits included); 0 once spent or expired. */
    remaining: lot.remaining,
    /** Part of `remaining` held by open reservations. */
    held: lot.pinned,
    /** Credits that left the lot by expiry. */
    expired: lot.expired,
    expiresAt: lot.expiresAt,
    createdAt: lot.createdAt,
  };
}

/** An account's lots in burn order; spent and expired ones only with `includeSpent`. */
export async function lotsOf(
  db: Kysely<Database>,
  kind: LotAccountKind,
  accountId: string,
  options: { includeSpent?: boolean | undefined } = {},
) {
  const lots = await listLots(db, kind, accountId, options);
  return { items: lots.map(toLotItem) };
}

/** One of a user's ledger entries with the lot portions it took or gave; someone else's is not found. */
export async function transactionWithLots(db: Kysely<Database>, userId: string, transactionId: string) {
  const row = await findLedgerEntry(db, userId, transactionId);
  if (!row) throw new NotFoundError('Transaction', 'TRANSACTION_NOT_FOUND');
  return { ...toTransactionView(row), lots: portionsOf(row) };
}

/**
 * One pass of the lot expiry sweep: the credits it expired (counted as debited by expiry) and the accounts it
 * went through (a pass over accounts whose lots were all spent before their expiry expires nothing, and the
 * accounts behind them are still due).
 */
export async function expireDueAccountLots(
  db: Kysely<Database>,
): Promise<{ expired: number; accounts: number }> {
  const { personal, pools, accounts } = await expireDueLots(db);
  effects.creditsExpired('personal', personal);
  effects.creditsExpired('pool', pools);
  return { expired: personal + pools, accounts };
}
