import {
  type AutoTopUpAttemptRow,
  closeAutoTopUpAttempt,
  type Database,
  disableAutoTopUp,
  failPendingPurchase,
  lockPurchaseOfUser,
} from '@mana-credits/db';
import type { Transaction } from 'kysely';
import { emitEvent } from '../events/emit.ts';

export interface AutoTopUpFailure {
  /** Stripe's code (card_declined, authentication_required, …) or one of ours. */
  code: string;
  message: string | null;
  paymentIntentId: string | null;
}

/**
 * An automatic payment failed (the worker was refused, or Stripe's payment_intent.payment_failed came): the
 * attempt ends `failed` with the reason, its purchase is `failed` if still pending, auto top-up is turned
 * off — a failing card is never charged in a loop — and `autotopup.failed` is written, all in one
 * transaction. Only once per attempt: an attempt no longer in flight (the other path recorded its end) is
 * left as it is. True when this call recorded it. The purchase row is locked before the attempt, the order of
 * the webhook (which locks the purchase of its event, then comes here) and of a completed purchase: the worker
 * and payment_intent.payment_failed for the same decline, in the other order, deadlocked.
 */
export async function recordAutoTopUpFailure(
  trx: Transaction<Database>,
  attempt: Pick<AutoTopUpAttemptRow, 'id' | 'user_id' | 'package_id' | 'purchase_id'>,
  failure: AutoTopUpFailure,
): Promise<boolean> {
  const closed = await closeUnpaidAttempt(trx, attempt, {
    status: 'failed',
    paymentIntentId: failure.paymentIntentId,
    failureCode: failure.code,
    failureMessage: failure.message,
  });
  if (!closed) return false;
  await disableAutoTopUp(trx, attempt.user_id, `payment failed: ${failure.code}`);
  await emitEvent(trx, {
    type: 'autotopup.failed',
    data: {
      userId: attempt.user_id,
      attemptId: attempt.id,
      purchaseId: attempt.purchase_id,
      packageId: attempt.package_id,
      reason: failure.code,
      message: failure.message,
      paymentIntentId: failure.paymentIntentId,
    },
  });
  return true;
}

/**
 * Ends an attempt in flight that paid nothing (`failed`, or `skipped` when auto top-up was turned off), and
 * fails its purchase if still pending: the purchase row locked before the attempt (see recordAutoTopUpFailure).
 * True when this call ended it.
 */
export async function closeUnpaidAttempt(
  trx: Transaction<Database>,
  attempt: Pick<AutoTopUpAttemptRow, 'id' | 'user_id' | 'purchase_id'>,
  end: Parameters<typeof closeAutoTopUpAttempt>[2] & { status: 'failed' | 'skipped' },
): Promise<boolean> {
  if (attempt.purchase_id) await lockPurchaseOfUser(trx, attempt.user_id, attempt.purchase_id);
  const closed = (await closeAutoTopUpAttempt(trx, attempt.id, end)) !== undefined;
  if (closed && attempt.purchase_id) await failPendingPurchase(trx, attempt.purchase_id);
  return closed;
}
