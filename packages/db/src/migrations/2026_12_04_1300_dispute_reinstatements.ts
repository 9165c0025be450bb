import { type Kysely, sql } from 'kysely';

// Frozen: disputes the merchant won. A dispute's reversal took the disputed share of a purchase back; when
// Stripe gives the money back to the merchant (charge.dispute.funds_reinstated, or closed as won), the
// reinstatement is recorded here, once per dispute (append-only, like the reversals), and that dispute no
// longer counts toward what the purchase owes. What it had taken is given back to the buyer, and
// purchases.returned_credits keeps the sum: clawed_back_credits stays the net taken, and clawed back +
// returned only grows, which numbers the purchase's clawback keys. Never imports application types.
export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table credits.purchase_reinstatements (
      reversal_key text primary key,
      purchase_id uuid not null references credits.purchases (id),
      stripe_object_id text not null,
      stripe_event_id text not null,
      created_at timestamptz not null default clock_timestamp()
    )`.execute(db);
  await sql`
    alter table credits.purchases
      add column returned_credits int8 not null default 0,
      add constraint purchases_returned_credits_range check (returned_credits >= 0)`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`alter table credits.purchases drop column returned_credits`.execute(db);
  await sql`drop table credits.purchase_reinstatements`.execute(db);
}
