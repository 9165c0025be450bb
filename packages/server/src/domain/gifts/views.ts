import { type Database, hitRateLimit, newestFirst, type PageRequest } from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { InvalidCursorError, NotFoundError, TooManyRequestsError } from '../errors.ts';
import { displayGiftCode } from './codes.ts';
import { expireDueGifts, expireGiftIfDue } from './escrow.ts';
import { type GiftInfo, toGiftInfo, toOwnGift } from './mappers.ts';
import { findGiftByCode } from './redeem.ts';

const INFO_WINDOW_SECONDS = 60;

/**
 * The public view of a code, rate-limited per client address (shared by gifts.info and the landing page).
 * An unknown well-formed code costs the same work as a known one: one counter hit, one indexed lookup (a code
 * that cannot be one of ours is not looked up; see findGiftByCode).
 */
export async function giftInfo(
  db: Kysely<Database>,
  input: { code: string; clientIp: string; limitPerMinute: number },
): Promise<GiftInfo> {
  const hits = await hitRateLimit(db, `gift-info\n${input.clientIp}`, INFO_WINDOW_SECONDS);
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
    // Expiry on access, re-checked under the row lock.
    if (await expireGiftIfDue(db, gift.id)) gift = (await findGiftByCode(db, input.code)) ?? gift;
  }
  return toGiftInfo(gift);
}

/** The creator's gifts, newest first; overdue ones are expired first so their status is true. */
export async function myCreatedGifts(db: Kysely<Database>, userId: string, page: PageRequest) {
  await expireDueGifts(db, { creatorId: userId });
  const result = await newestFirst(
    db.selectFrom('gifts.gift_codes').selectAll().where('creator_id', '=', userId),
    { table: 'gifts.gift_codes', idOf: (row) => row.id },
    page,
  );
  if (!result) throw new InvalidCursorError('a gift of yours');
  return { items: result.items.map(toOwnGift), nextCursor: result.nextCursor };
}

/** The gifts a user has redeemed, newest first; the cursor is a redemption id. */
export async function myReceivedGifts(db: Kysely<Database>, userId: string, page: PageRequest) {
  const result = await newestFirst(
    db
      .selectFrom('gifts.gift_redemptions as r')
      .innerJoin('gifts.gift_codes as g', 'g.id', 'r.gift_code_id')
      .select([
        'r.id as redemptionId',
        'g.id as giftId',
        'g.code',
        'g.type',
        'r.credits_received as creditsReceived',
        'g.message',
        'g.creator_name as creatorName',
        'r.created_at as redeemedAt',
      ])
      .where('r.redeemer_user_id', '=', userId)
      .where('r.status', '=', 'success'),
    { table: 'gifts.gift_redemptions', alias: 'r', idOf: (row) => row.redemptionId },
    page,
  );
  if (!result) throw new InvalidCursorError('a gift you received');
  return {
    items: result.items.map((row) => ({ ...row, code: displayGiftCode(row.code) })),
    nextCursor: result.nextCursor,
  };
}
