import { type Kysely, sql } from 'kysely';

// Stripe purchases: the ledger learns the `clawback` type, purchases remember their charge and how much of
// them refunds and disputes took back, and every refund or dispute applied is recorded once, by a unique key.

export async function up(db: Kysely<any>): Promise<void> {
  await sql`alter table credits.transactions drop constraint transactions_type_known`.execute(db);
  await sql`
    alter table credits.transactions add constraint transactions_type_known
      check (type in ('purchase', 'usage', 'refund', 'gift', 'guild_funding', 'grant', 'clawback'))`.execute(
    db,
  );

  await sql`
    alter table credits.purchases
      add column stripe_charge_id text unique,
      add column clawed_back_credits int8 not null default 0,
      add column unrecovered_credits int8 not null default 0,
      add constraint purchases_reversals_within_credits check (
        clawed_back_credits >= 0 and unrecovered_credits >= 0 and clawed_back_credits + unrecovered_credits <= credits)
  `.execute(db);

  // One row per refund or dispute, whatever the purchase's state when it arrived: `credits_due` is the share
  // of the purchase it takes back. What was actually taken (and what could not be) is settled on the purchase.
  await sql`
    create table credits.purchase_reversals (
      id uuid primary key default gen_random_uuid(),
      purchase_id uuid not null references credits.purchases (id),
      kind text not null,
      reversal_key text not null unique,
      stripe_object_id text not null,
      stripe_event_id text not null,
      amount_cents int8 not null,
      credits_due int8 not null,
      created_at timestamptz not null default clock_timestamp(),
      constraint purchase_reversals_kind_known check (kind in ('refund', 'dispute')),
      constraint purchase_reversals_amounts check (amount_cents >= 0 and credits_due >= 0)
    )`.execute(db);
  await sql`create index purchase_reversals_purchase on credits.purchase_reversals (purchase_id)`.execute(db);
  await sql`create trigger purchase_reversals_immutable before update or delete on credits.purchase_reversals for each row execute function credits.refuse_ledger_change()`.execute(
    db,
  );
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table credits.purchase_reversals`.execute(db);
  await sql`
    alter table credits.purchases
      drop constraint purchases_reversals_within_credits,
      drop column unrecovered_credits,
      drop column clawed_back_credits,
      drop column stripe_charge_id`.execute(db);
  await sql`alter table credits.transactions drop constraint transactions_type_known`.execute(db);
  await sql`
    alter table credits.transactions add constraint transactions_type_known
      check (type in ('purchase', 'usage', 'refund', 'gift', 'guild_funding', 'grant'))`.execute(db);
}
