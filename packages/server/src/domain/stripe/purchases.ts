import {
  type Database,
  failPendingPurchase,
  findPackage,
  findPurchaseOfUser,
  insertPendingPurchase,
  listPurchases,
  recordPurchaseStripeIds,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import type Stripe from 'stripe';
import { toPurchaseStatusView, toPurchaseView } from '../credits/mappers.ts';
import {
  InvalidCursorError,
  InvalidRequestError,
  NotFoundError,
  PreconditionFailedError,
  ServiceUnavailableError,
} from '../errors.ts';
import { isStripeError, stripeRefusedCall } from './client.ts';
import { stripeCustomerFor } from './customers.ts';

/** Every package is priced and paid in euros. */
export const PURCHASE_CURRENCY = 'eur';
/** Card and SEPA Direct Debit; Stripe offers whichever of these fit the payment. */
const PAYMENT_METHOD_TYPES: Array<'card' | 'sepa_debit'> = ['card', 'sepa_debit'];

export type PurchaseMode = 'payment_intent' | 'checkout';

export interface PaymentsDeps {
  db: Kysely<Database>;
  stripe: Stripe | undefined;
  /** Origins a Checkout success or cancel URL may point to (CORS_ORIGINS and CHECKOUT_ALLOWED_ORIGINS). */
  redirectOrigins: readonly string[];
}

export interface StartPurchaseInput {
  user: { id: string; email: string | null; name: string | null };
  packageId: string;
  mode: PurchaseMode;
  successUrl?: string | undefined;
  cancelUrl?: string | undefined;
}

export interface PurchaseStarted {
  purchaseId: string;
  amount: number;
  currency: string;
  credits: number;
  clientSecret?: string;
  checkoutUrl?: string;
}

export function requireStripe(stripe: Stripe | undefined): Stripe {
  if (!stripe) throw new PreconditionFailedError('Payments are not configured', 'PAYMENTS_NOT_CONFIGURED');
  return stripe;
}

function originOf(value: string): string | undefined {
  try {
    return new URL(value).origin;
  } catch {
    return undefined;
  }
}

/** A redirect target must be an absolute http(s) URL on an allowed origin: no open redirects. */
function checkedRedirect(field: string, value: string, allowed: ReadonlySet<string>): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidRequestError(`${field}: must be an absolute URL`, 'INVALID_REDIRECT_URL', { field });
  }
  if ((url.protocol !== 'https:' && url.protocol !== 'http:') || !allowed.has(url.origin)) {
    throw new InvalidRequestError(
      `${field}: ${url.origin} is not an allowed origin`,
      'REDIRECT_ORIGIN_NOT_ALLOWED',
      { field },
    );
  }
  // Checked as parsed, sent as parsed (a raw string could mean something else to Stripe), but with Stripe's
  // own template kept literal: in a path the parser percent-encodes its braces and Stripe would not fill it.
  return url.href.replaceAll('%7BCHECKOUT_SESSION_ID%7D', '{CHECKOUT_SESSION_ID}');
}

function checkoutRedirects(input: StartPurchaseInput, origins: readonly string[]) {
  const allowed = new Set(
    origins.map(originOf).filter((origin): origin is string => origin !== undefined && origin !== 'null'),
  );
  const successUrl = input.successUrl && checkedRedirect('successUrl', input.successUrl, allowed);
  const cancelUrl = input.cancelUrl && checkedRedirect('cancelUrl', input.cancelUrl, allowed);
  if (input.mode !== 'checkout') return undefined;
  if (!successUrl)
    throw new InvalidRequestError('successUrl: required in checkout mode', 'VALIDATION', {
      field: 'successUrl',
    });
  if (!cancelUrl)
    throw new InvalidRequestError('cancelUrl: required in checkout mode', 'VALIDATION', {
      field: 'cancelUrl',
    });
  return { successUrl, cancelUrl };
}

const providerUnavailable = (cause: unknown) =>
  new ServiceUnavailableError(
    'The payment provider is unavailable, try again later',
    'PAYMENT_PROVIDER_UNAVAILABLE',
    {
      cause,
    },
  );

/**
 * Starts a purchase: the pending row first (its id keys every Stripe call, so the SDK's retries never create
 * a second PaymentIntent or Session), then the Stripe object, outside any transaction. If Stripe refused the
 * call the purchase is `failed`; if the outcome is unknown it stays `pending` — should the object exist and be
 * paid after all, the webhook still finds the purchase by its metadata.
 */
export async function startPurchase(deps: PaymentsDeps, input: StartPurchaseInput): Promise<PurchaseStarted> {
  const stripe = requireStripe(deps.stripe);
  const redirects = checkoutRedirects(input, deps.redirectOrigins);
  const pack = await findPackage(deps.db, input.packageId);
  if (!pack) throw new NotFoundError('Package', 'PACKAGE_NOT_FOUND');
  if (!pack.active) throw new PreconditionFailedError('This package is not on sale', 'PACKAGE_INACTIVE');

  let customerId: string;
  try {
    customerId = await stripeCustomerFor(deps.db, stripe, input.user);
  } catch (error) {
    if (isStripeError(error)) throw providerUnavailable(error);
    throw error;
  }

  const purchaseId = await insertPendingPurchase(deps.db, {
    userId: input.user.id,
    packageId: pack.id,
    credits: pack.credits,
    priceEuroCents: pack.price_euro_cents,
    currency: PURCHASE_CURRENCY,
    stripeCustomerId: customerId,
    validityDays: pack.validity_days,
  });
  const metadata = { userId: input.user.id, packageId: pack.id, purchaseId };
  const description = `${pack.credits} credits (${pack.name})`;
  const started = {
    purchaseId,
    amount: pack.price_euro_cents,
    currency: PURCHASE_CURRENCY,
    credits: pack.credits,
  };

  try {
    if (!redirects) {
      const intent = await stripe.paymentIntents.create(
        {
          amount: pack.price_euro_cents,
          currency: PURCHASE_CURRENCY,
          customer: customerId,
          allowed_payment_method_types: PAYMENT_METHOD_TYPES,
          description,
          metadata,
        },
        { idempotencyKey: `purchase:${purchaseId}:payment_intent` },
      );
      await recordPurchaseStripeIds(deps.db, purchaseId, { stripe_payment_intent_id: intent.id });
      return { ...started, ...(intent.client_secret ? { clientSecret: intent.client_secret } : {}) };
    }
    const session = await stripe.checkout.sessions.create(
      {
        mode: 'payment',
        customer: customerId,
        client_reference_id: purchaseId,
        line_items: [
          pack.stripe_price_id
            ? { price: pack.stripe_price_id, quantity: 1 }
            : {
                price_data: {
                  currency: PURCHASE_CURRENCY,
                  unit_amount: pack.price_euro_cents,
                  product_data: {
                    name: pack.name,
                    ...(pack.description ? { description: pack.description } : {}),
                  },
                },
                quantity: 1,
              },
        ],
        allowed_payment_method_types: PAYMENT_METHOD_TYPES,
        success_url: redirects.successUrl,
        cancel_url: redirects.cancelUrl,
        metadata,
        payment_intent_data: { description, metadata },
      },
      { idempotencyKey: `purchase:${purchaseId}:checkout` },
    );
    const intentId =
      typeof session.payment_intent === 'string' ? session.payment_intent : session.payment_intent?.id;
    await recordPurchaseStripeIds(deps.db, purchaseId, {
      stripe_checkout_session_id: session.id,
      ...(intentId ? { stripe_payment_intent_id: intentId } : {}),
    });
    // A package sold through a Stripe Price charges that Price, which an operator may have left behind when the
    // package's price changed: a Session for another amount would take money the purchase does not credit.
    // It is closed unpaid and the purchase fails, before anyone is sent to it.
    if (
      session.amount_total !== pack.price_euro_cents ||
      session.currency?.toLowerCase() !== PURCHASE_CURRENCY
    ) {
      await stripe.checkout.sessions.expire(
        session.id,
        {},
        { idempotencyKey: `purchase:${purchaseId}:expire` },
      );
      await failPendingPurchase(deps.db, purchaseId);
      throw new PreconditionFailedError(
        'This package cannot be bought now: its Stripe price differs from its price',
        'PACKAGE_PRICE_MISMATCH',
        { field: 'stripePriceId', expected: pack.price_euro_cents, stripeAmount: session.amount_total },
      );
    }
    return { ...started, ...(session.url ? { checkoutUrl: session.url } : {}) };
  } catch (error) {
    if (!isStripeError(error)) throw error;
    if (stripeRefusedCall(error)) await failPendingPurchase(deps.db, purchaseId);
    throw providerUnavailable(error);
  }
}

/** The caller's purchases, newest first; the cursor is the id of the last purchase of the previous page. */
export async function purchaseHistory(
  db: Kysely<Database>,
  userId: string,
  page: { limit: number; cursor?: string | undefined },
) {
  const result = await listPurchases(db, userId, page);
  if (!result) throw new InvalidCursorError('a purchase of yours');
  return { items: result.items.map(toPurchaseView), nextCursor: result.nextCursor };
}

/** One purchase of the caller; someone else's is NOT_FOUND, like a missing one. */
export async function purchaseStatus(db: Kysely<Database>, userId: string, purchaseId: string) {
  const row = await findPurchaseOfUser(db, userId, purchaseId);
  if (!row) throw new NotFoundError('Purchase', 'PURCHASE_NOT_FOUND');
  return toPurchaseStatusView(row);
}
