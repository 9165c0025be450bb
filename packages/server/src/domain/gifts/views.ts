import {
  type Database,
  hitRateLimit,
  listCreatedGifts,
  listReceivedGifts,
  type PageRequest,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { InvalidCursorError, NotFoundError, TooManyRequestsError } from '../errors.ts';
import { expireDueGifts, expireGiftIfDue } from './escrow.ts';
import { type GiftInfo, toGiftInfo, toOwnGift, toReceivedGift } from './mappers.ts';
import { findGiftByCode } from './redeem.ts';

const INFO_WINDOW_SECONDS = 60;

/**
 * The public view of a code, rate-limited per client address (shared by gifts.info and the landing page).
 * An unknown well-formed code costs the same work as a known one: one counter hit, one indexed lookup (a code
 * that cannot be one of ours is not looked up; see findGiftByCode).
 */
export async function giftInfo(
  db: Kysely<Database>,
  /** client: who the limit counts (an IPv4 address, an IPv6 client's /64: http/client-address.ts). */
  input: { code: string; client: string; limitPerMinute: number },
): Promise<GiftInfo> {
  const hits = await hitRateLimit(db, `gift-info\n${input.client}`, INFO_WINDOW_SECONDS);
  if (hits > input.limitPerMinute) {
    throw new TooManyRequestsError(
      'Too many gift lookups from this address; try again in a minute',
      undefined,
      {
        retryAfterSeconds: INFO_WINDOW_SECONDS,
      },
    );
  }
  let gift = await findGiftByCode(db, input.code);
  if (!gift) throw new NotFoundError('Gift', 'GIFT_NOT_FOUND');
  if (gift.status === 'active' && gift.due) {
    // Expiry on access, re-checked under the row lock; read again whoever expired it (a parallel lookup, a
    // redeem or the sweep may have been first: the row read above would still say active).
    await expireGiftIfDue(db, gift.id);
    gift = (await findGiftByCode(db, input.code)) ?? gift;
  }
  return toGiftInfo(gift);
}

/** The creator's gifts, newest first; overdue ones are expired first so their status is true. */
export async function myCreatedGifts(db: Kysely<Database>, userId: string, page: PageRequest) {
  await expireDueGifts(db, { creatorId: userId });
  const result = await listCreatedGifts(db, userId, page);
  if (!result) throw new InvalidCursorError('a gift of yours');
  return { items: result.items.map(toOwnGift), nextCursor: result.nextCursor };
}

/** The gifts a user has redeemed, newest first; the cursor is a redemption id. */
export async function myReceivedGifts(db: Kysely<Database>, userId: string, page: PageRequest) {
  const result = await listReceivedGifts(db, userId, page);
  if (!result) throw new InvalidCursorError('a gift you received');
  return { items: result.items.map(toReceivedGift), nextCursor: result.nextCursor };
}
