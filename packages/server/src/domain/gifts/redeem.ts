import {
  type Database,
  type DatedGift,
  findGiftByCanonicalCode,
  type GiftRow,
  hasRedeemedGift,
  LOT_DEFAULTS,
  type LockedGift,
  type LotCredit,
  listPendingGiftsFor,
  lockGift,
  lockRedeemAttempts,
  lotPortionsOfEntry,
  type RedemptionStatus,
  recentFailedRedemptions,
  recordRedemption,
  slicePortions,
  systemKeys,
  takeGiftPortion,
} from '@mana-credits/db';
import type { Kysely, Transaction } from 'kysely';
import { creditEarned } from '../credits/balance-limit.ts';
import { effects } from '../effects.ts';
import {
  ConflictError,
  DomainError,
  ForbiddenError,
  InvalidRequestError,
  NotFoundError,
  PreconditionFailedError,
  TooManyRequestsError,
} from '../errors.ts';
import { emitEvent } from '../events/emit.ts';
import { certainlyNotCommitted } from '../outcome.ts';
import { expireAccountLots } from '../spending.ts';
import { isCanonicalGiftCode, normaliseGiftCode } from './codes.ts';
import { releaseEscrow } from './escrow.ts';
import { verifyRiddleAnswer } from './riddle.ts';

/** Failed attempts one user may make on one gift within the window before being throttled. */
export const MAX_FAILED_ATTEMPTS = 5;
export const FAILED_ATTEMPT_WINDOW_SECONDS = 15 * 60;

export interface Redeemer {
  id: string;
  email: string | null;
  /** From the token's email_verified claim; false refuses personalized gifts, null/absent = not stated. */
  emailVerified?: boolean | null | undefined;
}

export interface RedeemInput {
  code: string;
  riddleAnswer?: string | undefined;
  sourceAppId?: string | undefined;
}

export interface RedeemResult {
  giftId: string;
  creditsReceived: number;
  balance: number;
}

/** `expiredRefund`: the gift was found past its expiry and its escrow returned on the way (committed). */
type Attempt = { ok: true; result: RedeemResult } | { ok: false; error: DomainError; expiredRefund?: number };

/**
 * A gift by its code as typed, with whether its expiry has passed by the database clock. A code that cannot be
 * one of ours (wrong length or symbols) is not looked up.
 */
export async function findGiftByCode(db: Kysely<Database>, code: string): Promise<DatedGift | undefined> {
  const canonical = normaliseGiftCode(code);
  if (!isCanonicalGiftCode(canonical)) return undefined;
  return findGiftByCanonicalCode(db, canonical);
}

/** Redeems a code for a signed-in user. */
export async function redeemGift(
  db: Kysely<Database>,
  redeemer: Redeemer,
  input: RedeemInput,
): Promise<RedeemResult> {
  const gift = await findGiftByCode(db, input.code);
  if (!gift) throw new NotFoundError('Gift', 'GIFT_NOT_FOUND');
  if (gift.type === 'riddle' && input.riddleAnswer === undefined) {
    throw new InvalidRequestError('riddleAnswer: required for a riddle gift', 'VALIDATION', {
      field: 'riddleAnswer',
    });
  }
  return claimGift(db, gift, redeemer, input);
}

/**
 * One attempt to claim a portion. Attempts of one user on one gift are serialised by an advisory lock, so
 * the failure count that throttles guessing is exact even under parallel requests and across instances; the
 * slow riddle check runs under that lock but before the gift row is locked, so other users are not held
 * up. Under the gift row lock: expiry on access, already claimed, status, recipient, answer, then the claim.
 * A refusal is recorded as a redemption row and committed before it is thrown.
 */
export async function claimGift(
  db: Kysely<Database>,
  gift: GiftRow,
  redeemer: Redeemer,
  input: Omit<RedeemInput, 'code'>,
  /** false for a claim the service starts (redeemPending): the throttle is for what a user tries. */
  throttled = true,
): Promise<RedeemResult> {
  if (gift.creator_id === redeemer.id) {
    throw new ForbiddenError('You cannot redeem your own gift', 'OWN_GIFT');
  }
  const attempt = await db.transaction().execute(async (trx): Promise<Attempt> => {
    await lockRedeemAttempts(trx, gift.id, redeemer.id);
    if (throttled) await refuseWhenThrottled(trx, gift.id, redeemer.id);
    const answerCorrect =
      gift.type !== 'riddle' ||
      (gift.riddle_answer_hash !== null &&
        (await verifyRiddleAnswer(input.riddleAnswer ?? '', gift.riddle_answer_hash)));

    const locked = await lockGift(trx, gift.id);
    if (!locked) throw new NotFoundError('Gift', 'GIFT_NOT_FOUND');
    const refusal = await refusalOf(trx, locked, redeemer, answerCorrect);
    if (refusal) {
      await recordRedemption(trx, {
        giftId: gift.id,
        userId: redeemer.id,
        status: refusal.status,
        sourceAppId: input.sourceAppId ?? null,
      });
      return { ok: false, error: refusal.error, expiredRefund: refusal.expiredRefund };
    }
    return { ok: true, result: await claimPortion(trx, locked, redeemer, input.sourceAppId) };
  });
  if (!attempt.ok) {
    if (attempt.expiredRefund !== undefined) effects.giftExpired(attempt.expiredRefund);
    throw attempt.error;
  }
  return attempt.result;
}

async function refuseWhenThrottled(trx: Transaction<Database>, giftId: string, userId: string) {
  const { failures, retryAfterSeconds } = await recentFailedRedemptions(
    trx,
    giftId,
    userId,
    FAILED_ATTEMPT_WINDOW_SECONDS,
  );
  if (failures >= MAX_FAILED_ATTEMPTS) {
    throw new TooManyRequestsError(
      'Too many failed attempts on this gift; try again later',
      'TOO_MANY_ATTEMPTS',
      {
        retryAfterSeconds: Math.max(1, retryAfterSeconds ?? 1),
      },
    );
  }
}

async function refusalOf(
  trx: Transaction<Database>,
  gift: LockedGift,
  redeemer: Redeemer,
  answerCorrect: boolean,
): Promise<{
  status: Exclude<RedemptionStatus, 'success'>;
  error: DomainError;
  expiredRefund?: number;
} | null> {
  // Expiry on access: the refund commits with the refusal.
  const expiredRefund =
    gift.status === 'active' && gift.due ? await releaseEscrow(trx, gift, 'expired') : undefined;
  const status = gift.status === 'active' && gift.due ? 'expired' : gift.status;
  if (await hasRedeemedGift(trx, gift.id, redeemer.id)) {
    return {
      status: 'failed_already_claimed',
      error: new ConflictError('You have already redeemed this gift', 'ALREADY_CLAIMED'),
      expiredRefund,
    };
  }
  if (status === 'expired') {
    return {
      status: 'failed_expired',
      error: new PreconditionFailedError('This gift has expired', 'GIFT_EXPIRED'),
      expiredRefund,
    };
  }
  if (status === 'cancelled' || status === 'refunded') {
    return {
      status: 'failed_expired',
      error: new PreconditionFailedError('This gift was cancelled by its creator', 'GIFT_CANCELLED'),
    };
  }
  if (status === 'depleted') {
    return {
      status: 'failed_depleted',
      error: new ConflictError('Every portion of this gift has been claimed', 'GIFT_DEPLETED'),
    };
  }
  // Checked before the address, so that an unverified caller learns nothing about whom the gift is for.
  if (gift.type === 'personalized' && redeemer.emailVerified === false) {
    return {
      status: 'failed_wrong_user',
      error: new ForbiddenError(
        'Verify your email address to redeem a gift meant for it',
        'EMAIL_NOT_VERIFIED',
      ),
    };
  }
  if (
    gift.type === 'personalized' &&
    (!redeemer.email ||
      !gift.target_email ||
      redeemer.email.toLowerCase() !== gift.target_email.toLowerCase())
  ) {
    return {
      status: 'failed_wrong_user',
      error: new ForbiddenError('This gift is meant for someone else', 'NOT_GIFT_RECIPIENT'),
    };
  }
  if (!answerCorrect) {
    return { status: 'failed_wrong_answer', error: new ForbiddenError('Wrong answer', 'WRONG_ANSWER') };
  }
  return null;
}

/** Takes the next portion of a locked, active gift and credits it to the redeemer (ledger type `gift`). */
async function claimPortion(
  trx: Transaction<Database>,
  gift: LockedGift,
  redeemer: Redeemer,
  sourceAppId: string | undefined,
): Promise<RedeemResult> {
  const portion = await takeGiftPortion(trx, gift.id);
  // The portion's credits keep the expiry of the escrowed credits they are (portion n is the n-th slice of
  // the escrow) and arrive as promotional; a gift from before lots names no lots: a new promotional lot.
  const escrowed = gift.funding_transaction_id
    ? await lotPortionsOfEntry(trx, 'user', gift.funding_transaction_id)
    : [];
  const lots: LotCredit =
    escrowed.length > 0
      ? {
          kind: 'mirror',
          source: 'gift',
          portions: slicePortions(
            escrowed,
            (portion - 1) * gift.credits_per_portion,
            gift.credits_per_portion,
          ),
          demote: true,
        }
      : { kind: 'new', source: 'gift', ...LOT_DEFAULTS.gift, expiresAt: null };
  const credit = await creditEarned(
    trx,
    {
      userId: redeemer.id,
      type: 'gift',
      amount: gift.credits_per_portion,
      appId: sourceAppId,
      description: 'Gift redeemed',
      metadata: { giftId: gift.id },
      idempotencyKey: systemKeys.giftRedemption(gift.id, portion),
    },
    lots,
  );
  // Credits of a lapsed lot arrive already expired: the answer's balance is what is spendable after that.
  const expired = await expireAccountLots(trx, 'user', redeemer.id, credit.id);
  await recordRedemption(trx, {
    giftId: gift.id,
    userId: redeemer.id,
    status: 'success',
    creditsReceived: gift.credits_per_portion,
    portionNumber: portion,
    creditTransactionId: credit.id,
    sourceAppId: sourceAppId ?? null,
  });
  await emitEvent(trx, {
    type: 'gift.redeemed',
    data: {
      userId: gift.creator_id,
      giftId: gift.id,
      redeemedBy: redeemer.id,
      credits: gift.credits_per_portion,
      portion,
      totalPortions: gift.total_portions,
      transactionId: credit.id,
    },
  });
  return { giftId: gift.id, creditsReceived: gift.credits_per_portion, balance: credit.available - expired };
}

/**
 * Redeems every active personalized gift addressed to `email` for a user who just registered. Gifts the
 * user already holds are not attempted again, so a second call redeems nothing.
 */
export async function redeemPendingGifts(
  db: Kysely<Database>,
  redeemer: { id: string; email: string },
): Promise<{ redeemed: number; totalCredits: number }> {
  const pending = await listPendingGiftsFor(db, redeemer.email, redeemer.id);
  let redeemed = 0;
  let totalCredits = 0;
  for (const gift of pending) {
    try {
      // Not throttled: the attempts the user made before verifying the address (each refused, counted) must
      // not keep their gift from them now that it is verified.
      const result = await claimGift(db, gift, redeemer, {}, false);
      redeemed++;
      totalCredits += result.creditsReceived;
    } catch (error) {
      // Claimed meanwhile by a parallel call, or closed since the query: not this user's to redeem now. An
      // unknown outcome (the claim may have committed) fails the call; a repeat skips gifts already held.
      if (!(error instanceof DomainError) || !certainlyNotCommitted(error)) throw error;
    }
  }
  return { redeemed, totalCredits };
}
