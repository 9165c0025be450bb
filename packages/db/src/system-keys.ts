/**
 * Idempotency keys the service makes itself. They start with U+001F (unit separator), a control character
 * that every caller key refuses (API keys allow no control characters), so no caller can take a system key
 * first, and a caller key never looks like one. Every ledger row the service writes on its own behalf
 * carries one of these; reconcile checks that purchase credits and clawbacks do.
 */
export const SYSTEM_KEY_PREFIX = '\u001f';

const systemKey = (...parts: (string | number)[]) => `${SYSTEM_KEY_PREFIX}${parts.join(':')}`;

export const systemKeys = {
  /** The credit of a paid purchase: one per purchase, whatever Stripe sends. */
  purchaseCredit: (purchaseId: string) => systemKey('purchase', purchaseId),
  /**
   * A purchase's clawback that brings all it ever took back (clawed back + given back again, which only
   * grows) to `takenAfter`: each share taken once.
   */
  clawback: (purchaseId: string, takenAfter: number) => systemKey('clawback', purchaseId, takenAfter),
  /** Credits a purchase's clawbacks took, given back (a dispute won), bringing all given back to `returnedAfter`. */
  clawbackReturn: (purchaseId: string, returnedAfter: number) =>
    systemKey('clawback', purchaseId, 'returned', returnedAfter),
  /** The usage row of a reservation's commit: at most one per reservation. */
  reservationCommit: (reservationId: string) => systemKey('reservation', reservationId),
  /** The escrow debit of a gift created without a caller key. */
  giftEscrow: (giftId: string) => systemKey('gift-escrow', giftId),
  /** The credit of one claimed portion of a gift. */
  giftRedemption: (giftId: string, portion: number) => systemKey('gift-redeem', giftId, portion),
  /** The return of a gift's unclaimed escrow (cancel or expiry): once per gift. */
  giftRefund: (giftId: string) => systemKey('gift-refund', giftId),
  /** What an operator's console action posts (a grant, a refund): once per form nonce. */
  adminAction: (nonce: string) => systemKey('admin', nonce),
} as const;

export function isSystemKey(key: string | null | undefined): boolean {
  return typeof key === 'string' && key.startsWith(SYSTEM_KEY_PREFIX);
}
