import {
  type AdminActionRow,
  LEDGER_TYPES as ALL_LEDGER_TYPES,
  balanceSeries,
  type DailyAmount,
  type Database,
  findAdminAction,
  findGuildPool,
  GUILD_LEDGER_TYPES,
  type GuildLedgerType,
  getBalance,
  hasBalanceRow,
  type LedgerFilter,
  type LedgerType,
  listAdminActions,
  listCreatedGifts,
  listGuildEntries,
  listLedgerEntries,
  listLots,
  listOpenHolds,
  listPoolMembers,
  listPurchases,
  listReceivedGifts,
  type MemberSpending,
  memberSpending,
  type OpenHold,
  poolSpendByMemberAndDay,
  refundedAmounts,
  searchAccounts,
  userUsageByAppAndDay,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { toLotItem } from '../credits/lots.ts';
import { toPurchaseView, toTransactionView } from '../credits/mappers.ts';
import { InvalidCursorError, InvalidRequestError } from '../errors.ts';
import { toOwnGift, toReceivedGift } from '../gifts/mappers.ts';
import { toGuildTransactionView, toPoolView } from '../guild/mappers.ts';
import { guildTarget, userTarget } from './actions.ts';

// What the operator console shows (issue 18): read-only views of one user or one guild, the data of their
// charts, the search and the audit trail. The console's HTTP layer renders these; nothing here writes.

export const LEDGER_TYPES: readonly LedgerType[] = ALL_LEDGER_TYPES;
export const POOL_LEDGER_TYPES: readonly GuildLedgerType[] = GUILD_LEDGER_TYPES;

/** The ledger filters and page as the console's query string gives them (days are UTC, 'YYYY-MM-DD'). */
export interface LedgerQuery {
  type?: string | undefined;
  appId?: string | undefined;
  /** First day shown (inclusive). */
  from?: string | undefined;
  /** Last day shown (inclusive). */
  to?: string | undefined;
  /** Pool ledgers: only this member's rows. */
  memberId?: string | undefined;
  cursor?: string | undefined;
  limit: number;
}

const DAY = /^\d{4}-\d{2}-\d{2}$/;

/** Days a filter may name: Postgres and JS agree on all of them, and the day after the last still exists. */
const FIRST_DAY = '1970-01-01';
const LAST_DAY = '9999-12-30';

function dayStart(value: string, field: string): Date {
  const date = DAY.test(value) ? new Date(`${value}T00:00:00.000Z`) : new Date(Number.NaN);
  // A day that does not exist (2026-02-31) is invalid or rolls over: either way it is not read back.
  if (Number.isNaN(date.getTime()) || date.toISOString().slice(0, 10) !== value) {
    throw new InvalidRequestError(`${field}: must be a day, YYYY-MM-DD`, 'VALIDATION', { field });
  }
  if (value < FIRST_DAY || value > LAST_DAY) {
    throw new InvalidRequestError(`${field}: must be between ${FIRST_DAY} and ${LAST_DAY}`, 'VALIDATION', {
      field,
    });
  }
  return date;
}

const nextDay = (date: Date) => new Date(date.getTime() + 86_400_000);

function ledgerFilter<Type extends LedgerType | GuildLedgerType>(
  query: LedgerQuery,
  types: readonly Type[],
): LedgerFilter<Type> {
  if (query.type && !(types as readonly string[]).includes(query.type)) {
    throw new InvalidRequestError(`type: must be one of ${types.join(', ')}`, 'VALIDATION', {
      field: 'type',
    });
  }
  const from = query.from ? dayStart(query.from, 'from') : undefined;
  const to = query.to ? nextDay(dayStart(query.to, 'to')) : undefined;
  if (from && to && from >= to) {
    throw new InvalidRequestError('to: must not be before from', 'VALIDATION', { field: 'to' });
  }
  return { type: (query.type || undefined) as Type | undefined, appId: query.appId || undefined, from, to };
}

export const search = (db: Kysely<Database>, query: string) => searchAccounts(db, query.trim(), 20);

export type AuditEntry = ReturnType<typeof toAuditEntry>;

export function toAuditEntry(row: AdminActionRow) {
  return {
    id: row.id,
    operator: row.operator,
    action: row.action,
    target: row.target,
    reason: row.reason,
    request: row.request,
    result: row.result,
    createdAt: row.created_at,
  };
}

export async function auditEntry(db: Kysely<Database>, id: string): Promise<AuditEntry | undefined> {
  const row = await findAdminAction(db, id);
  return row ? toAuditEntry(row) : undefined;
}

export async function auditLog(
  db: Kysely<Database>,
  page: { limit: number; cursor?: string | undefined; target?: string | undefined },
) {
  const result = await listAdminActions(db, { target: page.target }, page);
  if (!result) throw new InvalidCursorError('an audit entry');
  return { items: result.items.map(toAuditEntry), nextCursor: result.nextCursor };
}

export type HoldView = ReturnType<typeof toHoldView>;

function toHoldView(row: OpenHold) {
  return {
    id: row.id,
    userId: row.user_id,
    guildId: row.organization_id,
    amount: row.amount,
    appId: row.app_id,
    description: row.description,
    metadata: row.metadata,
    expiresAt: row.expires_at,
    /** Past its time; the next spend or the sweep returns it. */
    lapsed: row.lapsed,
    createdAt: row.created_at,
  };
}

/** Everything the console shows of one user, with one page of their ledger. */
export async function userOverview(db: Kysely<Database>, userId: string, query: LedgerQuery) {
  const filter = ledgerFilter(query, LEDGER_TYPES);
  const ledger = await listLedgerEntries(db, userId, { limit: query.limit, cursor: query.cursor }, filter);
  if (!ledger) throw new InvalidCursorError('a ledger entry of this user under these filters');
  const refunded = await refundedAmounts(
    db,
    ledger.items.filter((row) => row.type === 'usage').map((row) => row.id),
  );
  const recent = { limit: 20 };
  const [known, balance, lots, holds, purchases, created, received, audit] = await Promise.all([
    hasBalanceRow(db, userId),
    getBalance(db, userId),
    listLots(db, 'user', userId, { includeSpent: true }),
    listOpenHolds(db, { userId }),
    listPurchases(db, userId, recent),
    listCreatedGifts(db, userId, recent),
    listReceivedGifts(db, userId, recent),
    listAdminActions(db, { target: userTarget(userId) }, recent),
  ]);
  return {
    userId,
    known,
    balance,
    lots: lots.map(toLotItem),
    holds: holds.map(toHoldView),
    purchases: purchases?.items.map(toPurchaseView) ?? [],
    giftsCreated: created?.items.map(toOwnGift) ?? [],
    giftsReceived: received?.items.map(toReceivedGift) ?? [],
    ledger: {
      items: ledger.items.map((row) => ({
        ...toTransactionView(row),
        /** Usage rows: what a refund may still give back. */
        refundable: row.type === 'usage' ? -row.amount - (refunded.get(row.id) ?? 0) : null,
      })),
      nextCursor: ledger.nextCursor,
    },
    audit: audit?.items.map(toAuditEntry) ?? [],
  };
}

export type UserOverview = Awaited<ReturnType<typeof userOverview>>;

export interface MemberView extends MemberSpending {
  userId: string;
}

/** Everything the console shows of one guild's pool, with one page of its ledger. */
export async function guildOverview(db: Kysely<Database>, guildId: string, query: LedgerQuery) {
  const filter = { ...ledgerFilter(query, POOL_LEDGER_TYPES), memberId: query.memberId || undefined };
  const ledger = await listGuildEntries(db, guildId, { limit: query.limit, cursor: query.cursor }, filter);
  if (!ledger) throw new InvalidCursorError('a ledger entry of this pool under these filters');
  const [pool, lots, holds, memberIds, audit] = await Promise.all([
    findGuildPool(db, guildId),
    listLots(db, 'guild', guildId, { includeSpent: true }),
    listOpenHolds(db, { guildId }),
    listPoolMembers(db, guildId),
    listAdminActions(db, { target: guildTarget(guildId) }, { limit: 20 }),
  ]);
  const members: MemberView[] = [];
  for (const userId of memberIds) members.push({ userId, ...(await memberSpending(db, guildId, userId)) });
  return {
    guildId,
    pool: pool ? { ...toPoolView(pool), reserved: pool.reserved } : undefined,
    lots: lots.map(toLotItem),
    holds: holds.map(toHoldView),
    members,
    ledger: { items: ledger.items.map(toGuildTransactionView), nextCursor: ledger.nextCursor },
    audit: audit?.items.map(toAuditEntry) ?? [],
  };
}

export type GuildOverview = Awaited<ReturnType<typeof guildOverview>>;

/** One chart: x in seconds since the epoch, one list of values per series (null = no point). */
export interface ChartData {
  /** How to draw it (default: lines). */
  kind?: 'bars' | 'lines';
  x: number[];
  series: { label: string; values: (number | null)[] }[];
}

/** How many days the charts look back. */
export const CHART_DAYS = 90;
/** Series of a per-day chart beyond this many are summed as "other". */
const MAX_SERIES = 8;

const utcDay = (date: Date) => date.toISOString().slice(0, 10);
const seconds = (date: Date) => Math.floor(date.getTime() / 1000);

function chartSince(now: Date, days: number) {
  const since = new Date(now.getTime() - (days - 1) * 86_400_000);
  return { since: dayStart(utcDay(since), 'since'), sinceDay: utcDay(since) };
}

/** A step line of the balance after each ledger row, extended to now. */
function balanceChart(points: { at: Date; balance: number }[], label: string, now: Date): ChartData {
  if (points.length === 0) return { x: [], series: [{ label, values: [] }] };
  const x = points.map((point) => seconds(point.at));
  const values = points.map((point) => point.balance);
  const last = values[values.length - 1]!;
  if (seconds(now) > x[x.length - 1]!) {
    x.push(seconds(now));
    values.push(last);
  }
  return { x, series: [{ label, values }] };
}

/** A per-day chart shows at least this many days (more when the data goes further back). */
const MIN_CHART_DAYS = 14;

/**
 * One series per key (the largest MAX_SERIES − 1 by total, the rest as "other"), one x per day from the first
 * day with data (but at least MIN_CHART_DAYS, and not before sinceDay) to today. One series is drawn as bars.
 */
function dailyChart(rows: DailyAmount[], sinceDay: string, now: Date): ChartData {
  if (rows.length === 0) return { x: [], series: [] };
  const window = utcDay(new Date(now.getTime() - (MIN_CHART_DAYS - 1) * 86_400_000));
  let firstDay = window;
  for (const row of rows) if (row.day < firstDay) firstDay = row.day;
  const start = firstDay < sinceDay ? sinceDay : firstDay;
  const days: string[] = [];
  for (let day = dayStart(start, 'since'); utcDay(day) <= utcDay(now); day = nextDay(day)) {
    days.push(utcDay(day));
  }
  const totals = new Map<string, number>();
  for (const row of rows) totals.set(row.key, (totals.get(row.key) ?? 0) + row.credits);
  const ranked = [...totals.entries()]
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
    .map(([key]) => key);
  const shown = ranked.length > MAX_SERIES ? ranked.slice(0, MAX_SERIES - 1) : ranked;
  const labels = ranked.length > shown.length ? [...shown, 'other'] : shown;
  const index = new Map(days.map((day, position) => [day, position]));
  const values = labels.map(() => days.map(() => 0));
  for (const row of rows) {
    const position = index.get(row.day);
    if (position === undefined) continue;
    const series = shown.includes(row.key) ? shown.indexOf(row.key) : labels.length - 1;
    values[series]![position]! += row.credits;
  }
  return {
    kind: labels.length === 1 ? 'bars' : 'lines',
    x: days.map((day) => seconds(dayStart(day, 'day'))),
    series: labels.map((label, position) => ({ label, values: values[position]! })),
  };
}

/** A user's charts: balance over time, usage per app per day (the last CHART_DAYS days). */
export async function userCharts(db: Kysely<Database>, userId: string, now = new Date()) {
  const { since, sinceDay } = chartSince(now, CHART_DAYS);
  const [points, usage] = await Promise.all([
    balanceSeries(db, 'user', userId, since),
    userUsageByAppAndDay(db, userId, sinceDay),
  ]);
  return {
    balance: balanceChart(points, 'balance (held included)', now),
    usage: dailyChart(usage, sinceDay, now),
  };
}

/** A guild's charts: pool balance over time, spend per member per day (the last CHART_DAYS days). */
export async function guildCharts(db: Kysely<Database>, guildId: string, now = new Date()) {
  const { since, sinceDay } = chartSince(now, CHART_DAYS);
  const [points, spend] = await Promise.all([
    balanceSeries(db, 'guild', guildId, since),
    poolSpendByMemberAndDay(db, guildId, sinceDay),
  ]);
  return {
    balance: balanceChart(points, 'pool balance (held included)', now),
    spend: dailyChart(spend, sinceDay, now),
  };
}
