import type { GiftRow, GiftStatus, GiftType, ReceivedGiftRow } from '@mana-credits/db';
import { displayGiftCode } from './codes.ts';

/** What the creator is told when a gift is made (also what a replay of the same create answers). */
export function toCreatedGift(row: GiftRow) {
  return {
    id: row.id,
    code: displayGiftCode(row.code),
    shortUrl: row.short_url,
    type: row.type,
    creditsPerPortion: row.credits_per_portion,
    totalPortions: row.total_portions,
    expiresAt: row.expires_at,
  };
}

/** The public view: nothing that identifies the creator beyond a display name, never the target email. */
export function toGiftInfo(row: GiftRow) {
  return {
    code: displayGiftCode(row.code),
    type: row.type as GiftType,
    status: row.status as GiftStatus,
    creditsPerPortion: row.credits_per_portion,
    totalPortions: row.total_portions,
    claimedPortions: row.claimed_portions,
    riddleQuestion: row.riddle_question,
    message: row.message,
    creatorName: row.creator_name,
    expiresAt: row.expires_at,
  };
}

/** The creator's own view of a gift in their list. */
export function toOwnGift(row: GiftRow) {
  return {
    ...toCreatedGift(row),
    status: row.status,
    claimedPortions: row.claimed_portions,
    escrowCredits: row.total_credits,
    refundedCredits: row.refunded_credits,
    targetEmail: row.target_email,
    riddleQuestion: row.riddle_question,
    message: row.message,
    createdAt: row.created_at,
  };
}

/** A gift the user redeemed, in their list of received gifts. */
export function toReceivedGift(row: ReceivedGiftRow) {
  return { ...row, code: displayGiftCode(row.code) };
}

export type CreatedGift = ReturnType<typeof toCreatedGift>;
export type GiftInfo = ReturnType<typeof toGiftInfo>;
export type OwnGift = ReturnType<typeof toOwnGift>;
export type ReceivedGift = ReturnType<typeof toReceivedGift>;
