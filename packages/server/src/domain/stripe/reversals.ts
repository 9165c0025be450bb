import {
  creditBalance,
  type Database,
  debitBalance,
  getPurchaseSettlement,
  insertReinstatement,
  insertReversal,
  LOT_DEFAULTS,
  lockBalance,
  type NewReversal,
  type PurchaseRow,
  purchaseLots,
  recordedRefunds,
  recordPurchaseStripeIds,
  recordReversalSettlement,
  reversalTotals,
  systemKeys,
} from '@mana-credits/db';
import type { Transaction } from 'kysely';
import type Stripe from 'stripe';
import { emitEvent } from '../events/emit.ts';
import { expireAccountLots, returnExpiredHolds } from '../spending.ts';
import { ignored, type WebhookOutcome } from './outcome.ts';

/** floor(credits × part / whole) in BigInt: credits × cents can pass 2^53. */
export function creditShare(credits: number, part: number, whole: number): number {
  return Number((BigInt(credits) * BigInt(part)) / BigInt(whole));
}

/**
 * charge.refunded: `amount_refunded` is cumulative, so the credits owed back for the charge are
 * credits × amount_refunded / amount, and this refund adds only what earlier refunds did not already claim.
 * Every new cumulative amount is recorded, even one whose own share adds no credit (5 cents of a 999-cent
 * purchase): the money it returned counts in the share of all the money returned (settleReversals). A stale
 * event (a cumulative amount not above the latest recorded, arriving late) records nothing.
 */
export async function applyRefund(
  trx: Transaction<Database>,
  purchase: PurchaseRow,
  charge: Stripe.Charge,
  eventId: string,
): Promise<WebhookOutcome> {
  if (!Number.isSafeInteger(charge.amount) || charge.amount <= 0)
    return ignored('charge without amount', purchase.id);
  const refunded = Math.min(Math.max(charge.amount_refunded, 0), charge.amount);
  const owed = creditShare(purchase.credits, refunded, charge.amount);
  const recorded = await recordedRefunds(trx, purchase.id);
  if (purchase.stripe_charge_id === null) {
    await recordPurchaseStripeIds(trx, purchase.id, { stripe_charge_id: charge.id });
  }
  if (refunded <= recorded.refundedCents)
    return ignored('refund already applied', purchase.id, { amountRefunded: refunded });
  return recordReversal(trx, purchase, {
    kind: 'refund',
    key: `refund:${charge.id}:${refunded}`,
    stripeObjectId: charge.id,
    eventId,
    amountCents: refunded,
    creditsDue: Math.max(owed - recorded.claimed, 0),
  });
}

/** charge.dispute.created: the disputed share of the purchase is taken back, once per dispute. */
export async function applyDispute(
  trx: Transaction<Database>,
  purchase: PurchaseRow,
  dispute: Stripe.Dispute,
  eventId: string,
): Promise<WebhookOutcome> {
  if (dispute.currency.toLowerCase() !== purchase.currency || purchase.price_euro_cents <= 0) {
    return ignored('dispute in another currency', purchase.id);
  }
  const disputed = Math.min(Math.max(dispute.amount, 0), purchase.price_euro_cents);
  return recordReversal(trx, purchase, {
    kind: 'dispute',
    key: `dispute:${dispute.id}`,
    stripeObjectId: dispute.id,
    eventId,
    amountCents: disputed,
    creditsDue: creditShare(purchase.credits, disputed, purchase.price_euro_cents),
  });
}

/**
 * charge.dispute.funds_reinstated (or closed as won): the merchant won, Stripe gave the money back, so the
 * dispute no longer claims anything and what it took is given back (settleReversals). Once per dispute; it
 * may come before the dispute's own event, which then takes nothing.
 */
export async function applyDisputeReinstated(
  trx: Transaction<Database>,
  purchase: PurchaseRow,
  dispute: Stripe.Dispute,
  eventId: string,
): Promise<WebhookOutcome> {
  const inserted = await insertReinstatement(trx, {
    purchaseId: purchase.id,
    key: `dispute:${dispute.id}`,
    stripeObjectId: dispute.id,
    eventId,
  });
  if (!inserted) return ignored('dispute already reinstated', purchase.id);
  const settled = await settleReversals(trx, purchase.id);
  return {
    result: 'applied',
    effect: 'reinstated',
    purchaseId: purchase.id,
    details: { kind: 'dispute', ...settled },
  };
}

type Reversal = Omit<NewReversal, 'purchaseId'>;

async function recordReversal(
  trx: Transaction<Database>,
  purchase: PurchaseRow,
  reversal: Reversal,
): Promise<WebhookOutcome> {
  const inserted = await insertReversal(trx, { purchaseId: purchase.id, ...reversal });
  if (!inserted) return ignored(`${reversal.kind} already applied`, purchase.id);
  const settled = await settleReversals(trx, purchase.id);
  return {
    result: 'applied',
    effect: 'reversed',
    purchaseId: purchase.id,
    details: { kind: reversal.kind, creditsDue: reversal.creditsDue, ...settled },
  };
}

/**
 * Brings what the purchase has taken back to what its refunds and disputes claim (at most its credits), but
 * only once the purchase was credited. Taking back: only spendable credits are taken (balance − reserved,
 * after the buyer's lapsed holds are returned; the balance never goes below zero), the purchase's own lots
 * first; the rest is recorded as unrecovered. Giving back (a dispute the merchant won claims no more): what
 * was recorded unrecovered is dropped first — the buyer still has it —, then credits taken are credited
 * back. The caller holds the purchase lock. Returns the credits moved: clawedBack < 0 when given back.
 */
export async function settleReversals(
  trx: Transaction<Database>,
  purchaseId: string,
): Promise<{ clawedBack: number; unrecovered: number }> {
  const purchase = await getPurchaseSettlement(trx, purchaseId);
  if (purchase.status !== 'completed') return { clawedBack: 0, unrecovered: 0 };
  const { claimed, returnedCents } = await reversalTotals(trx, purchaseId);
  // Each reversal's share is rounded down on its own; a refund and a dispute that together return all the
  // money would leave a credit behind. The share of all the money returned, rounded down once, is owed too.
  const price = purchase.price_euro_cents;
  const byMoney = price > 0 ? creditShare(purchase.credits, Math.min(returnedCents, price), price) : 0;
  const owed = Math.min(Math.max(claimed, byMoney), purchase.credits);
  const settled = purchase.clawed_back_credits + purchase.unrecovered_credits;
  if (owed < settled) return giveBack(trx, purchaseId, purchase, settled - owed);
  if (owed === settled) return { clawedBack: 0, unrecovered: 0 };

  // Holds whose time is up hold nothing any more: returned first, as every spend does, so their credits are
  // taken back rather than recorded unrecovered and handed back to the buyer by the next call. Credits whose
  // time is up are not there to take back: their expiry is posted first. What of this purchase's own credits
  // expired unspent was taken from the buyer already and counts toward what is owed: a refund of credits that
  // expired does not take the buyer's other credits instead. And the clawback takes the purchase's own
  // credits first (not the burn order, which spends grants first): otherwise its lot stays whole, expires
  // later, and that expiry counts again toward what was owed — the buyer losing more than the purchase.
  await returnExpiredHolds(trx, purchase.user_id);
  await expireAccountLots(trx, 'user', purchase.user_id);
  const { lotIds, expired } = await purchaseLots(trx, purchase.user_id, purchaseId);
  const outstanding = owed - expired - settled;
  if (outstanding <= 0) return { clawedBack: 0, unrecovered: 0 };
  const account = await lockBalance(trx, purchase.user_id);
  const spendable = account ? account.balance - account.reserved : 0;
  const clawedBack = Math.min(outstanding, spendable);
  const unrecovered = outstanding - clawedBack;
  const clawedAfter = purchase.clawed_back_credits + clawedBack;
  let transactionId: string | null = null;
  if (clawedBack > 0) {
    const posted = await debitBalance(
      trx,
      {
        userId: purchase.user_id,
        type: 'clawback',
        amount: clawedBack,
        description: `Credits taken back: purchase refunded or disputed`,
        metadata: { purchaseId },
        // Numbered by all the purchase ever took back (given back again included): never the same twice.
        idempotencyKey: systemKeys.clawback(purchaseId, clawedAfter + purchase.returned_credits),
      },
      'unearned',
      undefined,
      lotIds,
    );
    if (!posted) throw new Error('clawback could not debit a balance it holds locked');
    transactionId = posted.id;
  }
  await recordReversalSettlement(trx, purchaseId, {
    clawedBackCredits: clawedAfter,
    unrecoveredCredits: purchase.unrecovered_credits + unrecovered,
    returnedCredits: purchase.returned_credits,
  });
  await emitEvent(trx, {
    type: 'purchase.reversed',
    data: {
      userId: purchase.user_id,
      purchaseId,
      clawedBack,
      unrecovered,
      totalClawedBack: clawedAfter,
      totalUnrecovered: purchase.unrecovered_credits + unrecovered,
      transactionId,
    },
  });
  return { clawedBack, unrecovered };
}

/**
 * `excess` credits settled against the purchase are no longer owed: unrecovered ones are dropped first, then
 * clawed-back ones are credited back as a positive `clawback` row, in a lot with the purchase's expiry (a
 * paid lot that may have lapsed meanwhile: then it expires in this transaction, as the credits would have).
 */
async function giveBack(
  trx: Transaction<Database>,
  purchaseId: string,
  purchase: Awaited<ReturnType<typeof getPurchaseSettlement>>,
  excess: number,
): Promise<{ clawedBack: number; unrecovered: number }> {
  const forgiven = Math.min(purchase.unrecovered_credits, excess);
  const credited = excess - forgiven;
  const returnedAfter = purchase.returned_credits + credited;
  let transactionId: string | null = null;
  if (credited > 0) {
    const { expiresAt } = await purchaseLots(trx, purchase.user_id, purchaseId);
    const posted = await creditBalance(
      trx,
      {
        userId: purchase.user_id,
        type: 'clawback',
        amount: credited,
        description: 'Credits given back: dispute won',
        metadata: { purchaseId },
        idempotencyKey: systemKeys.clawbackReturn(purchaseId, returnedAfter),
      },
      { kind: 'new', source: 'purchase', ...LOT_DEFAULTS.purchase, expiresAt },
      'earned',
    );
    transactionId = posted.id;
    await expireAccountLots(trx, 'user', purchase.user_id, posted.id);
  }
  await recordReversalSettlement(trx, purchaseId, {
    clawedBackCredits: purchase.clawed_back_credits - credited,
    unrecoveredCredits: purchase.unrecovered_credits - forgiven,
    returnedCredits: returnedAfter,
  });
  await emitEvent(trx, {
    type: 'purchase.reinstated',
    data: {
      userId: purchase.user_id,
      purchaseId,
      givenBack: credited,
      forgiven,
      totalClawedBack: purchase.clawed_back_credits - credited,
      totalUnrecovered: purchase.unrecovered_credits - forgiven,
      transactionId,
    },
  });
  return { clawedBack: -credited, unrecovered: -forgiven };
}
