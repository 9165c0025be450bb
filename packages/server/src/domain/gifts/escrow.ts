import {
  closeActiveGift,
  creditBalance,
  type Database,
  type GiftRow,
  type JsonObject,
  LOT_DEFAULTS,
  type LotCredit,
  listDueGiftIds,
  lockGift,
  lotPortionsOfEntry,
  slicePortions,
  systemKeys,
} from '@mana-credits/db';
import type { Kysely, Transaction } from 'kysely';
import { effects } from '../effects.ts';
import { ForbiddenError, NotFoundError, PreconditionFailedError } from '../errors.ts';
import { emitEvent } from '../events/emit.ts';
import { markReplayed } from '../idempotency.ts';
import { expireAccountLots } from '../spending.ts';

type ClosedStatus = 'expired' | 'cancelled' | 'refunded';

const REFUND_DESCRIPTION: Record<ClosedStatus, string> = {
  expired: 'Gift expired: unclaimed credits returned',
  cancelled: 'Gift cancelled: unclaimed credits returned',
  refunded: 'Gift cancelled: unclaimed credits returned',
};

/**
 * Closes an active gift the caller has locked and returns its unclaimed escrow to the creator (ledger type
 * `refund`) in the caller's transaction. The status update is conditional, so even a caller that skipped
 * the lock could not refund twice. Returns the credits refunded.
 */
export async function releaseEscrow(
  trx: Transaction<Database>,
  gift: GiftRow,
  status: ClosedStatus,
  /** Added to the refund row's metadata (the operator console's who and why). */
  note?: JsonObject,
): Promise<number> {
  const unclaimed = gift.credits_per_portion * (gift.total_portions - gift.claimed_portions);
  if (!(await closeActiveGift(trx, gift.id, status, unclaimed))) return 0;
  let refundId: string | null = null;
  if (unclaimed > 0) {
    // The unclaimed credits are the end of the escrow: back to the lots they left, expiry unchanged (a gift
    // from before lots names none: a new promotional lot).
    const escrowed = gift.funding_transaction_id
      ? await lotPortionsOfEntry(trx, 'user', gift.funding_transaction_id)
      : [];
    const claimed = gift.credits_per_portion * gift.claimed_portions;
    const lots: LotCredit =
      escrowed.length > 0
        ? { kind: 'return', portions: slicePortions(escrowed, claimed, unclaimed) }
        : { kind: 'new', source: 'refund', ...LOT_DEFAULTS.refund, expiresAt: null };
    const refund = await creditBalance(
      trx,
      {
        userId: gift.creator_id,
        type: 'refund',
        amount: unclaimed,
        description: REFUND_DESCRIPTION[status],
        metadata: { ...note, giftId: gift.id },
        referenceTransactionId: gift.funding_transaction_id,
        idempotencyKey: systemKeys.giftRefund(gift.id),
      },
      lots,
      'unspent',
    );
    refundId = refund.id;
    await expireAccountLots(trx, 'user', gift.creator_id);
  }
  if (status === 'expired') {
    await emitEvent(trx, {
      type: 'gift.expired',
      data: {
        userId: gift.creator_id,
        giftId: gift.id,
        refunded: unclaimed,
        claimedPortions: gift.claimed_portions,
        totalPortions: gift.total_portions,
        transactionId: refundId,
      },
    });
  }
  return unclaimed;
}

/**
 * Expires one gift if it is active and past its expiry, refunding it, and says whether this call did. The
 * status is re-checked under the row lock, so racing callers refund once; the sweep skips rows another
 * instance holds rather than waiting for them.
 */
export async function expireGiftIfDue(
  db: Kysely<Database>,
  giftId: string,
  options: { skipLocked?: boolean } = {},
): Promise<boolean> {
  const refunded = await db.transaction().execute(async (trx) => {
    const gift = await lockGift(trx, giftId, options);
    if (gift?.status !== 'active' || !gift.due) return null;
    return releaseEscrow(trx, gift, 'expired');
  });
  if (refunded === null) return false;
  effects.giftExpired(refunded);
  return true;
}

/**
 * One pass of the expiry sweep: every active gift past its expiry (optionally only one creator's) is
 * expired and refunded, each in its own short transaction, so two sweeps never refund one gift twice.
 */
export async function expireDueGifts(
  db: Kysely<Database>,
  options: { creatorId?: string; limit?: number } = {},
): Promise<number> {
  const due = await listDueGiftIds(db, { creatorId: options.creatorId, limit: options.limit ?? 500 });
  let expired = 0;
  for (const id of due) {
    if (await expireGiftIfDue(db, id, { skipLocked: true })) expired++;
  }
  return expired;
}

export type CancelOutcome =
  | { ok: true; refunded: number; again?: true }
  | { ok: false; error: Error; expiredRefund?: number };

/**
 * Cancels a gift for its creator: the unclaimed escrow goes back (status `refunded` when nothing was
 * claimed, else `cancelled`). Cancelling an already cancelled gift answers what the first cancel refunded.
 * A gift found past its expiry is expired (and refunded) first; that commits before the refusal is thrown.
 */
export async function cancelGift(
  db: Kysely<Database>,
  input: { userId: string; giftId: string; note?: JsonObject | undefined },
): Promise<{ refunded: number }> {
  const outcome = await db.transaction().execute(async (trx): Promise<CancelOutcome> => {
    const gift = await lockGift(trx, input.giftId);
    if (!gift) throw new NotFoundError('Gift', 'GIFT_NOT_FOUND');
    if (gift.creator_id !== input.userId) {
      throw new ForbiddenError('Only the creator can cancel a gift', 'NOT_GIFT_CREATOR');
    }
    if (gift.status === 'cancelled' || gift.status === 'refunded') {
      return { ok: true, refunded: gift.refunded_credits, again: true };
    }
    if (gift.status === 'active' && gift.due) {
      return {
        ok: false,
        error: new PreconditionFailedError('The gift has expired; its credits were returned', 'GIFT_EXPIRED'),
        expiredRefund: await releaseEscrow(trx, gift, 'expired'),
      };
    }
    if (gift.status !== 'active') {
      throw new PreconditionFailedError(
        `Only active gifts can be cancelled (this one is ${gift.status})`,
        'GIFT_NOT_ACTIVE',
        {
          status: gift.status,
        },
      );
    }
    const closed = gift.claimed_portions === 0 ? 'refunded' : 'cancelled';
    const refunded = await releaseEscrow(trx, gift, closed, input.note);
    return { ok: true, refunded };
  });
  if (!outcome.ok) {
    if (outcome.expiredRefund !== undefined) effects.giftExpired(outcome.expiredRefund);
    throw outcome.error;
  }
  // Cancelling again answers what the first cancel refunded: a replay, for the metrics.
  return outcome.again ? markReplayed({ refunded: outcome.refunded }) : { refunded: outcome.refunded };
}
