/** What one verified Stripe event did; the HTTP layer logs it and answers 200 in every case. */
export type WebhookOutcome =
  | { result: 'duplicate' }
  | { result: 'ignored'; reason: string; purchaseId?: string; details?: Record<string, unknown> }
  | {
      result: 'applied';
      effect: 'completed' | 'failed' | 'cancelled' | 'reversed';
      purchaseId: string;
      details?: Record<string, unknown>;
    };

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
