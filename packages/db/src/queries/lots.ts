import { type Kysely, type RawBuilder, sql } from 'kysely';
import type { Database, LotRow } from '../database.ts';
import { LEDGERS, type LotPortion, portionsOf } from './ledger-rows.ts';

// Credit lots (functions/lots.sql has the burn order and the expiry; the migration 2026_12_03_0800_lots has
// the model). This module says, for each way credits enter an account, which lots they land in, and reads lots.

export { type LotPortion, portionsOf } from './ledger-rows.ts';
export type LotAccountKind = 'user' | 'guild';
export type LotSource = 'purchase' | 'grant' | 'gift' | 'refund' | 'funding';
export type LotCategory = 'paid' | 'promotional';

/** Defaults by source: purchases are paid and burn after promotions; grants are promotional and burn first. */
export const LOT_DEFAULTS = {
  purchase: { category: 'paid', priority: 50 },
  grant: { category: 'promotional', priority: 10 },
  gift: { category: 'promotional', priority: 10 },
  refund: { category: 'promotional', priority: 10 },
} as const satisfies Record<string, { category: LotCategory; priority: number }>;

/** Where credits entering an account go. */
export type LotCredit =
  /** A new lot (a purchase, a grant). */
  | { kind: 'new'; source: LotSource; category: LotCategory; priority: number; expiresAt: Date | null }
  /**
   * Credits moved from other lots: one new lot per portion with that lot's expiry (funding keeps category and
   * priority; a gift received becomes promotional at the gift priority).
   */
  | { kind: 'mirror'; source: 'gift' | 'funding'; portions: LotPortion[]; demote: boolean }
  /** Credits going back to the lots they left (a refund of a use, a gift's unclaimed escrow). */
  | { kind: 'return'; portions: LotPortion[] };

const ids = (portions: LotPortion[]) => portions.map((portion) => portion.lotId);
const amounts = (portions: LotPortion[]) => portions.map((portion) => portion.amount);

/**
 * The function call that puts `amount` credits of a credit statement into lots, to run LATERAL on the account
 * update's row (`accountId` names its id column): returns (lot_ids, lot_amounts).
 */
export function lotsOfCredit(
  kind: LotAccountKind,
  accountId: RawBuilder<string>,
  amount: number,
  credit: LotCredit,
): RawBuilder<unknown> {
  switch (credit.kind) {
    case 'new':
      return sql`credits.add_lot(${kind}, ${accountId}, ${amount}::int8, ${credit.source}, ${credit.category},
                                 ${credit.priority}::int, ${credit.expiresAt}::timestamptz)`;
    case 'mirror':
      return sql`credits.mirror_lots(${kind}, ${accountId}, ${ids(credit.portions)}::uuid[],
                                     ${amounts(credit.portions)}::int8[], ${credit.source},
                                     ${credit.demote ? LOT_DEFAULTS.gift.category : null}::text,
                                     ${credit.demote ? LOT_DEFAULTS.gift.priority : null}::int)`;
    case 'return':
      return sql`credits.return_lots(${ids(credit.portions)}::uuid[], ${amounts(credit.portions)}::int8[])`;
  }
}

/**
 * The earliest expiry among the lots a credit fills (null: none expires), for the account's next_lot_expiry:
 * `least(next_lot_expiry, <this>)` keeps it no later than any lot that can expire.
 */
export function expiryOfCredit(credit: LotCredit): RawBuilder<Date | null> {
  if (credit.kind === 'new') return sql`${credit.expiresAt}::timestamptz`;
  return sql`credits.lots_expiry(${ids(credit.portions)}::uuid[])`;
}

/** `length` credits of a portion list from `offset` on, laid end to end (a gift portion, a partial refund). */
export function slicePortions(portions: LotPortion[], offset: number, length: number): LotPortion[] {
  const slice: LotPortion[] = [];
  let start = 0;
  for (const portion of portions) {
    const from = Math.max(offset, start);
    const to = Math.min(offset + length, start + portion.amount);
    if (to > from) slice.push({ lotId: portion.lotId, amount: to - from });
    start += portion.amount;
  }
  return slice;
}

/**
 * Posts the expiry of an account's lapsed lots (credits.expire_lots: one `expiry` ledger row per lot, under
 * the account's row lock). Returns the credits expired; 0 when nothing was due.
 */
export async function expireLots(
  db: Kysely<Database>,
  kind: LotAccountKind,
  accountId: string,
  causedBy?: string,
): Promise<number> {
  const { rows } = await sql<{ expired: number }>`
    select credits.expire_lots(${kind}, ${accountId}, ${causedBy ?? null}::uuid) as expired`.execute(db);
  return rows[0]?.expired ?? 0;
}

/**
 * The credits that expired in the transaction of ledger entry `transactionId`, because of it (expiry rows
 * whose `causedBy` names it): what a replay of that entry takes off its available_after to answer as the
 * first call did.
 */
export async function expiredBecauseOf(
  db: Kysely<Database>,
  kind: LotAccountKind,
  accountId: string,
  transactionId: string,
): Promise<number> {
  const { table, account } = LEDGERS[kind];
  const { rows } = await sql<{ expired: number }>`
    select coalesce(-sum(amount), 0)::int8 as expired from ${sql.table(table)}
     where ${sql.ref(account)} = ${accountId} and type = 'expiry' and metadata->>'causedBy' = ${transactionId}`.execute(
    db,
  );
  return rows[0]?.expired ?? 0;
}

/** One pass of the lot expiry sweep over at most `limit` users and `limit` pools; the credits expired. */
export async function expireDueLots(
  db: Kysely<Database>,
  limit = 500,
): Promise<{ personal: number; pools: number; accounts: number }> {
  const { rows } = await sql<{ personal: number; pools: number; accounts: number }>`
    select personal, pools, accounts from credits.expire_due_lots(${limit}::int)`.execute(db);
  return { personal: rows[0]?.personal ?? 0, pools: rows[0]?.pools ?? 0, accounts: rows[0]?.accounts ?? 0 };
}

/**
 * Writes the credits.expiring event of lots expiring within `noticeDays` that were not noticed yet (once per
 * lot); returns how many.
 */
export async function noticeExpiringLots(
  db: Kysely<Database>,
  noticeDays: number,
  limit = 500,
): Promise<number> {
  const { rows } = await sql<{ noticed: number }>`
    select credits.notice_expiring_lots(${noticeDays}::int, ${limit}::int) as noticed`.execute(db);
  return rows[0]?.noticed ?? 0;
}

export interface LotView {
  id: string;
  source: LotSource;
  category: LotCategory;
  priority: number;
  amount: number;
  /** Spendable or held credits left; 0 once the lot is spent or has expired. */
  remaining: number;
  /** Part of `remaining` held by open holds. */
  pinned: number;
  expired: number;
  expiresAt: Date | null;
  createdAt: Date;
}

/**
 * Per lot of an account, what its open holds whose time is up pin in it: held no longer (the balance views
 * already count those holds as returned; the next call that meets them returns them). Joined by lot id.
 */
function lapsedPins(kind: LotAccountKind, accountId: string) {
  const holds =
    kind === 'user'
      ? sql`r.user_id = ${accountId} and r.organization_id is null`
      : sql`r.organization_id = ${accountId}`;
  return sql`(select h.lot_id, sum(h.amount)::int8 as amount
                from credits.reservations r
               cross join lateral unnest(r.lot_ids, r.lot_amounts) as h(lot_id, amount)
               where ${holds} and r.status = 'open' and r.expires_at <= now()
               group by h.lot_id)`;
}

/**
 * An account's lots in burn order (the order credits.burn_lots uses), read as of now: credits of a lapsed lot
 * whose expiry is not posted yet already count as expired, and credits pinned by a hold whose time is up are
 * held no longer (and expired, in a lapsed lot). `includeSpent` adds the lots with nothing left.
 */
export async function listLots(
  db: Kysely<Database>,
  kind: LotAccountKind,
  accountId: string,
  options: { includeSpent?: boolean | undefined } = {},
): Promise<LotView[]> {
  const { rows } = await sql<
    Pick<LotRow, 'id' | 'source' | 'category' | 'priority' | 'amount' | 'remaining' | 'pinned' | 'expired'> &
      Pick<LotRow, 'expires_at' | 'created_at'>
  >`
    select id, source, category, priority, amount, created_at, expires_at, pinned,
           case when expires_at <= now() then pinned else remaining end as remaining,
           case when expires_at <= now() then expired + remaining - pinned else expired end as expired
      from (select l.id, l.source, l.category, l.priority, l.amount, l.created_at, l.expires_at, l.remaining,
                   l.expired, l.spent, l.pinned - coalesce(p.amount, 0) as pinned
              from credits.lots l left join ${lapsedPins(kind, accountId)} p on p.lot_id = l.id
             where l.account_kind = ${kind} and l.account_id = ${accountId}) l
     where ${options.includeSpent ?? false} or (not spent and (expires_at is null or expires_at > now() or pinned > 0))
     order by priority, expires_at, created_at, id`.execute(db);
  return rows.map((row) => ({
    id: row.id,
    source: row.source,
    category: row.category,
    priority: row.priority,
    amount: row.amount,
    remaining: row.remaining,
    pinned: row.pinned,
    expired: row.expired,
    expiresAt: row.expires_at,
    createdAt: row.created_at,
  }));
}

export interface LotSummary {
  byCategory: { paid: number; promotional: number };
  /** The credits of the next lot(s) to expire within the notice window, and when the first of them does. */
  expiringSoon: { amount: number; expiresAt: Date } | null;
}

/**
 * What an account's lots add up to, read as of now: spendable credits per category (neither held nor lapsed;
 * a hold whose time is up holds nothing: they add up to the spendable balance) and the unpinned credits
 * expiring within `noticeDays`.
 */
export async function summarizeLots(
  db: Kysely<Database>,
  kind: LotAccountKind,
  accountId: string,
  noticeDays: number,
): Promise<LotSummary> {
  const { rows } = await sql<{
    paid: number;
    promotional: number;
    expiring: number;
    first_expiry: Date | null;
  }>`
    select coalesce(sum(remaining - pinned) filter (where category = 'paid' and live), 0)::int8 as paid,
           coalesce(sum(remaining - pinned) filter (where category = 'promotional' and live), 0)::int8 as promotional,
           coalesce(sum(remaining - pinned) filter (where live and soon), 0)::int8 as expiring,
           min(expires_at) filter (where live and soon and remaining > pinned) as first_expiry
      from (select l.remaining, l.pinned - coalesce(p.amount, 0) as pinned, l.category, l.expires_at,
                   (l.expires_at is null or l.expires_at > now()) as live,
                   l.expires_at <= now() + ${noticeDays}::int * interval '1 day' as soon
              from credits.lots l left join ${lapsedPins(kind, accountId)} p on p.lot_id = l.id
             where l.account_kind = ${kind} and l.account_id = ${accountId} and not l.spent) l`.execute(db);
  const row = rows[0];
  return {
    byCategory: { paid: row?.paid ?? 0, promotional: row?.promotional ?? 0 },
    expiringSoon:
      row && row.expiring > 0 && row.first_expiry
        ? { amount: row.expiring, expiresAt: row.first_expiry }
        : null,
  };
}

/** The lot portions one ledger entry (personal or guild) took or gave; none for an entry from before lots. */
export async function lotPortionsOfEntry(
  db: Kysely<Database>,
  ledger: LotAccountKind,
  transactionId: string,
): Promise<LotPortion[]> {
  const row = await db
    .selectFrom(LEDGERS[ledger].table)
    .select(['lot_ids', 'lot_amounts'])
    .where('id', '=', transactionId)
    .executeTakeFirst();
  return row ? portionsOf(row) : [];
}
