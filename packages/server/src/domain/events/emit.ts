import { type Database, writeEvent } from '@mana-credits/db';
import type { Transaction } from 'kysely';

/**
 * The events the domain code writes (balance crossings and reservation expiry are written by the database's
 * triggers). Each names its account (`userId` or `guildId`), the amounts and the ledger entry that caused it.
 */
export type DomainEvent =
  | {
      type: 'purchase.completed';
      data: {
        userId: string;
        purchaseId: string;
        packageId: string | null;
        credits: number;
        priceEuroCents: number;
        currency: string;
        transactionId: string;
        /** Bought by auto top-up (issue 19) rather than by the user. */
        auto: boolean;
      };
    }
  | {
      type: 'autotopup.failed';
      data: {
        userId: string;
        attemptId: string;
        purchaseId: string | null;
        packageId: string;
        /** Stripe's code, e.g. card_declined or authentication_required; auto top-up is now off. */
        reason: string;
        message: string | null;
        paymentIntentId: string | null;
      };
    }
  | {
      type: 'purchase.reversed';
      data: {
        userId: string;
        purchaseId: string;
        /** Credits this settlement took back from the balance (0 when nothing was spendable). */
        clawedBack: number;
        /** Credits it should have taken back but the balance no longer had. */
        unrecovered: number;
        /** All taken back from this purchase so far, and all that could not be. */
        totalClawedBack: number;
        totalUnrecovered: number;
        /** The clawback ledger entry; null when nothing could be taken. */
        transactionId: string | null;
      };
    }
  | {
      type: 'purchase.reinstated';
      data: {
        userId: string;
        purchaseId: string;
        /** Credits credited back (taken back before, no longer owed: a dispute the merchant won). */
        givenBack: number;
        /** Credits recorded unrecovered that are no longer owed (the buyer kept them). */
        forgiven: number;
        totalClawedBack: number;
        totalUnrecovered: number;
        /** The ledger entry that gave credits back; null when only unrecovered ones were forgiven. */
        transactionId: string | null;
      };
    }
  | {
      type: 'gift.redeemed';
      data: {
        /** The creator: the event is theirs. */
        userId: string;
        giftId: string;
        redeemedBy: string;
        credits: number;
        portion: number;
        totalPortions: number;
        /** The redeemer's ledger entry that received the credits. */
        transactionId: string;
      };
    }
  | {
      type: 'gift.expired';
      data: {
        userId: string;
        giftId: string;
        /** Unclaimed credits returned to the creator. */
        refunded: number;
        claimedPortions: number;
        totalPortions: number;
        /** The refund entry; null when nothing was left to return. */
        transactionId: string | null;
      };
    }
  | {
      type: 'guild.member.limit_reached';
      data: {
        guildId: string;
        userId: string;
        window: 'daily' | 'monthly';
        limit: number;
        /** Spent and held in the window, this spend or hold included: equal to the limit. */
        used: number;
        amount: number;
        /** The pool usage entry, or the hold, that used up the limit. */
        transactionId: string | null;
        reservationId: string | null;
      };
    };

/**
 * Writes a domain event in the caller's transaction (the one making the change it reports): it is committed
 * with the change or rolled back with it, never sent for a change that did not happen.
 */
export async function emitEvent(trx: Transaction<Database>, event: DomainEvent): Promise<string> {
  const data: { userId?: string; guildId?: string } = event.data;
  return writeEvent(trx, { type: event.type, userId: data.userId, guildId: data.guildId, data: event.data });
}
