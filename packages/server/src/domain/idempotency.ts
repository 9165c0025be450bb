import { createHash } from 'node:crypto';
import {
  type Database,
  findLedgerEntryByKey,
  isUniqueViolation,
  LEDGER_IDEMPOTENCY_INDEX,
  type LedgerRow,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { DomainError, IdempotencyConflictError } from './errors.ts';
import { certainlyNotCommitted, certainOrUnknown } from './outcome.ts';

function canonicalJson(value: unknown): string {
  if (value === undefined) return 'null';
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, item]) => item !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([key, item]) => `${JSON.stringify(key)}:${canonicalJson(item)}`).join(',')}}`;
}

/** The fingerprint of a money-moving request: same operation and payload ⇔ same hash. */
export function requestHash(operation: string, payload: unknown): string {
  return createHash('sha256')
    .update(operation)
    .update('\n')
    .update(canonicalJson(payload))
    .digest('base64url');
}

export interface LedgerIdempotency {
  userId: string;
  key: string | undefined;
  hash: string;
}

/**
 * Runs a money-moving operation whose ledger row carries (user, key). The unique index decides atomically:
 * a replay fails the insert (rolling back the effect with it) and gets the stored first result; a replay
 * that fails a business rule first (the balance is gone by now) is answered the same way. A stored row with
 * another fingerprint is a CONFLICT.
 */
export async function withLedgerIdempotency<T>(
  db: Kysely<Database>,
  idempotency: LedgerIdempotency,
  run: () => Promise<T>,
  replay: (first: LedgerRow) => T,
): Promise<T> {
  try {
    return await run();
  } catch (error) {
    const { key } = idempotency;
    if (!key) throw certainOrUnknown(error);
    const duplicate = isUniqueViolation(error, LEDGER_IDEMPOTENCY_INDEX);
    // Only a certain failure (a refusal, or Postgres' own rollback) is looked up; an unknown outcome (a lost
    // connection, perhaps after the commit) is answered as unknown: the caller retries with the same key.
    if (!duplicate && !(error instanceof DomainError && certainlyNotCommitted(error)))
      throw certainOrUnknown(error);
    const first = await findLedgerEntryByKey(db, idempotency.userId, key);
    if (!first) {
      if (duplicate) throw new Error('idempotency key collided but no row was found', { cause: error });
      throw error;
    }
    if (first.request_hash !== idempotency.hash) throw new IdempotencyConflictError();
    return markReplayed(replay(first));
  }
}

const replayedResults = new WeakSet<object>();

/**
 * Marks an answer as a replay of an earlier call (nothing moved this time), so the metrics count the money
 * once. Code with its own idempotency path (not withLedgerIdempotency) marks its replays with this too.
 */
export function markReplayed<T>(result: T): T {
  if (typeof result === 'object' && result !== null) replayedResults.add(result);
  return result;
}

export function isReplayed(result: unknown): boolean {
  return typeof result === 'object' && result !== null && replayedResults.has(result);
}
