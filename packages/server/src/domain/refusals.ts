import {
  type Database,
  type JsonObject,
  type KeyRef,
  type RefusalRow,
  recordRefusal as recordRefusalRow,
} from '@mana-credits/db';
import type { Kysely, Transaction } from 'kysely';
import { inTransaction } from './effects.ts';
import { type DomainError, InsufficientCreditsError } from './errors.ts';
import { type LimitReason, limitExceeded } from './guild/limits.ts';

// A keyed refusal takes its key (functions/refusals.sql has the rule): a refusal for lack of credits (personal
// or pool) or for a member limit is recorded under the caller's key, in the transaction that decided it and
// under the row lock of the account that refused, so a later call with the key — a retry, or the original
// attempt arriving late from a paused instance — is answered with it and never charges. withIdempotency
// (idempotency.ts) answers replays of it; spending.ts records it. A key space that spans accounts (a user's hold
// keys: personal and pool holds; a member's guild keys: guild.fund and guild.use) needs one lock all its uses
// take: keyed pool holds and keyed fundings take the user's balance row (and funding the pool's) first
// (spending.ts, lockPersonalBalance).

/** A keyed call's key where it lives, and the fingerprint of its request: what withIdempotency hands its work. */
export interface KeyClaim extends KeyRef {
  hash: string;
}

const recorded = new WeakSet<object>();
const recordingTransactions = new WeakSet<object>();

/**
 * Records `refusal` under the call's key (nothing for a keyless call) and returns it, to be thrown. Call it
 * in the spendingTransaction that decided the refusal, holding the row lock of the account that refused.
 * When the key was taken already (a row was posted under it, or it was refused before) nothing is recorded
 * and withIdempotency answers the key's first result instead.
 */
export async function refusedUnderKey(
  trx: Kysely<Database>,
  claim: KeyClaim | undefined,
  refusal: DomainError,
): Promise<DomainError> {
  if (!claim) return refusal;
  // A refusal recorded in a transaction that then rolls back would leave the key free for a late original.
  if (!recordingTransactions.has(trx))
    throw new Error('a keyed refusal must be decided in a spendingTransaction');
  const taken = await recordRefusalRow(trx, claim, {
    requestHash: claim.hash,
    reason: refusal.reason,
    details: (refusal.details ?? {}) as JsonObject,
  });
  if (taken) recorded.add(refusal);
  return refusal;
}

/** A refusal this call recorded under its key: the key's first result, answered as it is. */
export function isRecordedRefusal(error: unknown): error is DomainError {
  return typeof error === 'object' && error !== null && recorded.has(error);
}

/**
 * Runs a spending transaction (inTransaction) whose keyed refusal must outlive it: a refusal recorded in it
 * (refusedUnderKey) is committed, with what the transaction did before it (the lapsed holds and lots it
 * returned on the way), and then thrown. Any other failure rolls back as always. The spend must be the first
 * thing the transaction writes.
 */
export async function spendingTransaction<T>(
  db: Kysely<Database>,
  work: (trx: Transaction<Database>) => Promise<T>,
): Promise<T> {
  const outcome = await inTransaction(db, async (trx) => {
    recordingTransactions.add(trx);
    try {
      return { done: await work(trx) };
    } catch (error) {
      if (isRecordedRefusal(error)) return { refused: error };
      throw error;
    }
  });
  if ('refused' in outcome) throw outcome.refused;
  return outcome.done;
}

const number = (value: unknown) => (typeof value === 'number' ? value : Number(value));

/** The refusal a recorded row stands for, as it was answered the first time. */
export function refusalOf(row: Pick<RefusalRow, 'reason' | 'details'>): DomainError {
  const details = row.details;
  if (row.reason === 'DAILY_LIMIT_EXCEEDED' || row.reason === 'MONTHLY_LIMIT_EXCEEDED') {
    return limitExceeded(row.reason satisfies LimitReason, {
      limit: number(details.limit),
      spent: number(details.spent),
      requested: number(details.requested),
    });
  }
  return new InsufficientCreditsError(number(details.required), number(details.available), row.reason);
}
