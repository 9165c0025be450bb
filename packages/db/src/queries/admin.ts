import { type Kysely, sql } from 'kysely';
import type {
  AdminActionRow,
  Database,
  GiftRow,
  JsonObject,
  LedgerRow,
  ReservationRow,
} from '../database.ts';
import { LEDGERS } from './ledger-rows.ts';
import { newestFirst, type Page, type PageRequest } from './pagination.ts';

// The operator console's reads (issue 18) and its audit trail. Nothing here moves money: the console's
// actions call the same domain functions as the API.

/** `like` pattern for ids starting with `prefix` (its %, _ and \ taken literally). */
const startsWith = (prefix: string) => `${prefix.replace(/[\\%_]/g, (char) => `\\${char}`)}%`;

export interface AccountMatch {
  kind: 'user' | 'guild';
  id: string;
  /** Σ ledger (holds included). */
  balance: number;
}

/**
 * Users (balance rows) and guild pools whose id is `query` or starts with it: the exact match first, then by
 * id, at most `limit` of each. A prefix search reads the table (ids are not indexed for `like`): fine for a
 * console, not for an API.
 */
export async function searchAccounts(
  db: Kysely<Database>,
  query: string,
  limit = 20,
): Promise<AccountMatch[]> {
  const pattern = startsWith(query);
  const users = await db
    .selectFrom('credits.balances')
    .select(['user_id as id', 'balance'])
    .where((eb) => eb.or([eb('user_id', '=', query), sql<boolean>`user_id like ${pattern} escape '\\'`]))
    .orderBy(sql`user_id = ${query}`, 'desc')
    .orderBy('user_id')
    .limit(limit)
    .execute();
  const guilds = await db
    .selectFrom('credits.guild_pools')
    .select(['organization_id as id', 'balance'])
    .where((eb) =>
      eb.or([eb('organization_id', '=', query), sql<boolean>`organization_id like ${pattern} escape '\\'`]),
    )
    .orderBy(sql`organization_id = ${query}`, 'desc')
    .orderBy('organization_id')
    .limit(limit)
    .execute();
  return [
    ...users.map((row) => ({ kind: 'user' as const, ...row })),
    ...guilds.map((row) => ({ kind: 'guild' as const, ...row })),
  ];
}

/** Does the user have a balance row (has anything ever happened to their credits)? */
export async function hasBalanceRow(db: Kysely<Database>, userId: string): Promise<boolean> {
  const row = await db
    .selectFrom('credits.balances')
    .select('user_id')
    .where('user_id', '=', userId)
    .executeTakeFirst();
  return row !== undefined;
}

/** Σ refunds posted against each of the given ledger rows (rows without refunds are absent). */
export async function refundedAmounts(
  db: Kysely<Database>,
  transactionIds: string[],
): Promise<Map<string, number>> {
  if (transactionIds.length === 0) return new Map();
  const rows = await db
    .selectFrom('credits.transactions')
    .select(['reference_transaction_id as id', sql<number>`sum(amount)::int8`.as('refunded')])
    .where('type', '=', 'refund')
    .where('reference_transaction_id', 'in', transactionIds)
    .groupBy('reference_transaction_id')
    .execute();
  return new Map(rows.map((row) => [row.id as string, row.refunded]));
}

export type OpenHold = ReservationRow & { lapsed: boolean };

/** Open holds of a user (personal and on pools) or on a guild's pool, newest first (at most `limit`). */
export async function listOpenHolds(
  db: Kysely<Database>,
  of: { userId: string } | { guildId: string },
  limit = 100,
): Promise<OpenHold[]> {
  const { rows } = await sql<OpenHold>`
    select r.*, (r.expires_at <= now()) as lapsed
      from credits.reservations r
     where r.status = 'open' and ${'userId' in of ? sql`r.user_id = ${of.userId}` : sql`r.organization_id = ${of.guildId}`}
     order by r.created_at desc, r.id desc
     limit ${limit}`.execute(db);
  return rows;
}

export async function findReservation(db: Kysely<Database>, reservationId: string) {
  return db.selectFrom('credits.reservations').selectAll().where('id', '=', reservationId).executeTakeFirst();
}

export async function findGift(db: Kysely<Database>, giftId: string): Promise<GiftRow | undefined> {
  return db.selectFrom('gifts.gift_codes').selectAll().where('id', '=', giftId).executeTakeFirst();
}

/** Any ledger row by id (the console knows no owner in advance). */
export async function findLedgerRow(
  db: Kysely<Database>,
  transactionId: string,
): Promise<LedgerRow | undefined> {
  return db.selectFrom('credits.transactions').selectAll().where('id', '=', transactionId).executeTakeFirst();
}

export interface BalancePoint {
  at: Date;
  /** Σ ledger after the entry. */
  balance: number;
}

/**
 * The balance after each of an account's latest ledger rows since `since` (at most `limit`), oldest first: a
 * user's personal ledger or a pool's.
 */
export async function balanceSeries(
  db: Kysely<Database>,
  kind: 'user' | 'guild',
  accountId: string,
  since: Date,
  limit = 2000,
): Promise<BalancePoint[]> {
  const { table, account } = LEDGERS[kind];
  const { rows } = await sql<BalancePoint>`
    select created_at as at, balance_after as balance from ${sql.table(table)}
     where ${sql.ref(account)} = ${accountId} and created_at >= ${since}
     order by created_at desc, id desc
     limit ${limit}`.execute(db);
  return rows.reverse();
}

export interface DailyAmount {
  /** UTC day, 'YYYY-MM-DD'. */
  day: string;
  /** The app (usage per app) or the member (pool spend per member). */
  key: string;
  credits: number;
}

/** A user's usage per app and UTC day since `sinceDay` (credits.usage_stats), by day. */
export async function userUsageByAppAndDay(
  db: Kysely<Database>,
  userId: string,
  sinceDay: string,
): Promise<DailyAmount[]> {
  const { rows } = await sql<DailyAmount>`
    select to_char(date, 'YYYY-MM-DD') as day, app_id as key, credits_used as credits
      from credits.usage_stats
     where user_id = ${userId} and date >= ${sinceDay}::date
     order by date, app_id`.execute(db);
  return rows;
}

/** What each member spent from the pool per UTC day since `sinceDay` (credits.guild_member_usage), by day. */
export async function poolSpendByMemberAndDay(
  db: Kysely<Database>,
  guildId: string,
  sinceDay: string,
): Promise<DailyAmount[]> {
  const { rows } = await sql<DailyAmount>`
    select to_char(day, 'YYYY-MM-DD') as day, user_id as key, spent as credits
      from credits.guild_member_usage
     where organization_id = ${guildId} and day >= ${sinceDay}::date
     order by day, user_id`.execute(db);
  return rows;
}

/**
 * The users the pool knows of — limits set, ledger rows or holds — by id, at most `limit`. (Membership
 * itself lives in the auth service.)
 */
export async function listPoolMembers(db: Kysely<Database>, guildId: string, limit = 100): Promise<string[]> {
  const { rows } = await sql<{ user_id: string }>`
    select user_id from credits.guild_spending_limits where organization_id = ${guildId}
    union
    select distinct user_id from credits.guild_transactions where organization_id = ${guildId}
    union
    select distinct user_id from credits.reservations where organization_id = ${guildId}
    order by user_id
    limit ${limit}`.execute(db);
  return rows.map((row) => row.user_id);
}

export interface NewAdminAction {
  operator: string;
  action: string;
  target: string;
  reason: string;
  idempotencyKey: string;
  request: JsonObject;
  result: JsonObject;
}

/**
 * Records an operator's action; undefined when its idempotency key was recorded before (a double submit:
 * the caller reads the first with findAdminActionByKey).
 */
export async function insertAdminAction(
  db: Kysely<Database>,
  action: NewAdminAction,
): Promise<AdminActionRow | undefined> {
  return db
    .insertInto('credits.admin_actions')
    .values({
      operator: action.operator,
      action: action.action,
      target: action.target,
      reason: action.reason,
      idempotency_key: action.idempotencyKey,
      request: JSON.stringify(action.request),
      result: JSON.stringify(action.result),
    })
    .onConflict((oc) => oc.column('idempotency_key').doNothing())
    .returningAll()
    .executeTakeFirst();
}

/**
 * Claims an action's key for the request with this fingerprint, or finds it claimed: returns the fingerprint
 * the key is claimed for (this one when this call claimed it). Atomic by the primary key.
 */
export async function claimAdminActionKey(
  db: Kysely<Database>,
  idempotencyKey: string,
  requestHash: string,
): Promise<string> {
  const claimed = await db
    .insertInto('credits.admin_action_claims')
    .values({ idempotency_key: idempotencyKey, request_hash: requestHash })
    .onConflict((oc) => oc.column('idempotency_key').doNothing())
    .returning('request_hash')
    .executeTakeFirst();
  if (claimed) return claimed.request_hash;
  const { request_hash } = await db
    .selectFrom('credits.admin_action_claims')
    .select('request_hash')
    .where('idempotency_key', '=', idempotencyKey)
    .executeTakeFirstOrThrow();
  return request_hash;
}

/** Gives up a claim whose action was refused (nothing done), so the key is free for a corrected request. */
export async function releaseAdminActionKey(
  db: Kysely<Database>,
  idempotencyKey: string,
  requestHash: string,
): Promise<void> {
  await db
    .deleteFrom('credits.admin_action_claims')
    .where('idempotency_key', '=', idempotencyKey)
    .where('request_hash', '=', requestHash)
    .execute();
}

export async function findAdminActionByKey(
  db: Kysely<Database>,
  idempotencyKey: string,
): Promise<AdminActionRow | undefined> {
  return db
    .selectFrom('credits.admin_actions')
    .selectAll()
    .where('idempotency_key', '=', idempotencyKey)
    .executeTakeFirst();
}

export async function findAdminAction(db: Kysely<Database>, id: string): Promise<AdminActionRow | undefined> {
  return db.selectFrom('credits.admin_actions').selectAll().where('id', '=', id).executeTakeFirst();
}

/** One page of the audit trail, newest first; only actions on `target` when given. */
export async function listAdminActions(
  db: Kysely<Database>,
  filter: { target?: string | undefined },
  page: PageRequest,
): Promise<Page<AdminActionRow> | undefined> {
  return newestFirst(
    db
      .selectFrom('credits.admin_actions')
      .selectAll()
      .$if(filter.target !== undefined, (q) => q.where('target', '=', filter.target as string)),
    { table: 'credits.admin_actions', idOf: (row) => row.id },
    page,
  );
}

/**
 * Ends a console session for good (a sign-out): its id is refused until the session would have expired. Rows
 * of sessions past their expiry are dropped on the way (a signed cookie that old is refused anyway).
 */
export async function revokeAdminSession(db: Kysely<Database>, sid: string, expiresAt: Date): Promise<void> {
  await db
    .deleteFrom('credits.admin_session_revocations')
    .where('expires_at', '<', sql<Date>`now()`)
    .execute();
  await db
    .insertInto('credits.admin_session_revocations')
    .values({ sid, expires_at: expiresAt })
    .onConflict((oc) => oc.column('sid').doNothing())
    .execute();
}

export async function isAdminSessionRevoked(db: Kysely<Database>, sid: string): Promise<boolean> {
  const row = await db
    .selectFrom('credits.admin_session_revocations')
    .select('sid')
    .where('sid', '=', sid)
    .executeTakeFirst();
  return row !== undefined;
}
