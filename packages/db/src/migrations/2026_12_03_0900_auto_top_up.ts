import { type Kysely, sql } from 'kysely';

// Frozen: auto top-up (issue 19). Never imports application types.
//
// - credits.auto_top_up: one row per user: which package to buy, below which available balance, at most how
//   many times per UTC month, and the saved card (a Stripe payment method of the user's customer). `enabled`
//   only once a card is saved (setup_intent.succeeded); a failed payment, `disable` or the card's removal in
//   Stripe (payment_method.detached) turns it off with a reason.
// - credits.auto_top_up_attempts: one row per top-up the balance called for, written by the ledger trigger
//   credits.auto_top_up_crossings (live body: packages/db/src/functions/auto_top_up.sql) in the transaction of
//   the entry that crossed below the threshold: durable like an outbox row. Its id is the Stripe idempotency
//   key of the payment. `pending` = to be sent (a worker claims it with SKIP LOCKED and leases it through
//   next_attempt_at), `processing` = the PaymentIntent exists and its outcome is awaited, then `succeeded`,
//   `failed` or `skipped` (auto top-up was off by the time the worker came). At most one attempt in flight
//   (pending or processing) per user: a partial unique index.

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table credits.auto_top_up (
      user_id text primary key,
      enabled boolean not null default false,
      package_id uuid not null references credits.packages (id),
      threshold int8 not null,
      max_per_month int4 not null,
      stripe_customer_id text,
      setup_intent_id text,
      payment_method_id text,
      card_brand text,
      card_last4 text,
      disabled_reason text,
      disabled_at timestamptz,
      created_at timestamptz not null default now(),
      updated_at timestamptz not null default now(),
      constraint auto_top_up_threshold_range check (threshold >= 1 and threshold <= 9007199254740991),
      constraint auto_top_up_max_range check (max_per_month between 1 and 1000),
      constraint auto_top_up_enabled_has_card check (not enabled or payment_method_id is not null)
    )`.execute(db);
  await sql`create index auto_top_up_payment_method on credits.auto_top_up (payment_method_id)
             where payment_method_id is not null`.execute(db);
  await sql`create index auto_top_up_setup_intent on credits.auto_top_up (setup_intent_id)
             where setup_intent_id is not null`.execute(db);

  await sql`
    create table credits.auto_top_up_attempts (
      id uuid primary key default gen_random_uuid(),
      user_id text not null,
      package_id uuid not null references credits.packages (id),
      status text not null default 'pending',
      transaction_id uuid not null,
      purchase_id uuid references credits.purchases (id),
      payment_intent_id text,
      failure_code text,
      failure_message text,
      tries int4 not null default 0,
      next_attempt_at timestamptz not null default now(),
      created_at timestamptz not null default now(),
      updated_at timestamptz not null default now(),
      completed_at timestamptz,
      constraint auto_top_up_attempts_status_known check (
        status in ('pending', 'processing', 'succeeded', 'failed', 'skipped'))
    )`.execute(db);
  await sql`create unique index auto_top_up_attempts_one_in_flight on credits.auto_top_up_attempts (user_id)
             where status in ('pending', 'processing')`.execute(db);
  await sql`create unique index auto_top_up_attempts_purchase on credits.auto_top_up_attempts (purchase_id)
             where purchase_id is not null`.execute(db);
  await sql`create index auto_top_up_attempts_due on credits.auto_top_up_attempts (next_attempt_at)
             where status = 'pending'`.execute(db);
  await sql`create index auto_top_up_attempts_history on credits.auto_top_up_attempts (user_id, created_at desc)`.execute(
    db,
  );

  // A stub: the live body is applied from the function file after the migrations. One call per INSERT
  // statement however many ledger rows it writes, like the balance alerts.
  await sql`create function credits.auto_top_up_crossings() returns trigger language plpgsql as $$ begin return null; end $$`.execute(
    db,
  );
  await sql`
    create trigger transactions_auto_top_up after insert on credits.transactions
      referencing new table as new_rows for each statement execute function credits.auto_top_up_crossings()`.execute(
    db,
  );
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop trigger transactions_auto_top_up on credits.transactions`.execute(db);
  await sql`drop function credits.auto_top_up_crossings()`.execute(db);
  await sql`drop table credits.auto_top_up_attempts`.execute(db);
  await sql`drop table credits.auto_top_up`.execute(db);
}
