import { createHash } from 'node:crypto';
import { type Database, findStripeCustomerId, insertStripeCustomer } from '@mana-credits/db';
import type { Kysely } from 'kysely';
import type Stripe from 'stripe';

/**
 * The user's Stripe customer, created once. Concurrent first purchases send the same idempotency key (derived
 * from the user and what we send), so Stripe creates one customer; the insert keeps whichever row landed first.
 */
export async function stripeCustomerFor(
  db: Kysely<Database>,
  stripe: Stripe,
  user: { id: string; email: string | null; name: string | null },
): Promise<string> {
  const stored = await findStripeCustomerId(db, user.id);
  if (stored) return stored;
  const params = {
    ...(user.email ? { email: user.email } : {}),
    ...(user.name ? { name: user.name } : {}),
    metadata: { userId: user.id },
  };
  const key = createHash('sha256').update(JSON.stringify(params)).digest('base64url');
  const customer = await stripe.customers.create(params, { idempotencyKey: `customer:${key}` });
  await insertStripeCustomer(db, { userId: user.id, stripeCustomerId: customer.id, email: user.email });
  const winner = await findStripeCustomerId(db, user.id);
  if (!winner) throw new Error('stripe customer row vanished after insert');
  return winner;
}
