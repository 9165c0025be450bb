import { type Kysely, sql } from 'kysely';

// Frozen: a payment Stripe reported for a purchase whose amount or currency is not the purchase's price is not
// credited (the webhook cannot know what it bought), and until now it was only written to the log. The latest
// such payment is kept on the purchase (`{ amount, currency, paymentIntentId, checkoutSessionId, receivedAt }`),
// where the buyer's purchase list and the operator console show it: money received and not credited, for an
// operator to refund in Stripe or to grant by hand. Moves no credits. Never imports application types.
export async function up(db: Kysely<any>): Promise<void> {
  await sql`alter table credits.purchases add column unmatched_payment jsonb`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`alter table credits.purchases drop column unmatched_payment`.execute(db);
}
