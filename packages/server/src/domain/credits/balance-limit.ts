import {
  creditBalance,
  type Database,
  isCheckViolation,
  type KeyRef,
  type LedgerEntryInput,
  type LotCredit,
  type PostedEntry,
  totalEarnedExceeds,
} from '@mana-credits/db';
import type { Transaction } from 'kysely';
import { PreconditionFailedError } from '../errors.ts';
import { expireAccountLots } from '../spending.ts';

/**
 * The most credits any account or running total may hold: 2^53 − 1, the largest integer a JS number (and so
 * every API answer) carries exactly. Balances have a CHECK at this bound; the running totals (total_earned,
 * a pool's total_funded) have none, and a value past it would make the account unreadable (int8.ts refuses
 * it), so the credits that raise them are checked here.
 */
export const MAX_CREDITS = Number.MAX_SAFE_INTEGER;

/** The CHECK that keeps a personal balance ≤ MAX_CREDITS (initial migration). */
export const BALANCE_SAFE_INTEGER_CHECK = 'balances_balance_safe_integer';

export class BalanceLimitError extends PreconditionFailedError {
  constructor(requested: number) {
    super(
      `This account cannot hold more than ${MAX_CREDITS} credits (balance and total earned); ${requested} more would pass that`,
      'BALANCE_LIMIT_EXCEEDED',
      { limit: MAX_CREDITS, requested },
    );
  }
}

/**
 * Credits earned credits (a grant, a gift portion) so that neither the balance nor total_earned passes
 * MAX_CREDITS. Must run inside the caller's transaction: the credit statement locks the balance row, so the
 * check after it sees exactly what will be committed, and a refusal rolls the credit back. Every other credit
 * (refunds, returned escrow) lowers total_spent instead, and since balance = total_earned − total_spent it
 * cannot pass the bound when total_earned does not.
 */
export async function creditEarned(
  trx: Transaction<Database>,
  entry: LedgerEntryInput,
  lots: LotCredit,
  /** A caller's key (not a system key): refused before → a key violation, answered by withIdempotency. */
  refusedUnder?: KeyRef,
): Promise<PostedEntry> {
  let posted: PostedEntry;
  // Lapsed lots are expired first (check on access), so the balance this credit answers and writes on its
  // ledger row never counts credits whose time is up.
  await expireAccountLots(trx, 'user', entry.userId);
  try {
    posted = await creditBalance(trx, entry, lots, 'earned', refusedUnder);
  } catch (error) {
    if (isCheckViolation(error, BALANCE_SAFE_INTEGER_CHECK)) throw new BalanceLimitError(entry.amount);
    throw error;
  }
  if (await totalEarnedExceeds(trx, entry.userId, MAX_CREDITS)) throw new BalanceLimitError(entry.amount);
  return posted;
}
