import { type RawBuilder, sql } from 'kysely';
import type { GuildLedgerType, JsonObject, LedgerType } from '../database.ts';

// The pieces every single-statement money write is made of, written once: the ledger row of a movement and
// the usage counters it feeds. Each write is `with <account update> returning balance, reserved`, then these
// read from it; the account update itself (its condition: never below zero, never into held credits) stays
// beside its caller, since that is what differs between a debit, a credit, a commit and a pool.

/** The two ledgers, by the kind of account they hold: the table and the column naming the account. */
export const LEDGERS = {
  user: { table: 'credits.transactions', account: 'user_id' },
  guild: { table: 'credits.guild_transactions', account: 'organization_id' },
} as const;

/** What posting a ledger row (personal or guild) tells its caller. */
export interface PostedEntry {
  id: string;
  /** Σ ledger of the account after the entry. */
  balanceAfter: number;
  /** Spendable after the entry (balance − reserved). */
  available: number;
  createdAt: Date;
  /** The lot portions the entry took or gave, in burn order. */
  lots: LotPortion[];
}

/** `amount` credits of one lot: what a ledger row took from it or gave to it. */
export interface LotPortion {
  lotId: string;
  amount: number;
}

/**
 * The row a money statement ends with:
 * `select id, balance_after, available_after as available, created_at, lot_ids, lot_amounts from entry`.
 */
export type PostedRow = {
  id: string;
  balance_after: number;
  available: number;
  created_at: Date;
  lot_ids: string[] | null;
  lot_amounts: number[] | null;
};

export const toPostedEntry = (row: PostedRow): PostedEntry => ({
  id: row.id,
  balanceAfter: row.balance_after,
  available: row.available,
  createdAt: row.created_at,
  lots: portionsOf(row),
});

/** A ledger row's (or a reservation's) lot portions as a list; none for rows written before lots. */
export function portionsOf(row: { lot_ids: string[] | null; lot_amounts: number[] | null }): LotPortion[] {
  const ids = row.lot_ids ?? [];
  return ids.map((lotId, i) => ({ lotId, amount: row.lot_amounts?.[i] ?? 0 }));
}

const json = (metadata: JsonObject | null | undefined) => (metadata ? JSON.stringify(metadata) : null);

interface EntryFields {
  amount: number;
  appId?: string | null | undefined;
  description: string;
  metadata?: JsonObject | null | undefined;
  idempotencyKey?: string | null | undefined;
  requestHash?: string | null | undefined;
}

export interface PersonalRow extends EntryFields {
  userId: string;
  type: LedgerType;
  referenceTransactionId?: string | null | undefined;
  guildId?: string | null | undefined;
}

export interface GuildRow extends EntryFields {
  /** Chosen by the caller when another row must point at this one before it exists. */
  id?: string | undefined;
  guildId: string;
  userId: string;
  type: GuildLedgerType;
}

/**
 * `insert into credits.transactions … select … from <account>`: the personal ledger row of a movement of
 * `direction × amount` credits, its arithmetic taken from the account CTE's new balance and reserved.
 * Returns id, balance_after, available_after, created_at.
 */
export function personalLedgerRow(
  account: string,
  row: PersonalRow,
  direction: 1 | -1,
  lots: string,
): RawBuilder<unknown> {
  const signed = direction * row.amount;
  return sql`
    insert into credits.transactions
      (user_id, type, amount, balance_before, balance_after, available_after, app_id, description, metadata,
       idempotency_key, request_hash, reference_transaction_id, guild_id, lot_ids, lot_amounts)
    select ${row.userId}, ${row.type}, ${signed}::int8, balance - ${signed}::int8, balance, balance - reserved,
           ${row.appId ?? null}, ${row.description}, ${json(row.metadata)}::jsonb, ${row.idempotencyKey ?? null},
           ${row.requestHash ?? null}, ${row.referenceTransactionId ?? null}::uuid, ${row.guildId ?? null},
           lots.lot_ids, lots.lot_amounts
      from ${sql.table(account)}, ${sql.table(lots)} lots
    returning id, balance_after, available_after, created_at, lot_ids, lot_amounts`;
}

/** The guild ledger row of a pool movement, as personalLedgerRow. */
export function guildLedgerRow(
  account: string,
  row: GuildRow,
  direction: 1 | -1,
  lots: string,
): RawBuilder<unknown> {
  const signed = direction * row.amount;
  return sql`
    insert into credits.guild_transactions
      (id, organization_id, user_id, type, amount, balance_before, balance_after, available_after, app_id,
       description, metadata, idempotency_key, request_hash, lot_ids, lot_amounts)
    select coalesce(${row.id ?? null}::uuid, credits.uuid_v7()), ${row.guildId}, ${row.userId}, ${row.type},
           ${signed}::int8, balance - ${signed}::int8, balance, balance - reserved, ${row.appId ?? null},
           ${row.description}, ${json(row.metadata)}::jsonb, ${row.idempotencyKey ?? null}, ${row.requestHash ?? null},
           lots.lot_ids, lots.lot_amounts
      from ${sql.table(account)}, ${sql.table(lots)} lots
    returning id, balance_after, available_after, created_at, lot_ids, lot_amounts`;
}

/** The day's usage of an app (`credits.usage_stats`), grown by a usage entry, on the UTC day of that entry. */
export function usageCounter(
  entry: string,
  userId: string,
  appId: string,
  amount: number,
): RawBuilder<unknown> {
  return sql`
    insert into credits.usage_stats (user_id, app_id, date, credits_used)
    select ${userId}, ${appId}, (created_at at time zone 'utc')::date, ${amount}::int8 from ${sql.table(entry)}
    on conflict (user_id, app_id, date)
      do update set credits_used = credits.usage_stats.credits_used + excluded.credits_used`;
}

/** A member's limit counter (`credits.guild_member_usage`), on the UTC day of the pool usage entry. */
export function memberCounter(
  entry: string,
  guildId: string,
  userId: string,
  amount: number,
): RawBuilder<unknown> {
  return sql`
    insert into credits.guild_member_usage (organization_id, user_id, day, spent)
    select ${guildId}, ${userId}, (created_at at time zone 'utc')::date, ${amount}::int8 from ${sql.table(entry)}
    on conflict (organization_id, user_id, day)
      do update set spent = credits.guild_member_usage.spent + excluded.spent`;
}
