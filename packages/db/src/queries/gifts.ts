import { type Kysely, sql, type Transaction } from 'kysely';
import type { Database, GiftRow, GiftType, RedemptionStatus } from '../database.ts';
import { newestFirst, type Page, type PageRequest } from './pagination.ts';

// Gift codes and their redemptions: what creating, redeeming, expiring and cancelling a gift read and write.
// Every write that must commit with a ledger movement (the escrow debit, a portion's credit, a refund) takes
// the caller's Transaction.

export interface NewGift {
  id: string;
  /** Canonical form: upper case, no separators. */
  code: string;
  shortUrl: string;
  creatorId: string;
  creatorName: string | null;
  /** The escrow: creditsPerPortion × totalPortions. */
  totalCredits: number;
  creditsPerPortion: number;
  totalPortions: number;
  type: GiftType;
  targetEmail: string | null;
  riddleQuestion: string | null;
  riddleAnswerHash: string | null;
  message: string | null;
  /** Counted from the database clock. */
  expirationDays: number;
  /** The ledger entry that debited the escrow. */
  fundingTransactionId: string;
}

/**
 * Inserts a gift in the transaction that debited its escrow. Returns undefined when the code is taken: the
 * conflict is skipped without aborting the transaction, so the caller can draw another code.
 */
export async function insertGift(trx: Transaction<Database>, gift: NewGift): Promise<GiftRow | undefined> {
  return trx
    .insertInto('gifts.gift_codes')
    .values({
      id: gift.id,
      code: gift.code,
      short_url: gift.shortUrl,
      creator_id: gift.creatorId,
      creator_name: gift.creatorName,
      total_credits: gift.totalCredits,
      credits_per_portion: gift.creditsPerPortion,
      total_portions: gift.totalPortions,
      type: gift.type,
      target_email: gift.targetEmail,
      riddle_question: gift.riddleQuestion,
      riddle_answer_hash: gift.riddleAnswerHash,
      message: gift.message,
      expires_at: sql<string>`now() + make_interval(days => ${gift.expirationDays})`,
      funding_transaction_id: gift.fundingTransactionId,
    })
    .onConflict((oc) => oc.column('code').doNothing())
    .returningAll()
    .executeTakeFirst();
}

/** A creator's gift by id (a replayed create answers the gift the first call made); throws when missing. */
export async function getGiftOfCreator(
  db: Kysely<Database>,
  giftId: string,
  creatorId: string,
): Promise<GiftRow> {
  return db
    .selectFrom('gifts.gift_codes')
    .selectAll()
    .where('id', '=', giftId)
    .where('creator_id', '=', creatorId)
    .executeTakeFirstOrThrow();
}

/** A gift row with whether its expiry has passed by the database clock (the clock every instance shares). */
export type DatedGift = GiftRow & { due: boolean };

/** A gift row locked FOR UPDATE, with whether its expiry has passed by the database clock. */
export type LockedGift = DatedGift;

/**
 * A gift by its stored (canonical) code, with `due`. Not for locking: see lockGift. The caller normalises
 * what was typed and looks up only codes that can be ours.
 */
export async function findGiftByCanonicalCode(
  db: Kysely<Database>,
  code: string,
): Promise<DatedGift | undefined> {
  return db
    .selectFrom('gifts.gift_codes')
    .selectAll()
    .select(sql<boolean>`expires_at <= now()`.as('due'))
    .where('code', '=', code)
    .executeTakeFirst();
}

/**
 * Locks one gift row for the rest of the transaction: claims, cancels and expiries of a gift serialise on it.
 * `skipLocked`: a gift another transaction holds is not waited for (undefined instead), as the sweep wants.
 */
export async function lockGift(
  trx: Transaction<Database>,
  giftId: string,
  options: { skipLocked?: boolean } = {},
): Promise<LockedGift | undefined> {
  let query = trx
    .selectFrom('gifts.gift_codes')
    .selectAll()
    .select(sql<boolean>`expires_at <= now()`.as('due'))
    .where('id', '=', giftId)
    .forUpdate();
  if (options.skipLocked) query = query.skipLocked();
  return query.executeTakeFirst();
}

/**
 * Closes an active gift, recording the credits it returns, in the transaction that refunds them. Conditional
 * on `active`, so even a caller without the row lock closes a gift once. Returns whether this call closed it.
 */
export async function closeActiveGift(
  trx: Transaction<Database>,
  giftId: string,
  status: 'expired' | 'cancelled' | 'refunded',
  refundedCredits: number,
): Promise<boolean> {
  const closed = await trx
    .updateTable('gifts.gift_codes')
    .set({ status, refunded_credits: refundedCredits, updated_at: sql`now()` })
    .where('id', '=', giftId)
    .where('status', '=', 'active')
    .executeTakeFirst();
  return Number(closed.numUpdatedRows) === 1;
}

/** Ids of active gifts past their expiry (optionally one creator's), the longest overdue first: for the sweep. */
export async function listDueGiftIds(
  db: Kysely<Database>,
  options: { creatorId?: string | undefined; limit: number },
): Promise<string[]> {
  let query = db
    .selectFrom('gifts.gift_codes')
    .select('id')
    .where('status', '=', 'active')
    .where('expires_at', '<=', sql<Date>`now()`)
    .orderBy('expires_at')
    .limit(options.limit);
  if (options.creatorId) query = query.where('creator_id', '=', options.creatorId);
  const rows = await query.execute();
  return rows.map((row) => row.id);
}

/**
 * Serialises one user's redeem attempts on one gift (a transaction-scoped advisory lock, shared by every
 * instance), so the failure count that throttles guessing is exact under parallel requests. The gift row is
 * not locked: other users' attempts go on meanwhile.
 */
export async function lockRedeemAttempts(
  trx: Transaction<Database>,
  giftId: string,
  userId: string,
): Promise<void> {
  await sql`select pg_advisory_xact_lock(hashtextextended(${`gift-redeem\n${giftId}\n${userId}`}, 0))`.execute(
    trx,
  );
}

/**
 * A user's failed attempts on a gift in the last `windowSeconds`, and in how many seconds the oldest of them
 * leaves the window (null without failures). Exact when read under lockRedeemAttempts.
 */
export async function recentFailedRedemptions(
  trx: Transaction<Database>,
  giftId: string,
  userId: string,
  windowSeconds: number,
): Promise<{ failures: number; retryAfterSeconds: number | null }> {
  const { failures, retry_after } = await trx
    .selectFrom('gifts.gift_redemptions')
    .select([
      sql<number>`count(*)::int4`.as('failures'),
      sql<
        number | null
      >`ceil(extract(epoch from min(created_at) + make_interval(secs => ${windowSeconds}) - now()))::int4`.as(
        'retry_after',
      ),
    ])
    .where('gift_code_id', '=', giftId)
    .where('redeemer_user_id', '=', userId)
    .where('status', '<>', 'success')
    .where('created_at', '>', sql<Date>`now() - make_interval(secs => ${windowSeconds})`)
    .executeTakeFirstOrThrow();
  return { failures, retryAfterSeconds: retry_after };
}

/** Whether the user already holds a portion of the gift; exact under the gift's row lock (lockGift). */
export async function hasRedeemedGift(
  trx: Transaction<Database>,
  giftId: string,
  userId: string,
): Promise<boolean> {
  const claimed = await trx
    .selectFrom('gifts.gift_redemptions')
    .select('id')
    .where('gift_code_id', '=', giftId)
    .where('redeemer_user_id', '=', userId)
    .where('status', '=', 'success')
    .executeTakeFirst();
  return claimed !== undefined;
}

/**
 * Takes the next portion of a locked, active gift (the last one depletes it) and returns its number, which
 * keys the portion's ledger credit. Throws when the gift has no portion left: the caller checked under the lock.
 */
export async function takeGiftPortion(trx: Transaction<Database>, giftId: string): Promise<number> {
  const { claimed_portions: portion } = await trx
    .updateTable('gifts.gift_codes')
    .set({
      claimed_portions: sql`claimed_portions + 1`,
      status: sql`case when claimed_portions + 1 = total_portions then 'depleted' else status end`,
      updated_at: sql`now()`,
    })
    .where('id', '=', giftId)
    .where('status', '=', 'active')
    .where('claimed_portions', '<', sql<number>`total_portions`)
    .returning('claimed_portions')
    .executeTakeFirstOrThrow();
  return portion;
}

export type NewRedemption =
  | {
      giftId: string;
      userId: string;
      status: 'success';
      sourceAppId: string | null;
      creditsReceived: number;
      portionNumber: number;
      creditTransactionId: string;
    }
  | {
      giftId: string;
      userId: string;
      status: Exclude<RedemptionStatus, 'success'>;
      sourceAppId: string | null;
    };

/**
 * Records one redemption attempt, in the attempt's transaction: a success with the portion and its credit,
 * or a refusal (which counts towards the throttle and commits with any refund made on the way).
 */
export async function recordRedemption(trx: Transaction<Database>, redemption: NewRedemption): Promise<void> {
  await trx
    .insertInto('gifts.gift_redemptions')
    .values({
      gift_code_id: redemption.giftId,
      redeemer_user_id: redemption.userId,
      status: redemption.status,
      ...(redemption.status === 'success'
        ? {
            credits_received: redemption.creditsReceived,
            portion_number: redemption.portionNumber,
            credit_transaction_id: redemption.creditTransactionId,
          }
        : {}),
      source_app_id: redemption.sourceAppId,
    })
    .execute();
}

/**
 * Active, unexpired personalized gifts addressed to `email` (case-insensitive) that `userId` did not make and
 * does not hold yet, oldest first: what a user who just registered may redeem.
 */
export async function listPendingGiftsFor(
  db: Kysely<Database>,
  email: string,
  userId: string,
): Promise<GiftRow[]> {
  return db
    .selectFrom('gifts.gift_codes as g')
    .selectAll('g')
    .where('g.status', '=', 'active')
    .where('g.type', '=', 'personalized')
    .where(sql<string>`lower(g.target_email)`, '=', email.toLowerCase())
    .where('g.expires_at', '>', sql<Date>`now()`)
    .where('g.creator_id', '<>', userId)
    .where(({ not, exists, selectFrom }) =>
      not(
        exists(
          selectFrom('gifts.gift_redemptions as r')
            .select('r.id')
            .whereRef('r.gift_code_id', '=', 'g.id')
            .where('r.redeemer_user_id', '=', userId)
            .where('r.status', '=', 'success'),
        ),
      ),
    )
    .orderBy('g.created_at')
    .execute();
}

/** One page of a creator's gifts, newest first; undefined when the cursor names no gift of theirs. */
export async function listCreatedGifts(
  db: Kysely<Database>,
  creatorId: string,
  page: PageRequest,
): Promise<Page<GiftRow> | undefined> {
  return newestFirst(
    db.selectFrom('gifts.gift_codes').selectAll().where('creator_id', '=', creatorId),
    { table: 'gifts.gift_codes', idOf: (row) => row.id },
    page,
  );
}

/** A successful redemption with the gift it came from. */
export interface ReceivedGiftRow {
  redemptionId: string;
  giftId: string;
  /** Canonical form. */
  code: string;
  type: GiftType;
  creditsReceived: number;
  message: string | null;
  creatorName: string | null;
  redeemedAt: Date;
}

/**
 * One page of the gifts a user redeemed, newest first; the cursor is a redemption id. Undefined when it names
 * no redemption of theirs.
 */
export async function listReceivedGifts(
  db: Kysely<Database>,
  userId: string,
  page: PageRequest,
): Promise<Page<ReceivedGiftRow> | undefined> {
  return newestFirst(
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
}
