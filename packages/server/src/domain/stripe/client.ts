import Stripe from 'stripe';
import type { Config } from '../../config.ts';

/**
 * The Stripe client, or undefined when STRIPE_SECRET_KEY is unset (purchases then answer
 * PAYMENTS_NOT_CONFIGURED). STRIPE_API_URL points it at another host, e.g. a local Stripe-speaking server.
 */
export function createStripeClient(
  config: Pick<Config, 'stripeSecretKey' | 'stripeApiUrl'>,
): Stripe | undefined {
  if (!config.stripeSecretKey) return undefined;
  const api = config.stripeApiUrl ? new URL(config.stripeApiUrl) : undefined;
  const protocol = api?.protocol === 'http:' ? 'http' : 'https';
  return new Stripe(config.stripeSecretKey, {
    // The SDK retries connection errors, 409 and 5xx with the same idempotency key.
    maxNetworkRetries: 2,
    timeout: 20_000,
    telemetry: false,
    appInfo: { name: 'mana-credits' },
    ...(api
      ? {
          host: api.hostname.replace(/^\[(.*)\]$/, '$1'),
          port: api.port || (protocol === 'http' ? 80 : 443),
          protocol,
        }
      : {}),
  });
}

/**
 * Whether Stripe certainly did not act on a failed call: it answered with a client error (other than 409, a
 * concurrent request with the same key). Connection errors and 5xx leave the outcome unknown.
 */
export function stripeRefusedCall(error: unknown): boolean {
  if (!(error instanceof Stripe.errors.StripeError)) return false;
  if (error instanceof Stripe.errors.StripeConnectionError) return false;
  const status = error.statusCode;
  return status !== undefined && status >= 400 && status < 500 && status !== 409;
}

/**
 * Whether a failed payment call was refused because of the payment itself (a declined card, a saved card that
 * is gone or unusable): the user has to act, so an automatic payment stops. Stripe asking us to slow down
 * (429), refusing our key (401/403) or a clash of our idempotency keys says nothing about the card: those
 * calls did not act either, and are tried again later with the same key.
 */
export function isPaymentRefusal(error: unknown): boolean {
  if (error instanceof Stripe.errors.StripeCardError) return true;
  if (
    error instanceof Stripe.errors.StripeRateLimitError ||
    error instanceof Stripe.errors.StripeAuthenticationError ||
    error instanceof Stripe.errors.StripePermissionError ||
    error instanceof Stripe.errors.StripeIdempotencyError
  ) {
    return false;
  }
  // The SDK makes these classes from the status (429 or a 400 with code rate_limit, 401, 403): no status check.
  return stripeRefusedCall(error);
}

export function isStripeError(error: unknown): error is Stripe.errors.StripeError {
  return error instanceof Stripe.errors.StripeError;
}
