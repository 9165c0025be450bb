import {
  type AutoTopUpAttemptRow,
  type AutoTopUpAttemptStatus,
  type AutoTopUpRow,
  claimDueAutoTopUp,
  claimStaleAutoTopUps,
  closeAutoTopUpAttempt,
  type Database,
  disableAutoTopUp,
  findAutoTopUp,
  findPackage,
  insertPendingPurchase,
  latestAutoTopUpAttempt,
  lockAutoTopUpAttempt,
  markAutoTopUpProcessing,
  type PurchaseRow,
  recordPurchaseStripeIds,
  saveAutoTopUpSetup,
  setAutoTopUpPurchase,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import type Stripe from 'stripe';
import type { Logger } from '../../deps.ts';
import { effects } from '../effects.ts';
import { NotFoundError, PreconditionFailedError, ServiceUnavailableError } from '../errors.ts';
import { type AutoTopUpFailure, closeUnpaidAttempt, recordAutoTopUpFailure } from './auto-top-up-failure.ts';
import { isPaymentRefusal, isStripeError } from './client.ts';
import { stripeCustomerFor } from './customers.ts';
import { PURCHASE_CURRENCY, requireStripe } from './purchases.ts';
import { AUTO_TOP_UP_PURPOSE, creditPaidIntent } from './webhook.ts';

// Auto top-up (issue 19). `setup` saves a card (a SetupIntent on the user's Stripe customer; its
// setup_intent.succeeded turns auto top-up on); the ledger trigger (db functions/auto_top_up.sql) records an
// attempt when the balance crosses below the threshold; the worker below pays for it off-session. Credits
// arrive only through the path that credits every purchase (webhook.ts completePurchase), exactly once.

/** maxPerMonth when `setup` names none. */
export const DEFAULT_MAX_PER_MONTH = 5;
/**
 * How long a claimed attempt is the worker's before another may send it again (same idempotency key): longer
 * than its one Stripe call may take (client.ts: 3 tries of at most 20 s, with backoff between them).
 */
const LEASE_SECONDS = 120;
/** From this try on, an attempt that still could not be sent is logged as an error (about an hour of leases). */
const STUCK_AFTER_TRIES = 30;
/** How long a sent payment may await its webhook before the worker asks Stripe how it ended. */
const STALE_PROCESSING_SECONDS = 600;
/**
 * An attempt's payment is sent (and sent again, with the attempt's id as key) for this long after the attempt
 * was made. Stripe keeps a key for at least 24 h, and answers a key whose first request failed with that same
 * failure meanwhile; past the key's life a send could make a second payment. So an attempt none of whose
 * sends got an answer (a 5xx Stripe keeps replaying, a network that never reached it) is not sent again after
 * 22 h: it is settled by what Stripe has, its payment found by the purchase id in its metadata.
 */
export const AUTO_TOP_UP_SEND_HOURS = 22;
/**
 * When no payment is found by then, the attempt fails (`payment_provider_unavailable`): an hour after the
 * last send could have happened, longer than Stripe's search takes to show a payment even in its outages.
 */
export const AUTO_TOP_UP_GIVE_UP_HOURS = 23;
const HOUR_MS = 3_600_000;

interface AutoTopUpDeps {
  db: Kysely<Database>;
  stripe: Stripe | undefined;
}

export interface AutoTopUpView {
  enabled: boolean;
  packageId: string | null;
  threshold: number | null;
  maxPerMonth: number | null;
  paymentMethod: { brand: string; last4: string } | null;
  /** Why it is off (a failed payment, `disable`, the card removed in Stripe); null while on or never set. */
  disabledReason: string | null;
  lastAttempt: {
    id: string;
    status: AutoTopUpAttemptStatus;
    purchaseId: string | null;
    failureCode: string | null;
    failureMessage: string | null;
    createdAt: Date;
    completedAt: Date | null;
  } | null;
}

function toView(setting: AutoTopUpRow | undefined, attempt: AutoTopUpAttemptRow | undefined): AutoTopUpView {
  return {
    enabled: setting?.enabled ?? false,
    packageId: setting?.package_id ?? null,
    threshold: setting?.threshold ?? null,
    maxPerMonth: setting?.max_per_month ?? null,
    paymentMethod:
      setting?.payment_method_id && setting.card_brand && setting.card_last4
        ? { brand: setting.card_brand, last4: setting.card_last4 }
        : null,
    disabledReason: setting?.enabled ? null : (setting?.disabled_reason ?? null),
    lastAttempt: attempt
      ? {
          id: attempt.id,
          status: attempt.status,
          purchaseId: attempt.purchase_id,
          failureCode: attempt.failure_code,
          failureMessage: attempt.failure_message,
          createdAt: attempt.created_at,
          completedAt: attempt.completed_at,
        }
      : null,
  };
}

export async function autoTopUpOf(db: Kysely<Database>, userId: string): Promise<AutoTopUpView> {
  const [setting, attempt] = await Promise.all([
    findAutoTopUp(db, userId),
    latestAutoTopUpAttempt(db, userId),
  ]);
  return toView(setting, attempt);
}

/** Turns auto top-up off (the saved card stays saved; `setup` turns it on again). An attempt already sent ends on its own. */
export async function disableAutoTopUpOf(db: Kysely<Database>, userId: string): Promise<AutoTopUpView> {
  await disableAutoTopUp(db, userId, 'disabled');
  return autoTopUpOf(db, userId);
}

export interface AutoTopUpSetupInput {
  user: { id: string; email: string | null; name: string | null };
  packageId: string;
  threshold: number;
  maxPerMonth?: number | undefined;
}

/**
 * Stores the settings and starts saving a card: a SetupIntent (off-session use) on the user's Stripe customer,
 * whose client secret Stripe.js confirms. Its setup_intent.succeeded saves the card and turns auto top-up on.
 */
export async function setupAutoTopUp(
  deps: AutoTopUpDeps,
  input: AutoTopUpSetupInput,
): Promise<{ setupIntentId: string; clientSecret: string; enabled: boolean }> {
  const stripe = requireStripe(deps.stripe);
  const pack = await findPackage(deps.db, input.packageId);
  if (!pack) throw new NotFoundError('Package', 'PACKAGE_NOT_FOUND');
  if (!pack.active) throw new PreconditionFailedError('This package is not on sale', 'PACKAGE_INACTIVE');
  let setupIntent: Stripe.SetupIntent;
  let customerId: string;
  try {
    customerId = await stripeCustomerFor(deps.db, stripe, input.user);
    setupIntent = await stripe.setupIntents.create({
      customer: customerId,
      usage: 'off_session',
      allowed_payment_method_types: ['card'],
      metadata: { userId: input.user.id, purpose: AUTO_TOP_UP_PURPOSE, packageId: pack.id },
    });
  } catch (error) {
    if (isStripeError(error))
      throw new ServiceUnavailableError(
        'The payment provider is unavailable, try again later',
        'PAYMENT_PROVIDER_UNAVAILABLE',
        { cause: error },
      );
    throw error;
  }
  await saveAutoTopUpSetup(deps.db, {
    userId: input.user.id,
    packageId: pack.id,
    threshold: input.threshold,
    maxPerMonth: input.maxPerMonth ?? DEFAULT_MAX_PER_MONTH,
    stripeCustomerId: customerId,
    setupIntentId: setupIntent.id,
  });
  const setting = await findAutoTopUp(deps.db, input.user.id);
  if (!setupIntent.client_secret) throw new Error('stripe returned a SetupIntent without a client secret');
  return {
    setupIntentId: setupIntent.id,
    clientSecret: setupIntent.client_secret,
    enabled: setting?.enabled ?? false,
  };
}

export type AttemptResult = 'skipped' | 'credited' | 'processing' | 'failed' | 'unknown' | 'gone';

/**
 * One pass of the worker: claims due attempts (SKIP LOCKED, leased) and pays for each. Safe on every instance
 * at once and to repeat. Returns what became of each claimed attempt.
 */
export async function runAutoTopUps(
  deps: AutoTopUpDeps & { log?: Logger | undefined },
  limit = 20,
): Promise<Record<string, AttemptResult>> {
  if (!deps.stripe) return {};
  const results: Record<string, AttemptResult> = {};
  // Claimed one at a time, each just before it is sent: its lease starts when its payment does (not behind
  // the others of this pass), and what this worker has not reached yet is left to the other instances.
  for (let n = 0; n < limit; n++) {
    const attempt = await claimDueAutoTopUp(deps.db, LEASE_SECONDS);
    if (!attempt) break;
    try {
      results[attempt.id] = await payAttempt(deps, deps.stripe, attempt);
    } catch (error) {
      // The lease runs out and the attempt is sent again, with the same key, until its sending time is over
      // (AUTO_TOP_UP_SEND_HOURS). Stripe answers a key that got a 500 with the same 500, and the user's auto
      // top-up waits for this attempt meanwhile: an operator should hear of it long before.
      const details = { err: error, attemptId: attempt.id, userId: attempt.user_id, tries: attempt.tries };
      if (attempt.tries < STUCK_AFTER_TRIES) deps.log?.warn(details, 'auto top-up attempt not sent');
      else
        deps.log?.error(
          { ...details, since: attempt.created_at },
          'auto top-up attempt still not sent after many tries: this user gets no top-up until it is',
        );
      results[attempt.id] = 'unknown';
    }
  }
  for (const attempt of await claimStaleAutoTopUps(deps.db, STALE_PROCESSING_SECONDS, limit)) {
    try {
      results[attempt.id] = await settleStaleAttempt(deps, deps.stripe, attempt);
    } catch (error) {
      deps.log?.warn({ err: error, attemptId: attempt.id }, 'auto top-up payment not looked up');
      results[attempt.id] = 'unknown';
    }
  }
  return results;
}

/** Credits a succeeded payment through the webhook's path, counting it in the metrics when this call credited it. */
async function creditedNow(db: Kysely<Database>, intent: Stripe.PaymentIntent): Promise<AttemptResult> {
  const outcome = await creditPaidIntent(db, intent);
  if (outcome.result === 'applied' && outcome.effect === 'completed')
    effects.purchaseCredited(Number(outcome.details?.credits ?? 0));
  return 'credited';
}

/**
 * A payment sent long ago whose outcome never arrived (a lost webhook, or a crash between Stripe's answer and
 * the credit): asks Stripe, and settles it by the same paths as the webhook would.
 */
async function settleStaleAttempt(
  deps: AutoTopUpDeps,
  stripe: Stripe,
  attempt: AutoTopUpAttemptRow,
): Promise<AttemptResult> {
  if (!attempt.payment_intent_id) return 'processing';
  const intent = await stripe.paymentIntents.retrieve(attempt.payment_intent_id);
  if (intent.status === 'succeeded') return creditedNow(deps.db, intent);
  if (intent.status === 'requires_payment_method' || intent.status === 'canceled') {
    await deps.db.transaction().execute((trx) =>
      recordAutoTopUpFailure(trx, attempt, {
        code:
          intent.last_payment_error?.code ?? (intent.status === 'canceled' ? 'canceled' : 'payment_failed'),
        message: intent.last_payment_error?.message ?? null,
        paymentIntentId: intent.id,
      }),
    );
    return 'failed';
  }
  return 'processing';
}

/** Auto top-up on, with a saved card of a Stripe customer: what a payment is sent with. */
function chargeable(
  setting: AutoTopUpRow | undefined,
): setting is AutoTopUpRow & { payment_method_id: string; stripe_customer_id: string } {
  return Boolean(setting?.enabled && setting.payment_method_id && setting.stripe_customer_id);
}

/** Its purchase, made once: a retry of the attempt finds it and pays with the same card and key. */
async function purchaseOf(
  db: Kysely<Database>,
  attemptId: string,
): Promise<{
  attempt: AutoTopUpAttemptRow;
  purchase: PurchaseRow | undefined;
  skip?: string;
  /** Turned off (or the card removed) after a claim that may have sent it: sent no more, looked up instead. */
  halted?: boolean;
}> {
  return db.transaction().execute(async (trx) => {
    const attempt = await lockAutoTopUpAttempt(trx, attemptId);
    if (!attempt) throw new Error(`auto top-up attempt ${attemptId} vanished`);
    if (attempt.status !== 'pending') return { attempt, purchase: undefined, skip: attempt.status };
    const setting = await findAutoTopUp(trx, attempt.user_id);
    if (attempt.purchase_id) {
      // An earlier claim made its purchase and may have sent it (an answer lost): whatever the settings say
      // now, its outcome is unknown, not "nothing was sent" (payAttempt looks it up when it is halted).
      const purchase = await trx
        .selectFrom('credits.purchases')
        .selectAll()
        .where('id', '=', attempt.purchase_id)
        .executeTakeFirstOrThrow();
      return { attempt, purchase, halted: !chargeable(setting) };
    }
    // Turned off (or the card removed) before this attempt was ever sent: nothing is sent.
    if (!chargeable(setting)) {
      await closeAutoTopUpAttempt(trx, attempt.id, {
        status: 'skipped',
        failureCode: 'auto_top_up_disabled',
      });
      return { attempt, purchase: undefined, skip: 'disabled' };
    }
    const pack = await findPackage(trx, attempt.package_id);
    if (!pack) throw new Error(`package ${attempt.package_id} vanished`);
    // No longer on sale: nothing is bought, and auto top-up stops until it is set up with another package.
    if (!pack.active) {
      await recordAutoTopUpFailure(trx, attempt, {
        code: 'package_inactive',
        message: 'The package is no longer on sale',
        paymentIntentId: null,
      });
      return { attempt, purchase: undefined, skip: 'package_inactive' };
    }
    const purchaseId = await insertPendingPurchase(trx, {
      userId: attempt.user_id,
      packageId: pack.id,
      credits: pack.credits,
      priceEuroCents: pack.price_euro_cents,
      currency: PURCHASE_CURRENCY,
      stripeCustomerId: setting.stripe_customer_id,
      validityDays: pack.validity_days,
      metadata: { autoTopUpAttemptId: attempt.id, paymentMethodId: setting.payment_method_id },
    });
    await setAutoTopUpPurchase(trx, attempt.id, purchaseId);
    const purchase = await trx
      .selectFrom('credits.purchases')
      .selectAll()
      .where('id', '=', purchaseId)
      .executeTakeFirstOrThrow();
    return { attempt: { ...attempt, purchase_id: purchaseId }, purchase };
  });
}

async function payAttempt(
  deps: AutoTopUpDeps,
  stripe: Stripe,
  claimed: AutoTopUpAttemptRow,
): Promise<AttemptResult> {
  const { attempt, purchase, skip, halted } = await purchaseOf(deps.db, claimed.id);
  if (skip === 'disabled') return 'skipped';
  if (skip === 'package_inactive') return 'failed';
  if (!purchase) return 'gone';
  // Its purchase existed before this claim, so an earlier one may have sent the payment. The windows count
  // from the purchase, made right before the first send: Stripe's key lives from that send on.
  const age = Date.now() - purchase.created_at.getTime();
  if (claimed.purchase_id && (halted || age >= AUTO_TOP_UP_SEND_HOURS * HOUR_MS)) {
    const giveUp = age >= AUTO_TOP_UP_GIVE_UP_HOURS * HOUR_MS;
    return settleUnansweredAttempt(deps, stripe, attempt, purchase, giveUp, halted ?? false);
  }
  const paymentMethod = String(purchase.metadata?.paymentMethodId ?? '');
  let intent: Stripe.PaymentIntent;
  try {
    intent = await stripe.paymentIntents.create(
      {
        amount: purchase.price_euro_cents,
        currency: purchase.currency,
        customer: purchase.stripe_customer_id ?? undefined,
        payment_method: paymentMethod,
        off_session: true,
        confirm: true,
        description: `${purchase.credits} credits (auto top-up)`,
        metadata: {
          userId: purchase.user_id,
          packageId: purchase.package_id ?? '',
          purchaseId: purchase.id,
          auto: 'true',
        },
      },
      // The attempt's id: a retry after a crash or a lost answer is the same payment to Stripe.
      { idempotencyKey: attempt.id },
    );
  } catch (error) {
    if (!isStripeError(error)) throw error;
    if (isPaymentRefusal(error)) {
      const failure: AutoTopUpFailure = {
        code: error.code ?? error.type,
        message: error.message ?? null,
        paymentIntentId: error.payment_intent?.id ?? null,
      };
      await deps.db.transaction().execute((trx) => recordAutoTopUpFailure(trx, attempt, failure));
      return 'failed';
    }
    throw error;
  }
  return settleSentPayment(deps, attempt, purchase, intent);
}

/**
 * An attempt past its sending time whose sends never got an answer: its payment, if one of them made it, is
 * settled like a sent one; if Stripe has none, it stays pending until the give-up time (nothing is sent), then
 * fails like a refused payment — auto top-up off, `autotopup.failed` — so the user learns of it and the next
 * top-up is not blocked behind it. Had a payment been made after all, its webhook still credits the purchase.
 */
async function settleUnansweredAttempt(
  deps: AutoTopUpDeps,
  stripe: Stripe,
  attempt: AutoTopUpAttemptRow,
  purchase: PurchaseRow,
  giveUp: boolean,
  halted: boolean,
): Promise<AttemptResult> {
  const found = await stripe.paymentIntents.search({ query: `metadata['purchaseId']:'${purchase.id}'` });
  const intent = found.data.find((candidate) => candidate.metadata?.purchaseId === purchase.id);
  // A payment made is settled even when auto top-up was turned off since: the money was taken.
  if (intent) return settleSentPayment(deps, attempt, purchase, intent);
  if (!giveUp) return 'unknown';
  if (halted) {
    // Turned off, and no payment was made: closed as it would have been had it never been sent.
    await deps.db
      .transaction()
      .execute((trx) =>
        closeUnpaidAttempt(trx, attempt, { status: 'skipped', failureCode: 'auto_top_up_disabled' }),
      );
    return 'skipped';
  }
  await deps.db.transaction().execute((trx) =>
    recordAutoTopUpFailure(trx, attempt, {
      code: 'payment_provider_unavailable',
      message: `The payment provider did not answer for ${AUTO_TOP_UP_SEND_HOURS} hours; no payment was made`,
      paymentIntentId: null,
    }),
  );
  return 'failed';
}

/** The attempt's PaymentIntent exists: recorded, then credited or failed as it stands, or left to its webhook. */
async function settleSentPayment(
  deps: AutoTopUpDeps,
  attempt: AutoTopUpAttemptRow,
  purchase: PurchaseRow,
  intent: Stripe.PaymentIntent,
): Promise<AttemptResult> {
  await recordPurchaseStripeIds(deps.db, purchase.id, { stripe_payment_intent_id: intent.id });
  await markAutoTopUpProcessing(deps.db, attempt.id, intent.id);
  if (intent.status === 'succeeded') return creditedNow(deps.db, intent);
  if (
    intent.status === 'requires_action' ||
    intent.status === 'requires_payment_method' ||
    intent.status === 'canceled'
  ) {
    const codes = { requires_action: 'authentication_required', canceled: 'canceled' } as const;
    await deps.db.transaction().execute((trx) =>
      recordAutoTopUpFailure(trx, attempt, {
        code:
          intent.last_payment_error?.code ?? codes[intent.status as keyof typeof codes] ?? 'payment_failed',
        message: intent.last_payment_error?.message ?? null,
        paymentIntentId: intent.id,
      }),
    );
    return 'failed';
  }
  // processing: Stripe's webhook decides.
  return 'processing';
}
