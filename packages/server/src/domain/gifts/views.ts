import { type Database, hitRateLimit } from '@mana-credits/db';
import { type Kysely, sql } from 'kysely';
import { InvalidRequestError, NotFoundError, TooManyRequestsError } from '../errors.ts';
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

interface Page {
  limit: number;
  cursor?: string | undefined;
}

/** The creator's gifts, newest first; overdue ones are expired first so their status is true. */
export async function myCreatedGifts(db: Kysely<Database>, userId: string, page: Page) {
  await expireDueGifts(db, { creatorId: userId });
  let query = db
    .selectFrom('gifts.gift_codes')
    .selectAll()
    .where('creator_id', '=', userId)
    .orderBy('created_at', 'desc')
    .orderBy('id', 'desc')
    .limit(page.limit + 1);
  if (page.cursor) {
    const anchor = await db
      .selectFrom('gifts.gift_codes')
      .select(['created_at', 'id'])
      .where('id', '=', page.cursor)
      .where('creator_id', '=', userId)
      .executeTakeFirst();
    if (!anchor) throw new InvalidRequestError('cursor: does not name a gift of yours', 'INVALID_CURSOR');
    query = query.where(
      sql<boolean>`(created_at, id) < (select a.created_at, a.id from gifts.gift_codes a where a.id = ${page.cursor}::uuid)`,
    );
  }
  const rows = await query.execute();
  const items = rows.slice(0, page.limit);
  return {
    items: items.map(toOwnGift),
    nextCursor: rows.length > page.limit ? (items[items.length - 1]?.id ?? null) : null,
  };
}

/** The gifts a user has redeemed, newest first; the cursor is a redemption id. */
export async function myReceivedGifts(db: Kysely<Database>, userId: string, page: Page) {
  let query = db
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
    .where('r.status', '=', 'success')
    .orderBy('r.created_at', 'desc')
    .orderBy('r.id', 'desc')
    .limit(page.limit + 1);
  if (page.cursor) {
    const anchor = await db
      .selectFrom('gifts.gift_redemptions')
      .select('id')
      .where('id', '=', page.cursor)
      .where('redeemer_user_id', '=', userId)
      .where('status', '=', 'success')
      .executeTakeFirst();
    if (!anchor) throw new InvalidRequestError('cursor: does not name a gift you received', 'INVALID_CURSOR');
    query = query.where(
      sql<boolean>`(r.created_at, r.id) < (select a.created_at, a.id from gifts.gift_redemptions a where a.id = ${page.cursor}::uuid)`,
    );
  }
  const rows = await query.execute();
  const items = rows.slice(0, page.limit);
  return {
    items: items.map((row) => ({ ...row, code: displayGiftCode(row.code) })),
    nextCursor: rows.length > page.limit ? (items[items.length - 1]?.redemptionId ?? null) : null,
  };
}
