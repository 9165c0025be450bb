import { type Kysely, sql, type Transaction } from 'kysely';
import type { AutoTopUpAttemptRow, AutoTopUpRow, Database } from '../database.ts';

// Auto top-up (issue 19): a user's setting and saved card (credits.auto_top_up) and the attempts the ledger
// trigger records when the balance crosses below the threshold (credits.auto_top_up_attempts,
// functions/auto_top_up.sql). The worker claims due attempts with SKIP LOCKED; an attempt's end is written by
// the worker (a refusal) or by the Stripe webhook path that credits purchases.

export interface AutoTopUpSetup {
  userId: string;
  packageId: string;
  threshold: number;
  maxPerMonth: number;
  stripeCustomerId: string;
  setupIntentId: string;
}

/**
 * Stores the settings of a `setup` and the SetupIntent that will save the card. A card saved before keeps
 * paying (and `enabled` keeps its value) until the new one is saved.
 */
export async function saveAutoTopUpSetup(db: Kysely<Database>, setup: AutoTopUpSetup): Promise<void> {
  const values = {
    package_id: setup.packageId,
    threshold: setup.threshold,
    max_per_month: setup.maxPerMonth,
    stripe_customer_id: setup.stripeCustomerId,
    setup_intent_id: setup.setupIntentId,
  };
  await db
    .insertInto('credits.auto_top_up')
    .values({ user_id: setup.userId, ...values })
    .onConflict((oc) => oc.column('user_id').doUpdateSet({ ...values, updated_at: sql<Date>`now()` }))
    .execute();
}

export async function findAutoTopUp(db: Kysely<Database>, userId: string): Promise<AutoTopUpRow | undefined> {
  return db.selectFrom('credits.auto_top_up').selectAll().where('user_id', '=', userId).executeTakeFirst();
}

export async function latestAutoTopUpAttempt(
  db: Kysely<Database>,
  userId: string,
): Promise<AutoTopUpAttemptRow | undefined> {
  return db
    .selectFrom('credits.auto_top_up_attempts')
    .selectAll()
    .where('user_id', '=', userId)
    .orderBy('created_at', 'desc')
    .orderBy('id', 'desc')
    .limit(1)
    .executeTakeFirst();
}

/** Turns auto top-up off with a reason (when it is on); true when it was on. */
export async function disableAutoTopUp(
  db: Kysely<Database>,
  userId: string,
  reason: string,
): Promise<boolean> {
  const row = await db
    .updateTable('credits.auto_top_up')
    .set({
      enabled: false,
      disabled_reason: reason,
      disabled_at: sql<Date>`now()`,
      updated_at: sql<Date>`now()`,
    })
    .where('user_id', '=', userId)
    .where('enabled', '=', true)
    .returning('user_id')
    .executeTakeFirst();
  return row !== undefined;
}

/**
 * Saves the card of a succeeded SetupIntent and turns auto top-up on, when the intent is the user's latest
 * `setup` (an older one's late success saves nothing). False when it is not.
 */
export async function saveAutoTopUpCard(
  trx: Transaction<Database>,
  card: {
    userId: string;
    setupIntentId: string;
    paymentMethodId: string;
    brand: string | null;
    last4: string | null;
  },
): Promise<boolean> {
  const row = await trx
    .updateTable('credits.auto_top_up')
    .set({
      enabled: true,
      payment_method_id: card.paymentMethodId,
      card_brand: card.brand,
      card_last4: card.last4,
      disabled_reason: null,
      disabled_at: null,
      updated_at: sql<Date>`now()`,
    })
    .where('user_id', '=', card.userId)
    .where('setup_intent_id', '=', card.setupIntentId)
    .returning('user_id')
    .executeTakeFirst();
  return row !== undefined;
}

/** The saved card was removed in Stripe: auto top-up stops for every user it paid for. Returns those users. */
export async function forgetAutoTopUpCard(
  trx: Transaction<Database>,
  paymentMethodId: string,
  reason: string,
): Promise<string[]> {
  const rows = await trx
    .updateTable('credits.auto_top_up')
    .set({
      enabled: false,
      payment_method_id: null,
      card_brand: null,
      card_last4: null,
      disabled_reason: reason,
      disabled_at: sql<Date>`now()`,
      updated_at: sql<Date>`now()`,
    })
    .where('payment_method_id', '=', paymentMethodId)
    .returning('user_id')
    .execute();
  return rows.map((row) => row.user_id);
}

/**
 * Claims the most overdue pending attempt (FOR UPDATE SKIP LOCKED: two workers never take the same one) and
 * leases it for `leaseSeconds`: a worker that dies leaves the lease to run out and the attempt is sent again,
 * with the same idempotency key.
 */
export async function claimDueAutoTopUp(
  db: Kysely<Database>,
  leaseSeconds: number,
): Promise<AutoTopUpAttemptRow | undefined> {
  const { rows } = await sql<AutoTopUpAttemptRow>`
    update credits.auto_top_up_attempts t
       set tries = t.tries + 1,
           next_attempt_at = now() + make_interval(secs => ${leaseSeconds}::float8),
           updated_at = now()
     where t.id = (select c.id from credits.auto_top_up_attempts c
                    where c.status = 'pending' and c.next_attempt_at <= now()
                    order by c.next_attempt_at
                    limit 1
                    for update skip locked)
    returning t.*`.execute(db);
  return rows[0];
}

/** Locks one attempt (FOR UPDATE). */
export async function lockAutoTopUpAttempt(
  trx: Transaction<Database>,
  attemptId: string,
): Promise<AutoTopUpAttemptRow | undefined> {
  return trx
    .selectFrom('credits.auto_top_up_attempts')
    .selectAll()
    .where('id', '=', attemptId)
    .forUpdate()
    .executeTakeFirst();
}

/** Ties a locked attempt to the purchase that pays for it (made once: a retry reuses it). */
export async function setAutoTopUpPurchase(
  trx: Transaction<Database>,
  attemptId: string,
  purchaseId: string,
): Promise<void> {
  await trx
    .updateTable('credits.auto_top_up_attempts')
    .set({ purchase_id: purchaseId, updated_at: sql<Date>`now()` })
    .where('id', '=', attemptId)
    .execute();
}

/** The PaymentIntent exists: the attempt waits for its outcome (still in flight). Only from `pending`. */
export async function markAutoTopUpProcessing(
  db: Kysely<Database>,
  attemptId: string,
  paymentIntentId: string,
): Promise<void> {
  await db
    .updateTable('credits.auto_top_up_attempts')
    .set({ status: 'processing', payment_intent_id: paymentIntentId, updated_at: sql<Date>`now()` })
    .where('id', '=', attemptId)
    .where('status', '=', 'pending')
    .execute();
}

/** Ends an attempt that is still in flight; the row when it was. */
export async function closeAutoTopUpAttempt(
  db: Kysely<Database>,
  attemptId: string,
  end: {
    status: 'succeeded' | 'failed' | 'skipped';
    paymentIntentId?: string | null;
    failureCode?: string | null;
    failureMessage?: string | null;
  },
): Promise<AutoTopUpAttemptRow | undefined> {
  return db
    .updateTable('credits.auto_top_up_attempts')
    .set({
      status: end.status,
      failure_code: end.failureCode ?? null,
      failure_message: end.failureMessage ?? null,
      ...(end.paymentIntentId ? { payment_intent_id: end.paymentIntentId } : {}),
      completed_at: sql<Date>`now()`,
      updated_at: sql<Date>`now()`,
    })
    .where('id', '=', attemptId)
    .where('status', 'in', ['pending', 'processing'])
    .returningAll()
    .executeTakeFirst();
}

/** The attempt a purchase pays for, if it is an automatic one. */
export async function autoTopUpAttemptOfPurchase(
  db: Kysely<Database>,
  purchaseId: string,
): Promise<AutoTopUpAttemptRow | undefined> {
  return db
    .selectFrom('credits.auto_top_up_attempts')
    .selectAll()
    .where('purchase_id', '=', purchaseId)
    .executeTakeFirst();
}

/**
 * A purchase was credited: its attempt, if it is an automatic one, succeeded (whatever it said before: the
 * money arrived). In the crediting transaction, under the purchase's row lock.
 */
export async function succeedAutoTopUpOfPurchase(
  trx: Transaction<Database>,
  purchaseId: string,
  paymentIntentId: string | null,
): Promise<AutoTopUpAttemptRow | undefined> {
  return trx
    .updateTable('credits.auto_top_up_attempts')
    .set({
      status: 'succeeded',
      failure_code: null,
      failure_message: null,
      ...(paymentIntentId ? { payment_intent_id: paymentIntentId } : {}),
      completed_at: sql<Date>`coalesce(completed_at, now())`,
      updated_at: sql<Date>`now()`,
    })
    .where('purchase_id', '=', purchaseId)
    .returningAll()
    .executeTakeFirst();
}

/**
 * Claims up to `limit` attempts whose PaymentIntent has been awaiting its outcome for `staleSeconds` (a lost
 * webhook, or a crash between Stripe's `succeeded` answer and the credit), SKIP LOCKED, and moves their
 * updated_at to now: each is looked at again once per `staleSeconds` until it ends.
 */
export async function claimStaleAutoTopUps(
  db: Kysely<Database>,
  staleSeconds: number,
  limit: number,
): Promise<AutoTopUpAttemptRow[]> {
  const { rows } = await sql<AutoTopUpAttemptRow>`
    update credits.auto_top_up_attempts t
       set updated_at = now()
     where t.id in (select c.id from credits.auto_top_up_attempts c
                     where c.status = 'processing'
                       and c.updated_at <= now() - make_interval(secs => ${staleSeconds}::float8)
                     order by c.updated_at
                     limit ${limit}::int
                     for update skip locked)
    returning t.*`.execute(db);
  return rows;
}
