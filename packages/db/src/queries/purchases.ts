import { type Kysely, sql, type Transaction } from 'kysely';
import type {
  Database,
  JsonObject,
  PurchaseRow,
  PurchaseStatus,
  ReversalKind,
  UnmatchedPayment,
} from '../database.ts';
import { systemKeys } from '../system-keys.ts';
import { newestFirst, type Page, type PageRequest } from './pagination.ts';

// Stripe purchases, their refunds and disputes (reversals) and the webhook events applied to them. A purchase
// is started outside any transaction (the Stripe calls sit between its writes); everything a webhook event
// does happens in the event's transaction, under the purchase's row lock, so those functions take it.

export interface NewPurchase {
  userId: string;
  packageId: string;
  /** Copied from the package: what this purchase credits and costs, whatever the package becomes. */
  credits: number;
  priceEuroCents: number;
  currency: string;
  stripeCustomerId: string;
  /** Copied from the package too: the validity the buyer was shown. */
  validityDays: number | null;
  /** Stored with the purchase (an automatic one names its attempt and the card it is paid with). */
  metadata?: JsonObject;
}

/** Inserts a pending purchase and returns its id, which keys every Stripe call made for it. */
export async function insertPendingPurchase(db: Kysely<Database>, purchase: NewPurchase): Promise<string> {
  const { id } = await db
    .insertInto('credits.purchases')
    .values({
      user_id: purchase.userId,
      package_id: purchase.packageId,
      credits: purchase.credits,
      price_euro_cents: purchase.priceEuroCents,
      currency: purchase.currency,
      stripe_customer_id: purchase.stripeCustomerId,
      validity_days: purchase.validityDays,
      ...(purchase.metadata ? { metadata: JSON.stringify(purchase.metadata) } : {}),
    })
    .returning('id')
    .executeTakeFirstOrThrow();
  return id;
}

/** The columns that tie a purchase to the Stripe objects paying it. */
export type StripeIdColumn = 'stripe_payment_intent_id' | 'stripe_checkout_session_id' | 'stripe_charge_id';

export type StripeIds = Partial<Record<StripeIdColumn, string | null>>;

/** Stores the ids of the Stripe objects of a purchase (the columns given; the rest stay as they are). */
export async function recordPurchaseStripeIds(
  db: Kysely<Database>,
  purchaseId: string,
  ids: StripeIds,
): Promise<void> {
  await db.updateTable('credits.purchases').set(ids).where('id', '=', purchaseId).execute();
}

/** Keeps on a purchase the latest payment reported for it that did not match its price (not credited). */
export async function recordUnmatchedPayment(
  trx: Transaction<Database>,
  purchaseId: string,
  payment: UnmatchedPayment,
): Promise<void> {
  await trx
    .updateTable('credits.purchases')
    .set({ unmatched_payment: JSON.stringify(payment) })
    .where('id', '=', purchaseId)
    .execute();
}

/**
 * Marks a purchase failed when Stripe refused to create its payment, but only while it is pending: a webhook
 * may have settled it meanwhile.
 */
export async function failPendingPurchase(db: Kysely<Database>, purchaseId: string): Promise<void> {
  await db
    .updateTable('credits.purchases')
    .set({ status: 'failed' })
    .where('id', '=', purchaseId)
    .where('status', '=', 'pending')
    .execute();
}

/** One page of a user's purchases, newest first; undefined when the cursor names no purchase of theirs. */
export async function listPurchases(
  db: Kysely<Database>,
  userId: string,
  page: PageRequest,
): Promise<Page<PurchaseRow> | undefined> {
  return newestFirst(
    db.selectFrom('credits.purchases').selectAll().where('user_id', '=', userId),
    { table: 'credits.purchases', idOf: (row) => row.id },
    page,
  );
}

/** One purchase of a user; someone else's is not found, like a missing one. */
export async function findPurchaseOfUser(
  db: Kysely<Database>,
  userId: string,
  purchaseId: string,
): Promise<PurchaseRow | undefined> {
  return db
    .selectFrom('credits.purchases')
    .selectAll()
    .where('id', '=', purchaseId)
    .where('user_id', '=', userId)
    .executeTakeFirst();
}

/**
 * Records a Stripe event as applied, in the transaction that applies it; false when it was recorded before
 * (a redelivery, or a concurrent copy that waited on the primary key until the first committed).
 */
export async function recordStripeEvent(
  trx: Transaction<Database>,
  event: { id: string; type: string },
): Promise<boolean> {
  const recorded = await trx
    .insertInto('credits.stripe_events')
    .values({ id: event.id, type: event.type })
    .onConflict((oc) => oc.column('id').doNothing())
    .returning('id')
    .executeTakeFirst();
  return recorded !== undefined;
}

/** Locks the purchase a Stripe object id was stored on (FOR UPDATE): events of one purchase serialise. */
export async function lockPurchaseByStripeId(
  trx: Transaction<Database>,
  column: StripeIdColumn,
  value: string,
): Promise<PurchaseRow | undefined> {
  return trx
    .selectFrom('credits.purchases')
    .selectAll()
    .where(column, '=', value)
    .forUpdate()
    .executeTakeFirst();
}

/** Locks a user's purchase by id (FOR UPDATE): how an event finds its purchase from the metadata we sent. */
export async function lockPurchaseOfUser(
  trx: Transaction<Database>,
  userId: string,
  purchaseId: string,
): Promise<PurchaseRow | undefined> {
  return trx
    .selectFrom('credits.purchases')
    .selectAll()
    .where('id', '=', purchaseId)
    .where('user_id', '=', userId)
    .forUpdate()
    .executeTakeFirst();
}

/** Marks a locked purchase completed (now), with the Stripe ids of its payment, in the transaction that credits it. */
export async function markPurchaseCompleted(
  trx: Transaction<Database>,
  purchaseId: string,
  ids: StripeIds,
): Promise<void> {
  await trx
    .updateTable('credits.purchases')
    .set({ ...ids, status: 'completed', completed_at: sql<Date>`now()` })
    .where('id', '=', purchaseId)
    .execute();
}

/** Sets the status of a locked purchase the caller found unpaid (failed, or cancelled when its session expired). */
export async function closeUnpaidPurchase(
  trx: Transaction<Database>,
  purchaseId: string,
  status: Extract<PurchaseStatus, 'failed' | 'cancelled'>,
): Promise<void> {
  await trx.updateTable('credits.purchases').set({ status }).where('id', '=', purchaseId).execute();
}

/**
 * What a purchase's refunds recorded so far: the credits they claim (Σ credits_due) and the latest cumulative
 * amount refunded, in cents (Stripe's amount_refunded only grows: a smaller one is a stale event).
 */
export async function recordedRefunds(
  trx: Transaction<Database>,
  purchaseId: string,
): Promise<{ claimed: number; refundedCents: number }> {
  const { rows } = await sql<{ claimed: number; refunded_cents: number }>`
    select coalesce(sum(credits_due), 0)::int8 as claimed, coalesce(max(amount_cents), 0)::int8 as refunded_cents
      from credits.purchase_reversals
     where purchase_id = ${purchaseId}::uuid and kind = 'refund'`.execute(trx);
  return { claimed: rows[0]?.claimed ?? 0, refundedCents: rows[0]?.refunded_cents ?? 0 };
}

/**
 * What a purchase's reversals claim: the credits of each (Σ credits_due, each share rounded down on its own)
 * and the money they returned — the refunds' latest cumulative amount plus every dispute — in cents. A
 * dispute the merchant won (reinstated) claims nothing: the money came back.
 */
export async function reversalTotals(
  trx: Transaction<Database>,
  purchaseId: string,
): Promise<{ claimed: number; returnedCents: number }> {
  const { rows } = await sql<{ claimed: number; returned_cents: number }>`
    select coalesce(sum(r.credits_due), 0)::int8 as claimed,
           (coalesce(max(r.amount_cents) filter (where r.kind = 'refund'), 0)
             + coalesce(sum(r.amount_cents) filter (where r.kind = 'dispute'), 0))::int8 as returned_cents
      from credits.purchase_reversals r
     where r.purchase_id = ${purchaseId}::uuid
       and not exists (select 1 from credits.purchase_reinstatements i where i.reversal_key = r.reversal_key)`.execute(
    trx,
  );
  return { claimed: rows[0]?.claimed ?? 0, returnedCents: rows[0]?.returned_cents ?? 0 };
}

/**
 * The lots of a purchase's credits — the lot its credit made (named by the purchase's credit ledger row) and
 * those credits given back after a won dispute went into (named by its positive clawback rows) —, what
 * expired from them unspent (expiry already took those credits from the buyer) and when they expire (null:
 * never, or no lot is known). A clawback takes from these lots first; credits given back get their expiry.
 */
export async function purchaseLots(
  trx: Transaction<Database>,
  userId: string,
  purchaseId: string,
): Promise<{ lotIds: string[]; expired: number; expiresAt: Date | null }> {
  const { rows } = await sql<{ lot_ids: string[]; expired: number; expires_at: Date | null }>`
    select coalesce(array_agg(c.id order by c.created_at, c.id), '{}') as lot_ids,
           coalesce(sum(c.expired), 0)::int8 as expired, min(c.expires_at) as expires_at
      from credits.lots c
     where c.id in (select unnest(t.lot_ids) from credits.transactions t
                     where t.user_id = ${userId}
                       and (t.idempotency_key = ${systemKeys.purchaseCredit(purchaseId)}
                            or (t.type = 'clawback' and t.amount > 0 and t.metadata->>'purchaseId' = ${purchaseId})))`.execute(
    trx,
  );
  return {
    lotIds: rows[0]?.lot_ids ?? [],
    expired: rows[0]?.expired ?? 0,
    expiresAt: rows[0]?.expires_at ?? null,
  };
}

/**
 * Records that the merchant won a dispute (once per dispute, whoever reports it first; it may come before the
 * dispute's own reversal). False when it was recorded before.
 */
export async function insertReinstatement(
  trx: Transaction<Database>,
  reinstatement: { purchaseId: string; key: string; stripeObjectId: string; eventId: string },
): Promise<boolean> {
  const inserted = await trx
    .insertInto('credits.purchase_reinstatements')
    .values({
      reversal_key: reinstatement.key,
      purchase_id: reinstatement.purchaseId,
      stripe_object_id: reinstatement.stripeObjectId,
      stripe_event_id: reinstatement.eventId,
    })
    .onConflict((oc) => oc.column('reversal_key').doNothing())
    .returning('reversal_key')
    .executeTakeFirst();
  return inserted !== undefined;
}

export interface NewReversal {
  purchaseId: string;
  kind: ReversalKind;
  /** Unique per refund amount or dispute: the same reversal can be recorded once. */
  key: string;
  stripeObjectId: string;
  eventId: string;
  amountCents: number;
  creditsDue: number;
}

/** Records a refund or dispute of a locked purchase; false when its key was recorded before. */
export async function insertReversal(trx: Transaction<Database>, reversal: NewReversal): Promise<boolean> {
  const inserted = await trx
    .insertInto('credits.purchase_reversals')
    .values({
      purchase_id: reversal.purchaseId,
      kind: reversal.kind,
      reversal_key: reversal.key,
      stripe_object_id: reversal.stripeObjectId,
      stripe_event_id: reversal.eventId,
      amount_cents: reversal.amountCents,
      credits_due: reversal.creditsDue,
    })
    .onConflict((oc) => oc.column('reversal_key').doNothing())
    .returning('id')
    .executeTakeFirst();
  return inserted !== undefined;
}

export type PurchaseSettlement = Pick<
  PurchaseRow,
  | 'user_id'
  | 'status'
  | 'credits'
  | 'price_euro_cents'
  | 'clawed_back_credits'
  | 'unrecovered_credits'
  | 'returned_credits'
>;

/** What settling a locked purchase's reversals starts from: its buyer, status, credits and what was settled. */
export async function getPurchaseSettlement(
  trx: Transaction<Database>,
  purchaseId: string,
): Promise<PurchaseSettlement> {
  return trx
    .selectFrom('credits.purchases')
    .select([
      'user_id',
      'status',
      'credits',
      'price_euro_cents',
      'clawed_back_credits',
      'unrecovered_credits',
      'returned_credits',
    ])
    .where('id', '=', purchaseId)
    .executeTakeFirstOrThrow();
}

/** Stores the new settled totals of a locked purchase, in the transaction that clawed back or gave back. */
export async function recordReversalSettlement(
  trx: Transaction<Database>,
  purchaseId: string,
  totals: { clawedBackCredits: number; unrecoveredCredits: number; returnedCredits: number },
): Promise<void> {
  await trx
    .updateTable('credits.purchases')
    .set({
      clawed_back_credits: totals.clawedBackCredits,
      unrecovered_credits: totals.unrecoveredCredits,
      returned_credits: totals.returnedCredits,
    })
    .where('id', '=', purchaseId)
    .execute();
}
