/** What one verified Stripe event did; the HTTP layer logs it and answers 200 in every case. */
export type WebhookOutcome =
  | { result: 'duplicate' }
  | { result: 'ignored'; reason: string; purchaseId?: string; details?: Record<string, unknown> }
  | {
      result: 'applied';
      effect:
        | 'completed'
        | 'failed'
        | 'cancelled'
        | 'reversed'
        | 'reinstated'
        | 'card_saved'
        | 'card_removed';
      purchaseId?: string;
      details?: Record<string, unknown>;
    };

/** The one ignored outcome that means money arrived and was not credited: operators must look. */
export const AMOUNT_MISMATCH = 'paid amount does not match the purchase';

export const ignored = (
  reason: string,
  purchaseId?: string,
  details?: Record<string, unknown>,
): WebhookOutcome => ({
  result: 'ignored',
  reason,
  ...(purchaseId ? { purchaseId } : {}),
  ...(details ? { details } : {}),
});
