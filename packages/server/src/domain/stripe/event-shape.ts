import { z } from 'zod';
import { text } from '../../schemas.ts';

/**
 * The event types applyStripeEvent acts on; their object must carry an id. Others are only recorded as
 * ignored, so their objects may be anything.
 */
export const HANDLED_STRIPE_EVENTS = new Set([
  'payment_intent.succeeded',
  'payment_intent.payment_failed',
  'checkout.session.completed',
  'checkout.session.async_payment_succeeded',
  'checkout.session.async_payment_failed',
  'checkout.session.expired',
  'setup_intent.succeeded',
  'payment_method.detached',
  'charge.refunded',
  'charge.dispute.created',
  'charge.dispute.funds_withdrawn',
  'charge.dispute.funds_reinstated',
  'charge.dispute.closed',
]);

/** A Stripe id as Stripe makes them (evt_…, pi_…): short printable ASCII, so it can be stored and indexed. */
const stripeId = z
  .string()
  .regex(/^[\x21-\x7e]{1,255}$/, { error: 'must be a Stripe id (≤ 255 printable ASCII)' });
/** A reference to another object: its id, the expanded object, or nothing. */
const reference = z.union([stripeId, z.looseObject({ id: stripeId }), z.null()]).optional();

/** The fields of a handled event's object that reach SQL or our records; the rest is Stripe's business. */
const handledObject = z.looseObject({
  id: stripeId,
  payment_intent: reference,
  latest_charge: reference,
  charge: reference,
  payment_method: reference,
  customer: reference,
  // Read for purchaseId, userId and purpose; bounded far above Stripe's own 500 characters a value.
  metadata: z.record(z.string(), text(5000)).nullable().optional(),
  last_payment_error: z
    .looseObject({ code: text(5000).nullable().optional(), message: text(5000).nullable().optional() })
    .nullable()
    .optional(),
});

/** An amount in the currency's smallest unit, as Stripe sends them: a safe integer ≥ 0. */
const minorUnits = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
/** An ISO currency code (Stripe sends it lower case). */
const currency = z.string().regex(/^[A-Za-z]{3}$/, { error: 'must be a three-letter currency code' });
const status = z.string().max(100).optional();

const paidSession = z.looseObject({
  amount_total: minorUnits.nullable(),
  currency: currency.nullable(),
  payment_status: status,
});

/**
 * The amounts, currencies and statuses each handled event's handler reads (webhook.ts, reversals.ts), by type:
 * a signed event without them cannot be applied, and would fail again on every one of Stripe's retries.
 */
const HANDLED_FIELDS: Record<string, z.ZodType> = {
  'payment_intent.succeeded': z.looseObject({ amount_received: minorUnits, currency, status }),
  'checkout.session.completed': paidSession,
  'checkout.session.async_payment_succeeded': paidSession,
  'charge.refunded': z.looseObject({ amount: minorUnits, amount_refunded: minorUnits, currency }),
  'charge.dispute.created': z.looseObject({ amount: minorUnits, currency, status: z.string().max(100) }),
  'charge.dispute.funds_withdrawn': z.looseObject({ amount: minorUnits, currency, status }),
};

const stripeEvent = z.looseObject({
  id: stripeId,
  type: z.string().regex(/^[a-z0-9_.]{1,100}$/, { error: 'must be a Stripe event type' }),
  data: z.looseObject({ object: z.unknown() }),
});

function problemOf(error: z.ZodError, prefix: string[]) {
  const issue = error.issues[0];
  const path = [...prefix, ...(issue?.path.map(String) ?? [])];
  return { field: path.join('.') || '(event)', message: issue?.message ?? 'invalid' };
}

/**
 * What keeps a verified event from being applied as it is — a field path and why — or undefined. Stripe never
 * sends such an event; a signed one that does is refused with a 400 rather than failing inside a transaction.
 * The object is checked only for the event types applyStripeEvent acts on: the others are not recorded, and
 * an endpoint subscribed to more than it needs must not refuse them.
 */
export function stripeEventProblem(event: unknown): { field: string; message: string } | undefined {
  const envelope = stripeEvent.safeParse(event);
  if (!envelope.success) return problemOf(envelope.error, []);
  if (!HANDLED_STRIPE_EVENTS.has(envelope.data.type)) return undefined;
  const object = handledObject.safeParse(envelope.data.data.object);
  if (!object.success) return problemOf(object.error, ['data', 'object']);
  const fields = HANDLED_FIELDS[envelope.data.type]?.safeParse(object.data);
  return !fields || fields.success ? undefined : problemOf(fields.error, ['data', 'object']);
}
