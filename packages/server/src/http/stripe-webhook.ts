import type { FastifyInstance } from 'fastify';
import Stripe from 'stripe';
import { stripeEventProblem } from '../domain/stripe/event-shape.ts';
import { AMOUNT_MISMATCH } from '../domain/stripe/outcome.ts';
import { applyStripeEvent } from '../domain/stripe/webhook.ts';
import { sendError } from './error-reply.ts';

export const STRIPE_WEBHOOK_PATH = '/api/v1/webhooks/stripe';

/** Stripe answered that the object asked for does not exist (in this account). */
const isResourceMissing = (error: unknown) =>
  error instanceof Stripe.errors.StripeInvalidRequestError && error.code === 'resource_missing';

/**
 * POST /api/v1/webhooks/stripe. Registered as its own encapsulated plugin: the body parser that keeps the raw
 * bytes (the signature covers them exactly) applies to this route only. Bad or missing signature → 400,
 * nothing changes; handler error → 500 with the transaction rolled back, so Stripe retries; anything else
 * verified → 200, whether it applied, was a redelivery, or was not ours.
 */
export async function stripeWebhookRoutes(app: FastifyInstance): Promise<void> {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));

  app.post(STRIPE_WEBHOOK_PATH, async (request, reply) => {
    const secret = app.deps.config.stripeWebhookSecret;
    if (!secret) {
      request.log.warn('stripe webhook received but STRIPE_WEBHOOK_SECRET is not set');
      return sendError(request, reply, 503, {
        message: 'Payments are not configured',
        reason: 'PAYMENTS_NOT_CONFIGURED',
      });
    }
    const signature = request.headers['stripe-signature'];
    let event: Stripe.Event;
    try {
      if (typeof signature !== 'string' || !Buffer.isBuffer(request.body))
        throw new Error('unsigned request');
      event = Stripe.webhooks.constructEvent(request.body, signature, secret);
    } catch (error) {
      request.log.warn({ err: error }, 'stripe webhook refused: invalid signature or payload');
      app.deps.metrics.webhookEvents.inc({ type: 'unverified', outcome: 'invalid_signature' });
      return sendError(request, reply, 400, {
        message: 'Invalid Stripe signature',
        reason: 'INVALID_SIGNATURE',
      });
    }
    const metrics = app.deps.metrics;
    const problem = stripeEventProblem(event);
    if (problem) {
      request.log.warn({ problem }, 'stripe webhook refused: the signed event cannot be applied as it is');
      metrics.webhookEvents.inc({ type: 'invalid', outcome: 'invalid_event' });
      return sendError(request, reply, 400, {
        message: `${problem.field}: ${problem.message}`,
        reason: 'VALIDATION',
        details: { field: problem.field },
      });
    }
    const type = metrics.webhookTypeLabel(event.type);
    let outcome: Awaited<ReturnType<typeof applyStripeEvent>>;
    try {
      const { stripe } = app.deps;
      outcome = await applyStripeEvent(app.deps.db, event, {
        intentMetadata: stripe
          ? async (intentId) => {
              try {
                return (await stripe.paymentIntents.retrieve(intentId)).metadata;
              } catch (error) {
                // Not an intent of this account: the event is not ours.
                if (isResourceMissing(error)) return null;
                throw error;
              }
            }
          : undefined,
        paymentMethodCard: stripe
          ? async (paymentMethodId, customerId) => {
              let method: Stripe.PaymentMethod;
              try {
                method = await stripe.paymentMethods.retrieve(paymentMethodId);
              } catch (error) {
                // Not a payment method of this account (or deleted): nothing to save, and a retry cannot change it.
                if (isResourceMissing(error)) return null;
                throw error;
              }
              // Detached (Stripe keeps a detached payment method, without its customer): nothing to charge.
              const owner = typeof method.customer === 'string' ? method.customer : method.customer?.id;
              if (!owner || (customerId && owner !== customerId)) return null;
              const card = method.card;
              return { card: card ? { brand: card.brand, last4: card.last4 } : null };
            }
          : undefined,
      });
    } catch (error) {
      metrics.webhookEvents.inc({ type, outcome: 'error' });
      // Stripe's API failed us while applying its event: a 503 (with nothing of its message), so it retries.
      if (error instanceof Stripe.errors.StripeError) {
        // Unreachable, rate limited or failing on its side: a retry will do. Anything else (a key of another
        // account, an object that does not exist) needs someone to look.
        const passing =
          error instanceof Stripe.errors.StripeConnectionError ||
          error instanceof Stripe.errors.StripeRateLimitError ||
          error instanceof Stripe.errors.StripeAPIError;
        request.log[passing ? 'warn' : 'error']({ err: error }, 'stripe webhook: a Stripe API call failed');
        return sendError(request, reply, 503, {
          message: 'The payment provider could not be reached; the event will be retried',
          reason: 'PAYMENT_PROVIDER_UNAVAILABLE',
        });
      }
      throw error;
    }
    // A payment not credited for its amount is an outcome of its own: money in, nothing credited (alert on it).
    const unmatched = outcome.result === 'ignored' && outcome.reason === AMOUNT_MISMATCH;
    metrics.webhookEvents.inc({ type, outcome: unmatched ? 'amount_mismatch' : outcome.result });
    // Only an applied event moved credits (a redelivery is a duplicate): the purchase it credited, and what
    // it took back for refunds or disputes (also settled right after a late credit).
    if (outcome.result === 'applied') {
      const { details } = outcome;
      if (outcome.effect === 'completed') {
        metrics.moved({
          kind: 'credited',
          account: 'personal',
          type: 'purchase',
          amount: Number(details?.credits ?? 0),
          app: 'stripe',
        });
      }
      // clawedBack < 0: a dispute the merchant won gave credits back.
      const clawedBack = Number(details?.clawedBack ?? 0);
      metrics.moved({ kind: 'clawed_back', amount: clawedBack, app: 'stripe' });
      metrics.moved({
        kind: 'credited',
        account: 'personal',
        type: 'reinstated',
        amount: -clawedBack,
        app: 'stripe',
      });
    }
    const entry = { eventId: event.id, eventType: event.type, ...outcome };
    if (unmatched) {
      request.log.error(entry, 'stripe payment not credited: amount mismatch');
    } else {
      request.log.info(entry, 'stripe event handled');
    }
    return { received: true };
  });
}
