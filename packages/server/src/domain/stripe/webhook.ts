import {
  autoTopUpAttemptOfPurchase,
  closeUnpaidPurchase,
  creditBalance,
  type Database,
  forgetAutoTopUpCard,
  LOT_DEFAULTS,
  lockPurchaseByStripeId,
  lockPurchaseOfUser,
  markPurchaseCompleted,
  type PurchaseRow,
  recordPurchaseStripeIds,
  recordStripeEvent,
  recordUnmatchedPayment,
  type StripeIdColumn,
  saveAutoTopUpCard,
  succeedAutoTopUpOfPurchase,
  systemKeys,
} from '@mana-credits/db';
import type { Kysely, Transaction } from 'kysely';
import type Stripe from 'stripe';
import { emitEvent } from '../events/emit.ts';
import { recordAutoTopUpFailure } from './auto-top-up-failure.ts';
import { AMOUNT_MISMATCH, ignored, type WebhookOutcome } from './outcome.ts';
import { applyDispute, applyDisputeReinstated, applyRefund, settleReversals } from './reversals.ts';

/** The metadata `purpose` of the SetupIntents that save an auto top-up card. */
export const AUTO_TOP_UP_PURPOSE = 'auto_top_up';

const idOf = (value: string | { id: string } | null | undefined) =>
  typeof value === 'string' ? value : (value?.id ?? null);

/**
 * Applies one verified Stripe event exactly once. The event id is inserted in the same transaction as the
 * effect: a redelivery (or a concurrent copy, which waits on the primary key) finds it and does nothing, and
 * an error rolls both back so Stripe's retry starts clean.
 */
export interface StripeLookups {
  /**
   * The metadata of a PaymentIntent, asked of Stripe: a refund or dispute may arrive for a purchase whose
   * PaymentIntent id we never stored (its creation answer was lost), and only the intent's metadata names
   * the purchase then. Absent = such events are not ours.
   */
  intentMetadata?: (intentId: string) => Promise<Stripe.Metadata | null>;
  /**
   * The card of a saved payment method (auto top-up shows its brand and last 4 digits); null when it is no
   * longer attached to the customer (detached meanwhile).
   */
  paymentMethodCard?: (
    paymentMethodId: string,
    customerId: string | null,
  ) => Promise<{ card: { brand: string; last4: string } | null } | null>;
}

/**
 * Credits the purchase a succeeded PaymentIntent pays for, in the caller's transaction: the one path every
 * payment is credited by — the webhook's payment_intent.succeeded, and an automatic payment Stripe answered
 * `succeeded` at once (creditPaidIntent).
 */
async function applyPaidIntent(
  trx: Transaction<Database>,
  intent: Stripe.PaymentIntent,
): Promise<WebhookOutcome> {
  const purchase = await lockPurchaseOf(trx, intent.metadata, ['stripe_payment_intent_id', intent.id]);
  if (!purchase) return ignored('not our payment');
  if (purchase.stripe_payment_intent_id && purchase.stripe_payment_intent_id !== intent.id) {
    return ignored('payment intent of another purchase', purchase.id);
  }
  return completePurchase(trx, purchase, {
    amount: intent.amount_received,
    currency: intent.currency,
    paymentIntentId: intent.id,
    checkoutSessionId: null,
    chargeId: idOf(intent.latest_charge),
  });
}

/** A PaymentIntent Stripe answered `succeeded`, credited through the webhook's own path (once, whichever is first). */
export async function creditPaidIntent(
  db: Kysely<Database>,
  intent: Stripe.PaymentIntent,
): Promise<WebhookOutcome> {
  if (intent.status !== 'succeeded') return ignored(`payment intent is ${intent.status}`);
  return db.transaction().execute((trx) => applyPaidIntent(trx, intent));
}

export async function applyStripeEvent(
  db: Kysely<Database>,
  event: Stripe.Event,
  lookups: StripeLookups = {},
): Promise<WebhookOutcome> {
  // A type added here goes into HANDLED_STRIPE_EVENTS (event-shape.ts) too, so its object is checked first.
  switch (event.type) {
    case 'payment_intent.succeeded': {
      const intent = event.data.object;
      return inEventTransaction(db, event, (trx) => applyPaidIntent(trx, intent));
    }
    case 'checkout.session.completed':
    case 'checkout.session.async_payment_succeeded': {
      const session = event.data.object;
      return inEventTransaction(db, event, async (trx) => {
        const purchase = await lockPurchaseOfSession(trx, session);
        if (!purchase) return ignored('not our checkout session');
        // SEPA and other delayed methods complete the session unpaid; async_payment_succeeded follows.
        if (session.payment_status !== 'paid') return ignored('session not paid yet', purchase.id);
        return completePurchase(trx, purchase, {
          amount: session.amount_total,
          currency: session.currency,
          paymentIntentId: idOf(session.payment_intent),
          checkoutSessionId: session.id,
          chargeId: null,
        });
      });
    }
    case 'payment_intent.payment_failed': {
      const intent = event.data.object;
      return inEventTransaction(db, event, async (trx) => {
        const purchase = await lockPurchaseOf(trx, intent.metadata, ['stripe_payment_intent_id', intent.id]);
        if (!purchase) return ignored('not our payment');
        const outcome = await closeUnpaid(trx, purchase, 'failed');
        // An automatic payment that failed turns auto top-up off (once, whoever records it first).
        const attempt = await autoTopUpAttemptOfPurchase(trx, purchase.id);
        if (attempt && purchase.status !== 'completed') {
          await recordAutoTopUpFailure(trx, attempt, {
            code: intent.last_payment_error?.code ?? 'payment_failed',
            message: intent.last_payment_error?.message ?? null,
            paymentIntentId: intent.id,
          });
        }
        return outcome;
      });
    }
    case 'setup_intent.succeeded': {
      const setup = event.data.object;
      const userId = setup.metadata?.userId;
      const paymentMethodId = idOf(setup.payment_method);
      if (setup.metadata?.purpose !== AUTO_TOP_UP_PURPOSE || !userId || !paymentMethodId)
        return ignored('not an auto top-up card');
      // Asked of Stripe before the transaction: nothing is locked during the call.
      const method = lookups.paymentMethodCard
        ? await lookups.paymentMethodCard(paymentMethodId, idOf(setup.customer))
        : { card: null };
      const card = method?.card;
      return inEventTransaction(db, event, async (trx) => {
        // Detached by the time we asked (payment_method.detached may have come first): no card to charge.
        if (!method) return ignored('payment method no longer attached to the customer');
        const saved = await saveAutoTopUpCard(trx, {
          userId,
          setupIntentId: setup.id,
          paymentMethodId,
          brand: card?.brand ?? null,
          last4: card?.last4 ?? null,
        });
        if (!saved) return ignored('not the latest auto top-up setup');
        return { result: 'applied', effect: 'card_saved', details: { userId, paymentMethodId } };
      });
    }
    case 'payment_method.detached': {
      const paymentMethod = event.data.object;
      return inEventTransaction(db, event, async (trx) => {
        const users = await forgetAutoTopUpCard(trx, paymentMethod.id, 'payment method removed in Stripe');
        if (users.length === 0) return ignored('not an auto top-up card');
        return { result: 'applied', effect: 'card_removed', details: { users } };
      });
    }
    case 'checkout.session.async_payment_failed':
    case 'checkout.session.expired': {
      const session = event.data.object;
      return inEventTransaction(db, event, async (trx) => {
        const purchase = await lockPurchaseOfSession(trx, session);
        if (!purchase) return ignored('not our checkout session');
        return closeUnpaid(trx, purchase, event.type === 'checkout.session.expired' ? 'cancelled' : 'failed');
      });
    }
    case 'charge.refunded': {
      const charge = event.data.object;
      return inEventTransaction(db, event, async (trx) => {
        const purchase =
          (await lockPurchaseByStripeId(trx, 'stripe_charge_id', charge.id)) ??
          (await lockPurchaseOfIntent(trx, idOf(charge.payment_intent), lookups));
        if (!purchase) return ignored('not our charge');
        return applyRefund(trx, purchase, charge, event.id);
      });
    }
    case 'charge.dispute.created':
    case 'charge.dispute.funds_withdrawn': {
      const dispute = event.data.object;
      // An inquiry (warning_* statuses) withdraws nothing and mostly closes without a chargeback; if it
      // escalates, Stripe withdraws the funds and says so with funds_withdrawn. The dispute's id keys its
      // reversal, so a chargeback announced by both events is taken back once.
      if (event.type === 'charge.dispute.created' && dispute.status.startsWith('warning_')) {
        return inEventTransaction(db, event, async () => ignored('an inquiry: no funds withdrawn'));
      }
      return inEventTransaction(db, event, async (trx) => {
        const purchase = await lockPurchaseOfDispute(trx, dispute, lookups);
        if (!purchase) return ignored('not our charge');
        return applyDispute(trx, purchase, dispute, event.id);
      });
    }
    case 'charge.dispute.funds_reinstated':
    case 'charge.dispute.closed': {
      const dispute = event.data.object;
      // Won: Stripe gave the disputed money back (funds_reinstated; closed as won says it too, and an inquiry
      // closed as won never took anything). Lost or closed otherwise: the money stays with the buyer.
      if (event.type === 'charge.dispute.closed' && dispute.status !== 'won') {
        return inEventTransaction(db, event, async () => ignored(`dispute closed ${dispute.status}`));
      }
      return inEventTransaction(db, event, async (trx) => {
        const purchase = await lockPurchaseOfDispute(trx, dispute, lookups);
        if (!purchase) return ignored('not our charge');
        return applyDisputeReinstated(trx, purchase, dispute, event.id);
      });
    }
    default:
      return ignored(`unhandled event type ${event.type}`);
  }
}

async function inEventTransaction(
  db: Kysely<Database>,
  event: Stripe.Event,
  apply: (trx: Transaction<Database>) => Promise<WebhookOutcome>,
): Promise<WebhookOutcome> {
  return db.transaction().execute(async (trx) => {
    if (!(await recordStripeEvent(trx, event))) return { result: 'duplicate' } satisfies WebhookOutcome;
    return apply(trx);
  });
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * The purchase a Stripe object belongs to, locked: by the id we stored, or else by the metadata we put on
 * the object (the webhook may come before we stored the id, and a Session's PaymentIntent is created later).
 */
async function lockPurchaseOf(
  trx: Transaction<Database>,
  metadata: Stripe.Metadata | null,
  [column, value]: [StripeIdColumn, string],
): Promise<PurchaseRow | undefined> {
  const byId = await lockPurchaseByStripeId(trx, column, value);
  if (byId) return byId;
  const purchaseId = metadata?.purchaseId;
  const userId = metadata?.userId;
  if (!purchaseId || !UUID.test(purchaseId) || !userId) return undefined;
  const byMetadata = await lockPurchaseOfUser(trx, userId, purchaseId);
  // A purchase already tied to another object of this kind is not this one's.
  return byMetadata && (byMetadata[column] === null || byMetadata[column] === value) ? byMetadata : undefined;
}

/** The purchase a dispute is about (locked): by its charge, or else by its PaymentIntent. */
async function lockPurchaseOfDispute(
  trx: Transaction<Database>,
  dispute: Stripe.Dispute,
  lookups: StripeLookups,
): Promise<PurchaseRow | undefined> {
  const chargeId = idOf(dispute.charge);
  return (
    (chargeId ? await lockPurchaseByStripeId(trx, 'stripe_charge_id', chargeId) : undefined) ??
    (await lockPurchaseOfIntent(trx, idOf(dispute.payment_intent), lookups))
  );
}

/**
 * The purchase of a charge's PaymentIntent: by the intent id we stored, or else by the metadata Stripe has on
 * the intent (asked only when we know nothing of the intent: a reversal may overtake the payment event of a
 * purchase whose intent id was never stored). Nothing is locked during the call but the event's own row.
 */
async function lockPurchaseOfIntent(
  trx: Transaction<Database>,
  intentId: string | null,
  lookups: StripeLookups,
): Promise<PurchaseRow | undefined> {
  if (!intentId) return undefined;
  const byId = await lockPurchaseByStripeId(trx, 'stripe_payment_intent_id', intentId);
  if (byId || !lookups.intentMetadata) return byId;
  return lockPurchaseOf(trx, await lookups.intentMetadata(intentId), ['stripe_payment_intent_id', intentId]);
}

function lockPurchaseOfSession(trx: Transaction<Database>, session: Stripe.Checkout.Session) {
  return lockPurchaseOf(trx, session.metadata, ['stripe_checkout_session_id', session.id]);
}

interface Payment {
  amount: number | null;
  currency: string | null;
  paymentIntentId: string | null;
  checkoutSessionId: string | null;
  chargeId: string | null;
}

/**
 * Credits a paid purchase once: the row is locked and its status checked, and the ledger row carries the
 * purchase's system key, so no second event for the same payment can credit it again. A purchase marked
 * failed or cancelled is still completed: the money arrived. Refunds or disputes recorded before the payment was
 * confirmed are settled right after the credit.
 */
async function completePurchase(
  trx: Transaction<Database>,
  purchase: PurchaseRow,
  payment: Payment,
): Promise<WebhookOutcome> {
  if (payment.amount !== purchase.price_euro_cents || payment.currency?.toLowerCase() !== purchase.currency) {
    // Money received for nothing we can credit: kept on the purchase, where the buyer and the operator see it.
    await recordUnmatchedPayment(trx, purchase.id, {
      amount: payment.amount,
      currency: payment.currency,
      paymentIntentId: payment.paymentIntentId,
      checkoutSessionId: payment.checkoutSessionId,
      receivedAt: new Date().toISOString(),
    });
    return ignored(AMOUNT_MISMATCH, purchase.id, {
      expected: { amount: purchase.price_euro_cents, currency: purchase.currency },
      paid: { amount: payment.amount, currency: payment.currency },
    });
  }
  const ids = {
    stripe_payment_intent_id: purchase.stripe_payment_intent_id ?? payment.paymentIntentId,
    stripe_checkout_session_id: purchase.stripe_checkout_session_id ?? payment.checkoutSessionId,
    stripe_charge_id: purchase.stripe_charge_id ?? payment.chargeId,
  };
  if (purchase.status === 'completed') {
    await recordPurchaseStripeIds(trx, purchase.id, ids);
    return ignored('purchase already completed', purchase.id);
  }
  const posted = await creditBalance(
    trx,
    {
      userId: purchase.user_id,
      type: 'purchase',
      amount: purchase.credits,
      description: `Purchase of ${purchase.credits} credits`,
      metadata: {
        purchaseId: purchase.id,
        ...(purchase.package_id ? { packageId: purchase.package_id } : {}),
      },
      idempotencyKey: systemKeys.purchaseCredit(purchase.id),
    },
    {
      kind: 'new',
      source: 'purchase',
      ...LOT_DEFAULTS.purchase,
      // The package's validity as it was sold, counted from the payment.
      expiresAt:
        purchase.validity_days === null ? null : new Date(Date.now() + purchase.validity_days * 86_400_000),
    },
    'earned',
  );
  await markPurchaseCompleted(trx, purchase.id, ids);
  const attempt = await succeedAutoTopUpOfPurchase(trx, purchase.id, ids.stripe_payment_intent_id);
  await emitEvent(trx, {
    type: 'purchase.completed',
    data: {
      userId: purchase.user_id,
      purchaseId: purchase.id,
      packageId: purchase.package_id,
      credits: purchase.credits,
      priceEuroCents: purchase.price_euro_cents,
      currency: purchase.currency,
      transactionId: posted.id,
      auto: attempt !== undefined,
    },
  });
  const settled = await settleReversals(trx, purchase.id);
  return {
    result: 'applied',
    effect: 'completed',
    purchaseId: purchase.id,
    details: { transactionId: posted.id, credits: purchase.credits, ...settled },
  };
}

/** A failure or expiry only closes a purchase that is still pending: it never undoes a completed one. */
async function closeUnpaid(
  trx: Transaction<Database>,
  purchase: PurchaseRow,
  status: 'failed' | 'cancelled',
): Promise<WebhookOutcome> {
  if (purchase.status !== 'pending') return ignored(`purchase is already ${purchase.status}`, purchase.id);
  await closeUnpaidPurchase(trx, purchase.id, status);
  return { result: 'applied', effect: status, purchaseId: purchase.id };
}
