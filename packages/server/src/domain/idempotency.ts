import { createHash } from 'node:crypto';
import {
  type Database,
  findGuildEntryByKey,
  findLedgerEntryByKey,
  findReservationByKey,
  GUILD_IDEMPOTENCY_INDEX,
  type GuildLedgerRow,
  isUniqueViolation,
  LEDGER_IDEMPOTENCY_INDEX,
  type LedgerRow,
  RESERVATION_IDEMPOTENCY_INDEX,
  type ReservationRow,
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

/**
 * Where a money call's idempotency key lives: the unique index that decides atomically, inside the call's
 * own transaction, whether the key was executed before, and how to read that first execution.
 */
export interface KeyScope<Row extends { request_hash: string | null }> {
  index: string;
  findFirst(key: string): Promise<Row | undefined>;
}

/** Personal ledger keys, scoped to the user. */
export const ledgerKeys = (db: Kysely<Database>, userId: string): KeyScope<LedgerRow> => ({
  index: LEDGER_IDEMPOTENCY_INDEX,
  findFirst: (key) => findLedgerEntryByKey(db, userId, key),
});

/** Guild ledger keys (guild.fund, guild.use), scoped to (guild, member). */
export const guildKeys = (
  db: Kysely<Database>,
  guildId: string,
  userId: string,
): KeyScope<GuildLedgerRow> => ({
  index: GUILD_IDEMPOTENCY_INDEX,
  findFirst: (key) => findGuildEntryByKey(db, guildId, userId, key),
});

/** Hold keys (personal and pool holds share them), scoped to the user. */
export const reservationKeys = (db: Kysely<Database>, userId: string): KeyScope<ReservationRow> => ({
  index: RESERVATION_IDEMPOTENCY_INDEX,
  findFirst: (key) => findReservationByKey(db, userId, key),
});

/**
 * The one replay-or-conflict decision of every keyed money call (personal, pool and hold keys alike). `run`
 * does the work in one transaction whose row carries (scope, key); the unique index decides atomically: a
 * replay fails the insert (rolling the effect back with it) and gets the stored first result; a replay that
 * fails a business rule first (the balance is gone by now) is answered the same way. A stored execution
 * with another fingerprint is a CONFLICT. Only a certain failure is looked up; an unknown outcome (a lost
 * connection, perhaps after the commit) is answered as unknown, and the caller retries with the same key.
 */
export async function withIdempotency<T, Row extends { request_hash: string | null }>(
  scope: KeyScope<Row>,
  request: { key: string | undefined; hash: string },
  run: () => Promise<T>,
  replay: (first: Row) => T | Promise<T>,
): Promise<T> {
  try {
    return await run();
  } catch (error) {
    const { key } = request;
    if (!key) throw certainOrUnknown(error);
    const duplicate = isUniqueViolation(error, scope.index);
    if (!duplicate && !(error instanceof DomainError && certainlyNotCommitted(error))) {
      throw certainOrUnknown(error);
    }
    const first = await scope.findFirst(key);
    if (!first) {
      if (duplicate) throw new Error(`key collided on ${scope.index} but no row was found`, { cause: error });
      throw error;
    }
    if (first.request_hash !== request.hash) throw new IdempotencyConflictError();
    return markReplayed(await replay(first));
  }
}

const replayedResults = new WeakSet<object>();

/**
 * Marks an answer as a replay of an earlier call (nothing moved this time), so the metrics count the money
 * once. withIdempotency marks its replays; code with another replay path marks its own with this too.
 */
export function markReplayed<T>(result: T): T {
  if (typeof result === 'object' && result !== null) replayedResults.add(result);
  return result;
}

export function isReplayed(result: unknown): boolean {
  return typeof result === 'object' && result !== null && replayedResults.has(result);
}
