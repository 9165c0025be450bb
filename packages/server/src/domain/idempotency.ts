import { createHash } from 'node:crypto';
import {
  type Database,
  findGuildEntryByKey,
  findLedgerEntryByKey,
  findRefusal,
  findReservationByKey,
  GUILD_IDEMPOTENCY_INDEX,
  type GuildLedgerRow,
  isUniqueViolation,
  type KeyRef,
  LEDGER_IDEMPOTENCY_INDEX,
  type LedgerRow,
  REFUSAL_KEY_INDEX,
  RESERVATION_IDEMPOTENCY_INDEX,
  type RefusalRow,
  type ReservationRow,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { DomainError, IdempotencyConflictError } from './errors.ts';
import { certainlyNotCommitted, certainOrUnknown } from './outcome.ts';
import { isRecordedRefusal, type KeyClaim, refusalOf } from './refusals.ts';

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
 * own transaction, whether the key was executed before, and how to read that first execution; and the place
 * of the key (space, user, guild) under which a refusal of the call is recorded (see refusals.ts).
 */
export interface KeyScope<Row extends { request_hash: string | null }> {
  index: string;
  place: Omit<KeyRef, 'key'>;
  findFirst(key: string): Promise<Row | undefined>;
  findRefusal(key: string): Promise<RefusalRow | undefined>;
}

function keyScope<Row extends { request_hash: string | null }>(
  db: Kysely<Database>,
  index: string,
  place: Omit<KeyRef, 'key'>,
  findFirst: (key: string) => Promise<Row | undefined>,
): KeyScope<Row> {
  return { index, place, findFirst, findRefusal: (key) => findRefusal(db, { ...place, key }) };
}

/** Personal ledger keys, scoped to the user. */
export const ledgerKeys = (db: Kysely<Database>, userId: string): KeyScope<LedgerRow> =>
  keyScope(db, LEDGER_IDEMPOTENCY_INDEX, { space: 'personal', userId, organizationId: null }, (key) =>
    findLedgerEntryByKey(db, userId, key),
  );

/** Guild ledger keys (guild.fund, guild.use), scoped to (guild, member). */
export const guildKeys = (db: Kysely<Database>, guildId: string, userId: string): KeyScope<GuildLedgerRow> =>
  keyScope(db, GUILD_IDEMPOTENCY_INDEX, { space: 'guild', userId, organizationId: guildId }, (key) =>
    findGuildEntryByKey(db, guildId, userId, key),
  );

/** Hold keys (personal and pool holds share them), scoped to the user. */
export const reservationKeys = (db: Kysely<Database>, userId: string): KeyScope<ReservationRow> =>
  keyScope(db, RESERVATION_IDEMPOTENCY_INDEX, { space: 'hold', userId, organizationId: null }, (key) =>
    findReservationByKey(db, userId, key),
  );

/**
 * The one replay-or-conflict decision of every keyed money call (personal, pool and hold keys alike); the
 * batch path makes the same in credits.use_batch. `run` does the work in one transaction whose row carries
 * (scope, key); the unique index decides atomically: a replay fails the insert (rolling the effect back with
 * it) and gets the stored first result; a replay that fails a business rule first (the balance is gone by
 * now) is answered the same way. A keyed refusal takes its key too: `run` gets the call's KeyClaim, with
 * which a refusal for lack of credits or a member limit is recorded under its account's row lock
 * (refusals.ts) and every keyed debit or hold fails under that lock when its key was refused (REFUSAL_KEY_INDEX)
 * — so the key's first result is a posted row or, failing that, a recorded refusal, which a replay answers
 * again (a refusal stays a refusal after a top-up: a new attempt takes a new key). A first result with another
 * fingerprint is a CONFLICT. Only a certain failure is looked up; an unknown outcome (a lost connection,
 * perhaps after the commit) is answered as unknown, and the caller retries with the same key.
 */
export async function withIdempotency<T, Row extends { request_hash: string | null }>(
  scope: KeyScope<Row>,
  request: { key: string | undefined; hash: string },
  run: (claim: KeyClaim | undefined) => Promise<T>,
  replay: (first: Row) => T | Promise<T>,
): Promise<T> {
  const { key } = request;
  try {
    return await run(key ? { ...scope.place, key, hash: request.hash } : undefined);
  } catch (error) {
    if (!key) throw certainOrUnknown(error);
    // Refused now, and recorded under the key by this very call: the key's first result.
    if (isRecordedRefusal(error)) throw error;
    const duplicate = isUniqueViolation(error, scope.index) || isUniqueViolation(error, REFUSAL_KEY_INDEX);
    if (!duplicate && !(error instanceof DomainError && certainlyNotCommitted(error))) {
      throw certainOrUnknown(error);
    }
    const first = await scope.findFirst(key);
    if (first) {
      if (first.request_hash !== request.hash) throw new IdempotencyConflictError();
      return markReplayed(await replay(first));
    }
    const refused = await scope.findRefusal(key);
    if (refused) {
      if (refused.request_hash !== request.hash) throw new IdempotencyConflictError();
      throw markReplayed(refusalOf(refused));
    }
    if (duplicate) throw new Error(`key collided on ${scope.index} but no row was found`, { cause: error });
    throw error;
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
