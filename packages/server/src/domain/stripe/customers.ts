import { createHash } from 'node:crypto';
import type { Database } from '@mana-credits/db';
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
  const stored = await storedCustomer(db, user.id);
  if (stored) return stored;
  const params = {
    ...(user.email ? { email: user.email } : {}),
    ...(user.name ? { name: user.name } : {}),
    metadata: { userId: user.id },
  };
  const key = createHash('sha256').update(JSON.stringify(params)).digest('base64url');
  const customer = await stripe.customers.create(params, { idempotencyKey: `customer:${key}` });
  await db
    .insertInto('credits.stripe_customers')
    .values({ user_id: user.id, stripe_customer_id: customer.id, email: user.email })
    .onConflict((oc) => oc.column('user_id').doNothing())
    .execute();
  const winner = await storedCustomer(db, user.id);
  if (!winner) throw new Error('stripe customer row vanished after insert');
  return winner;
}

async function storedCustomer(db: Kysely<Database>, userId: string): Promise<string | undefined> {
  const row = await db
    .selectFrom('credits.stripe_customers')
    .select('stripe_customer_id')
    .where('user_id', '=', userId)
    .executeTakeFirst();
  return row?.stripe_customer_id;
}
