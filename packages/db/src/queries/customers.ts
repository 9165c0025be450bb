import type { Kysely } from 'kysely';
import type { Database } from '../database.ts';

// Which Stripe customer pays for a user's purchases: one per user, created once.

/** The user's Stripe customer id, if one was stored. */
export async function findStripeCustomerId(
  db: Kysely<Database>,
  userId: string,
): Promise<string | undefined> {
  const row = await db
    .selectFrom('credits.stripe_customers')
    .select('stripe_customer_id')
    .where('user_id', '=', userId)
    .executeTakeFirst();
  return row?.stripe_customer_id;
}

/**
 * Stores the user's Stripe customer unless one is stored already: concurrent first purchases keep whichever
 * row landed first (read it back with findStripeCustomerId).
 */
export async function insertStripeCustomer(
  db: Kysely<Database>,
  customer: { userId: string; stripeCustomerId: string; email: string | null },
): Promise<void> {
  await db
    .insertInto('credits.stripe_customers')
    .values({
      user_id: customer.userId,
      stripe_customer_id: customer.stripeCustomerId,
      email: customer.email,
    })
    // No conflict target: both unique indexes (user_id, stripe_customer_id) are arbiters. Concurrent first
    // purchases insert the same pair; with only user_id as the target, the loser could pass that check before
    // the winner's row was there and then fail on stripe_customer_id (seen under load as a 500).
    .onConflict((oc) => oc.doNothing())
    .execute();
}
