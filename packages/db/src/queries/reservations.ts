import { type Kysely, type RawBuilder, sql, type Transaction } from 'kysely';
import type { Database, JsonObject, ReservationRow } from '../database.ts';
import { systemKeys } from '../system-keys.ts';
import { guildLedgerRow, memberCounter, personalLedgerRow, usageCounter } from './ledger-rows.ts';
import { type KeyRef, notRefused } from './refusals.ts';

export const RESERVATION_IDEMPOTENCY_INDEX = 'reservations_user_idempotency_key';

const json = (metadata: JsonObject | null | undefined) => (metadata ? JSON.stringify(metadata) : null);

export interface HoldInput {
  userId: string;
  amount: number;
  appId: string;
  description: string;
  metadata?: JsonObject | null | undefined;
  idempotencyKey: string;
  requestHash: string;
  ttlSeconds: number;
}

export interface PlacedHold {
  id: string;
  expiresAt: Date;
  /** Spendable right after the hold. */
  available: number;
}

/**
 * Holds credits in one statement: the conditional UPDATE raises `reserved` of the account — the user's
 * balance, or the guild pool when `guildId` is set — only while it covers the amount (credits.covers), the
 * lots it will consume are pinned in burn order (credits.take_lots, i.e. credits.burn_lots for one account), and the reservation row, naming them, is
 * inserted from its RETURNING. Returns null when the account does not cover it (nothing
 * written). A replayed key fails the insert on RESERVATION_IDEMPOTENCY_INDEX, which undoes the hold with it;
 * a key refused before fails it on REFUSAL_KEY_INDEX (asked under the account's row lock).
 * Expiry is computed by the database clock, the one clock every instance shares. A pool hold runs after
 * lockGuildPool and the member's limit check, in the same transaction (placePoolHold).
 */
export async function placeHold(
  db: Kysely<Database>,
  hold: HoldInput & { guildId?: string | undefined },
): Promise<PlacedHold | null> {
  const key: KeyRef = { space: 'hold', userId: hold.userId, organizationId: null, key: hold.idempotencyKey };
  const [table, column, id, kind] =
    hold.guildId === undefined
      ? (['credits.balances', 'user_id', hold.userId, 'user'] as const)
      : (['credits.guild_pools', 'organization_id', hold.guildId, 'guild'] as const);
  const { rows } = await sql<{ id: string; expires_at: Date; available_after: number }>`
    with hold as (
      update ${sql.table(table)}
         set reserved = reserved + ${hold.amount}::int8, version = version + 1, updated_at = now()
       where ${sql.ref(column)} = ${id} and credits.covers(balance, reserved, next_lot_expiry, ${hold.amount}::int8)
      returning ${sql.ref(column)} as account_id, balance - reserved as available${notRefused(key)}
    ), pinned as (
      select h.available, t.* from hold h
       cross join lateral credits.take_lots(${kind}, h.account_id, ${hold.amount}::int8, true) t
    )
    insert into credits.reservations
      (user_id, organization_id, amount, app_id, description, metadata, idempotency_key, request_hash,
       available_after, expires_at, lot_ids, lot_amounts)
    select ${hold.userId}, ${hold.guildId ?? null}, ${hold.amount}::int8, ${hold.appId}, ${hold.description},
           ${json(hold.metadata)}::jsonb, ${hold.idempotencyKey}, ${hold.requestHash}, available,
           now() + ${hold.ttlSeconds}::int * interval '1 second', lot_ids, lot_amounts
      from pinned
    returning id, expires_at, available_after
  `.execute(db);
  const row = rows[0];
  return row ? { id: row.id, expiresAt: row.expires_at, available: row.available_after } : null;
}

/** A member's hold on a guild pool: placeHold, inside the transaction that locked the pool. */
export const placePoolHold = (trx: Transaction<Database>, hold: HoldInput & { guildId: string }) =>
  placeHold(trx, hold);

/** The hold a user's idempotency key placed: the first execution a replay answers with. */
export async function findReservationByKey(
  db: Kysely<Database>,
  userId: string,
  idempotencyKey: string,
): Promise<ReservationRow | undefined> {
  return db
    .selectFrom('credits.reservations')
    .selectAll()
    .where('user_id', '=', userId)
    .where('idempotency_key', '=', idempotencyKey)
    .executeTakeFirst();
}

export interface LockedReservation extends ReservationRow {
  /** True when the hold is still open but its time is up (by the database clock). */
  lapsed: boolean;
}

/**
 * Locks one reservation row for the rest of the transaction (FOR UPDATE): commits and releases serialise.
 * Only the reservation is read here: after waiting for the lock, Postgres rechecks the locked row alone, so
 * anything joined to it could still be what it was before the wait.
 */
export async function lockReservation(
  trx: Transaction<Database>,
  reservationId: string,
): Promise<LockedReservation | undefined> {
  const { rows } = await sql<LockedReservation>`
    select r.*, (r.status = 'open' and r.expires_at <= now()) as lapsed
      from credits.reservations r
     where r.id = ${reservationId}::uuid
       for update
  `.execute(trx);
  return rows[0];
}

/** The usage row a commit posts: keyed by the reservation (system key), so it can never post twice. */
function usageOf(reservation: ReservationRow, commit: CommitInput) {
  return {
    amount: commit.amount,
    appId: reservation.app_id,
    description: commit.description,
    metadata: commit.metadata,
    idempotencyKey: systemKeys.reservationCommit(reservation.id),
    requestHash: commit.commitHash,
  };
}

export interface CommitInput {
  amount: number;
  description: string;
  metadata?: JsonObject | null | undefined;
  commitHash: string;
}

/**
 * Settles a locked, open personal hold in one statement: the balance drops by the committed amount and the
 * whole hold leaves `reserved`, one usage ledger row is posted (keyed by the reservation, so it can never
 * post twice), the day's usage grows and the reservation is closed as committed.
 */
export async function commitHold(
  trx: Transaction<Database>,
  reservation: ReservationRow,
  commit: CommitInput,
): Promise<SettledHold> {
  return settleCommit(trx, reservation, commit, {
    settle: sql`
      update credits.balances
         set balance = balance - ${commit.amount}::int8,
             reserved = reserved - ${reservation.amount}::int8,
             total_spent = total_spent + ${commit.amount}::int8,
             next_lot_expiry = least(next_lot_expiry, credits.lots_expiry(${reservation.lot_ids}::uuid[])),
             version = version + 1,
             updated_at = now()
       where user_id = ${reservation.user_id}
      returning balance, reserved`,
    entry: personalLedgerRow(
      'settle',
      { ...usageOf(reservation, commit), userId: reservation.user_id, type: 'usage' },
      -1,
      'consumed',
    ),
    counters: [usageCounter('entry', reservation.user_id, reservation.app_id, commit.amount)],
  });
}

export interface SettledHold {
  transactionId: string;
  available: number;
  /** A lot the hold had pinned has lapsed: what the commit or release unpinned of it must be expired now. */
  lotsLapsed: boolean;
}

/** Whether any of a hold's pinned lots has lapsed (then expireLots follows the settlement). */
const pinnedLotsLapsed = (reservation: ReservationRow) => sql<boolean>`
  coalesce(credits.lots_expiry(${reservation.lot_ids}::uuid[]) <= now(), false)`;

/**
 * The one statement of a commit: `settle` lowers the account (balance by the committed amount, reserved by
 * the whole hold), the hold's pinned lots give the committed credits in the order they were pinned and let
 * go of the rest (credits.settle_pins), `entry` posts the usage row naming those portions, `counters` grow
 * from the entry, and the reservation is closed as committed — only if it is still open, else nothing counts
 * (the caller holds its row lock).
 */
async function settleCommit(
  trx: Transaction<Database>,
  reservation: ReservationRow,
  commit: CommitInput,
  parts: { settle: RawBuilder<unknown>; entry: RawBuilder<unknown>; counters: RawBuilder<unknown>[] },
): Promise<SettledHold> {
  const counters = parts.counters.map(
    (counter, index) => sql`, counter_${sql.raw(String(index))} as (${counter})`,
  );
  const { rows } = await sql<{ id: string; available_after: number; closed: number; lots_lapsed: boolean }>`
    with settle as (${parts.settle}),
    consumed as (
      select t.* from (select count(*) from settle) s
       cross join lateral credits.settle_pins(${reservation.lot_ids}::uuid[], ${reservation.lot_amounts}::int8[],
                                              ${commit.amount}::int8) t
    ), entry as (${parts.entry})${sql.join(counters, sql``)},
    closed as (
      update credits.reservations
         set status = 'committed', committed_amount = ${commit.amount}::int8,
             released_amount = amount - ${commit.amount}::int8, transaction_id = (select id from entry),
             commit_hash = ${commit.commitHash}, closed_at = now(), updated_at = now()
       where id = ${reservation.id}::uuid and status = 'open'
      returning id
    )
    select entry.id, entry.available_after, (select count(*) from closed)::int4 as closed,
           ${pinnedLotsLapsed(reservation)} as lots_lapsed
      from entry
  `.execute(trx);
  const row = rows[0];
  if (row?.closed !== 1) throw new Error(`reservation ${reservation.id} could not be committed`);
  return { transactionId: row.id, available: row.available_after, lotsLapsed: row.lots_lapsed };
}

/**
 * Returns a locked, open hold to its account (the personal balance, or the pool for a pool hold) in one
 * statement, unpinning its lots, and closes it as `released` (or `expired`, when its time ran out first).
 * Returns the spendable balance of that account afterwards, and whether a lot it unpinned has lapsed (then
 * expireLots must follow in the same transaction). The account row is written before its lots, as every
 * writer of lots does (lots.sql): a release that unpinned the lots first deadlocked with a debit holding the
 * account row and about to burn the same lot.
 */
export async function releaseHold(
  trx: Transaction<Database>,
  reservation: ReservationRow,
  status: 'released' | 'expired',
): Promise<{ available: number; lotsLapsed: boolean }> {
  // the earliest expiry among the hold's lots, read once (the `expiry` CTE below)
  const lotExpiry = sql`(select e.at from expiry e)`;
  // The personal balance, or the pool for a pool hold: the same update of either row.
  const [table, keyColumn, key] =
    reservation.organization_id === null
      ? ['credits.balances', 'user_id', reservation.user_id]
      : ['credits.guild_pools', 'organization_id', reservation.organization_id];
  const account = sql`
    update ${sql.table(table)}
       set reserved = reserved - ${reservation.amount}::int8, next_lot_expiry = least(next_lot_expiry, ${lotExpiry}),
           version = version + 1, updated_at = now()
     where ${sql.ref(keyColumn)} = ${key}
    returning balance - reserved as available`;
  const { rows } = await sql<{ available: number; closed: number; unpinned: number; lots_lapsed: boolean }>`
    with expiry as (select credits.lots_expiry(${reservation.lot_ids}::uuid[]) as at),
    account as (${account}),
    unpinned as (
      select t.* from (select count(*) from account) a
       cross join lateral credits.settle_pins(${reservation.lot_ids}::uuid[], ${reservation.lot_amounts}::int8[], 0) t
    ), closed as (
      update credits.reservations
         set status = ${status}, released_amount = amount, closed_at = now(), updated_at = now()
       where id = ${reservation.id}::uuid and status = 'open'
      returning id
    )
    -- counting unpinned makes it run (a plain CTE nobody reads is skipped), after account, which it reads
    select a.available, (select count(*) from closed)::int4 as closed, (select count(*) from unpinned)::int4 as unpinned,
           coalesce(${lotExpiry} <= now(), false) as lots_lapsed
      from account a`.execute(trx);
  const row = rows[0];
  // Nothing is kept of a statement that throws here: the caller's transaction rolls back.
  if (row?.closed !== 1) throw new Error(`reservation ${reservation.id} could not be released`);
  return { available: row.available, lotsLapsed: row.lots_lapsed };
}

/**
 * Returns expired holds to their accounts (see credits.release_expired_holds): one user's personal holds
 * when `userId` is given, anyone's (pool holds included) otherwise; at most `limit` per call. Returns how many were returned.
 */
export async function releaseExpiredHolds(
  db: Kysely<Database>,
  userId: string | null,
  limit = 1000,
): Promise<number> {
  const { rows } = await sql<{ released: number }>`
    select credits.release_expired_holds(${userId}, ${limit}::int) as released
  `.execute(db);
  return rows[0]?.released ?? 0;
}

/**
 * Settles a locked, open pool hold in one statement: the pool balance drops by the committed amount and the
 * whole hold leaves `reserved`, one usage row is posted in the guild ledger (keyed by the reservation, so it
 * can never post twice), the member's limit counter grows for the UTC day of that row, usage_stats grows,
 * and the reservation is closed as committed.
 */
export async function commitPoolHold(
  trx: Transaction<Database>,
  reservation: ReservationRow & { organization_id: string },
  commit: CommitInput,
): Promise<SettledHold> {
  const guildId = reservation.organization_id;
  return settleCommit(trx, reservation, commit, {
    settle: sql`
      update credits.guild_pools
         set balance = balance - ${commit.amount}::int8,
             reserved = reserved - ${reservation.amount}::int8,
             total_spent = total_spent + ${commit.amount}::int8,
             next_lot_expiry = least(next_lot_expiry, credits.lots_expiry(${reservation.lot_ids}::uuid[])),
             version = version + 1,
             updated_at = now()
       where organization_id = ${guildId}
      returning balance, reserved`,
    entry: guildLedgerRow(
      'settle',
      { ...usageOf(reservation, commit), guildId, userId: reservation.user_id, type: 'usage' },
      -1,
      'consumed',
    ),
    counters: [
      memberCounter('entry', guildId, reservation.user_id, commit.amount),
      usageCounter('entry', reservation.user_id, reservation.app_id, commit.amount),
    ],
  });
}

/**
 * Returns a pool's expired holds (see credits.release_expired_pool_holds); call it while holding the pool
 * row. Returns how many were returned.
 */
export async function releaseExpiredPoolHolds(
  trx: Transaction<Database>,
  guildId: string,
  limit = 1000,
): Promise<number> {
  const { rows } = await sql<{ released: number }>`
    select credits.release_expired_pool_holds(${guildId}, ${limit}::int) as released
  `.execute(trx);
  return rows[0]?.released ?? 0;
}
