import { type Kysely, sql, type Transaction } from 'kysely';
import type { Database, LedgerRow, LedgerType } from '../database.ts';
import { type LedgerFilter, ledgerFilterConditions } from './ledger-filter.ts';
import {
  type PersonalRow,
  type PostedEntry,
  type PostedRow,
  personalLedgerRow,
  toPostedEntry,
  usageCounter,
} from './ledger-rows.ts';
import { expiryOfCredit, type LotCredit, lotsOfCredit } from './lots.ts';
import { newestFirst, type Page, type PageRequest } from './pagination.ts';
import { type KeyRef, notRefused } from './refusals.ts';

/** A personal ledger entry to post; `amount` is always positive, the direction says which way it moves. */
export type LedgerEntryInput = PersonalRow;

export type { PostedEntry } from './ledger-rows.ts';

/** The unique index that makes idempotency atomic: a replayed key fails the insert, never a read-then-write. */
export const LEDGER_IDEMPOTENCY_INDEX = 'transactions_user_idempotency_key';

/**
 * Debits a personal balance in one statement (one implicit transaction, one round trip): the conditional
 * UPDATE cannot overdraw or touch held credits, the ledger row is inserted from its RETURNING, and the day's
 * usage is upserted for `usage` entries. Returns null when the spendable balance is too small (nothing
 * written). A replayed idempotency key makes the whole statement fail with a unique violation on
 * LEDGER_IDEMPOTENCY_INDEX, so the debit is undone with it; `refusedUnder` (the caller's key, for a keyed
 * call) makes it fail on REFUSAL_KEY_INDEX when that key was refused before, asked under the row lock.
 */
export async function debitBalance(
  db: Kysely<Database>,
  entry: LedgerEntryInput,
  totals: 'spent' | 'unearned' = 'spent',
  refusedUnder?: KeyRef,
  /** Lots that give first, before the burn order (a clawback: the refunded purchase's own lots). */
  lotsFirst?: string[],
): Promise<PostedEntry | null> {
  const spent = totals === 'spent' ? entry.amount : 0;
  const unearned = totals === 'unearned' ? entry.amount : 0;
  const countsAsUsage = entry.type === 'usage' && entry.appId;
  const { rows } = await sql<PostedRow>`
    with debit as (
      update credits.balances
         set balance = balance - ${entry.amount}::int8,
             total_spent = total_spent + ${spent}::int8,
             total_earned = total_earned - ${unearned}::int8,
             version = version + 1,
             updated_at = now()
       where user_id = ${entry.userId}
         and credits.covers(balance, reserved, next_lot_expiry, ${entry.amount}::int8)
      returning user_id, balance, reserved${notRefused(refusedUnder)}
    ), burned as (
      select t.* from debit d
       cross join lateral credits.take_lots('user', d.user_id, ${entry.amount}::int8, false${
         lotsFirst ? sql`, ${lotsFirst}::uuid[]` : sql``
       }) t
    ), entry as (${personalLedgerRow('debit', entry, -1, 'burned')})${
      countsAsUsage
        ? sql`, usage as (${usageCounter('entry', entry.userId, entry.appId ?? '', entry.amount)})`
        : sql``
    }
    select id, balance_after, available_after as available, created_at, lot_ids, lot_amounts from entry
  `.execute(db);
  const row = rows[0];
  return row ? toPostedEntry(row) : null;
}

/**
 * Credits a personal balance in one statement, creating the balance row when the user has none, and puts the
 * credits in lots (`lots`: a new lot, mirrored portions, or back into the lots they left).
 * `totals` says which running total moves: 'earned' (purchase, grant, gift received) or 'unspent' (a refund
 * of earlier spending). Credits returned to a lot whose time has passed lower next_lot_expiry to it: run
 * expireLots in the same transaction to post their expiry.
 */
export async function creditBalance(
  db: Kysely<Database>,
  entry: LedgerEntryInput,
  lots: LotCredit,
  totals: 'earned' | 'unspent' = 'earned',
  /** A caller's key: the credit fails as a key violation when the key was refused before (see notRefused). */
  refusedUnder?: KeyRef,
): Promise<PostedEntry> {
  const earned = totals === 'earned' ? entry.amount : 0;
  const unspent = totals === 'unspent' ? entry.amount : 0;
  const expiry = expiryOfCredit(lots);
  const { rows } = await sql<PostedRow>`
    with account as (
      insert into credits.balances as b (user_id, balance, total_earned, total_spent, next_lot_expiry)
      values (${entry.userId}, ${entry.amount}::int8, ${earned}::int8, 0, ${expiry})
      on conflict (user_id) do update
        set balance = b.balance + ${entry.amount}::int8,
            total_earned = b.total_earned + ${earned}::int8,
            total_spent = b.total_spent - ${unspent}::int8,
            next_lot_expiry = least(b.next_lot_expiry, ${expiry}),
            version = b.version + 1,
            updated_at = now()
      returning user_id, balance, reserved${notRefused(refusedUnder)}
    ), filled as (
      select t.* from account a cross join lateral ${lotsOfCredit('user', sql<string>`a.user_id`, entry.amount, lots)} t
    ), entry as (${personalLedgerRow('account', entry, 1, 'filled')})
    select id, balance_after, available_after as available, created_at, lot_ids, lot_amounts from entry
  `.execute(db);
  const row = rows[0];
  if (!row) throw new Error('credit statement returned no row');
  return toPostedEntry(row);
}

/** The ledger row a user's idempotency key produced: the first execution a replay answers with. */
export async function findLedgerEntryByKey(
  db: Kysely<Database>,
  userId: string,
  idempotencyKey: string,
): Promise<LedgerRow | undefined> {
  return db
    .selectFrom('credits.transactions')
    .selectAll()
    .where('user_id', '=', userId)
    .where('idempotency_key', '=', idempotencyKey)
    .executeTakeFirst();
}

/** One of a user's ledger rows by id; someone else's is not found. */
export async function findLedgerEntry(
  db: Kysely<Database>,
  userId: string,
  transactionId: string,
): Promise<LedgerRow | undefined> {
  return db
    .selectFrom('credits.transactions')
    .selectAll()
    .where('user_id', '=', userId)
    .where('id', '=', transactionId)
    .executeTakeFirst();
}

/**
 * One page of a user's ledger, newest first, optionally filtered; undefined when the cursor names no row this
 * listing could show.
 */
export async function listLedgerEntries(
  db: Kysely<Database>,
  userId: string,
  page: PageRequest,
  filter: LedgerFilter<LedgerType> = {},
): Promise<Page<LedgerRow> | undefined> {
  const conditions = ledgerFilterConditions(filter);
  return newestFirst(
    db
      .selectFrom('credits.transactions')
      .selectAll()
      .where('user_id', '=', userId)
      .$if(conditions.length > 0, (q) => q.where((eb) => eb.and(conditions))),
    { table: 'credits.transactions', idOf: (row) => row.id },
    page,
  );
}

/**
 * Locks one of a user's ledger rows (FOR UPDATE locks it, it modifies nothing) and reads what a refund of it
 * needs: refunds of one usage entry serialise on this lock, so together they never exceed it.
 */
export async function lockLedgerEntry(
  trx: Transaction<Database>,
  userId: string,
  transactionId: string,
): Promise<Pick<LedgerRow, 'id' | 'type' | 'amount' | 'app_id' | 'lot_ids' | 'lot_amounts'> | undefined> {
  return trx
    .selectFrom('credits.transactions')
    .select(['id', 'type', 'amount', 'app_id', 'lot_ids', 'lot_amounts'])
    .where('id', '=', transactionId)
    .where('user_id', '=', userId)
    .forUpdate()
    .executeTakeFirst();
}

/** Σ refunds posted against a ledger row; exact under lockLedgerEntry of that row. */
export async function refundedAmountOf(trx: Transaction<Database>, transactionId: string): Promise<number> {
  const { refunded } = await trx
    .selectFrom('credits.transactions')
    .select(sql<number>`coalesce(sum(amount), 0)::int8`.as('refunded'))
    .where('reference_transaction_id', '=', transactionId)
    .where('type', '=', 'refund')
    .executeTakeFirstOrThrow();
  return refunded;
}
