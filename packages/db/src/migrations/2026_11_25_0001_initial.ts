import { type Kysely, sql } from 'kysely';

// Frozen: this migration describes the schema as of 2026-11-25 and never imports application types.
// Amounts are int8; every table that holds money has a CHECK that keeps it non-negative.

export async function up(db: Kysely<any>): Promise<void> {
  await sql`create schema if not exists credits`.execute(db);
  await sql`create schema if not exists gifts`.execute(db);

  await sql`
    create table credits.balances (
      user_id text primary key,
      balance int8 not null default 0,
      reserved int8 not null default 0,
      total_earned int8 not null default 0,
      total_spent int8 not null default 0,
      version int4 not null default 0,
      created_at timestamptz not null default now(),
      updated_at timestamptz not null default now(),
      constraint balances_balance_non_negative check (balance >= 0),
      constraint balances_balance_safe_integer check (balance <= 9007199254740991),
      constraint balances_reserved_within_balance check (reserved >= 0 and reserved <= balance)
    )`.execute(db);

  await sql`
    create table credits.transactions (
      id uuid primary key default gen_random_uuid(),
      user_id text not null,
      type text not null,
      status text not null default 'completed',
      amount int8 not null,
      balance_before int8 not null,
      balance_after int8 not null,
      available_after int8,
      app_id text,
      description text not null default '',
      metadata jsonb,
      idempotency_key text,
      request_hash text,
      reference_transaction_id uuid,
      guild_id text,
      created_at timestamptz not null default clock_timestamp(),
      completed_at timestamptz default clock_timestamp(),
      constraint transactions_type_known check (type in ('purchase', 'usage', 'refund', 'gift', 'guild_funding', 'grant')),
      constraint transactions_status_known check (status in ('pending', 'completed', 'failed')),
      constraint transactions_amount_non_zero check (amount <> 0),
      constraint transactions_balance_arithmetic check (balance_after = balance_before + amount)
    )`.execute(db);
  await sql`create unique index transactions_user_idempotency_key on credits.transactions (user_id, idempotency_key) where idempotency_key is not null`.execute(
    db,
  );
  await sql`create index transactions_user_history on credits.transactions (user_id, created_at desc, id desc)`.execute(
    db,
  );
  await sql`create index transactions_reference on credits.transactions (reference_transaction_id) where reference_transaction_id is not null`.execute(
    db,
  );

  // The ledger is append-only: the database itself refuses to change or remove a row.
  await sql`
    create function credits.refuse_ledger_change() returns trigger language plpgsql as $$
    begin
      raise exception 'ledger rows are immutable: % on %.% refused', tg_op, tg_table_schema, tg_table_name
        using errcode = 'insufficient_privilege';
    end
    $$`.execute(db);
  await sql`create trigger transactions_immutable before update or delete on credits.transactions for each row execute function credits.refuse_ledger_change()`.execute(
    db,
  );
  await sql`create trigger transactions_no_truncate before truncate on credits.transactions for each statement execute function credits.refuse_ledger_change()`.execute(
    db,
  );

  await sql`
    create table credits.packages (
      id uuid primary key default gen_random_uuid(),
      name text not null,
      description text,
      credits int8 not null,
      price_euro_cents int8 not null,
      stripe_price_id text,
      active boolean not null default true,
      sort_order int4 not null default 0,
      metadata jsonb,
      created_at timestamptz not null default now(),
      updated_at timestamptz not null default now(),
      constraint packages_credits_positive check (credits > 0),
      constraint packages_price_non_negative check (price_euro_cents >= 0)
    )`.execute(db);

  await sql`
    create table credits.purchases (
      id uuid primary key default gen_random_uuid(),
      user_id text not null,
      package_id uuid references credits.packages (id),
      credits int8 not null,
      price_euro_cents int8 not null,
      currency text not null default 'eur',
      stripe_payment_intent_id text unique,
      stripe_checkout_session_id text unique,
      stripe_customer_id text,
      status text not null default 'pending',
      metadata jsonb,
      created_at timestamptz not null default clock_timestamp(),
      completed_at timestamptz,
      constraint purchases_status_known check (status in ('pending', 'completed', 'failed', 'cancelled')),
      constraint purchases_credits_positive check (credits > 0)
    )`.execute(db);
  await sql`create index purchases_user_history on credits.purchases (user_id, created_at desc, id desc)`.execute(
    db,
  );

  await sql`
    create table credits.stripe_customers (
      user_id text primary key,
      stripe_customer_id text not null unique,
      email text,
      created_at timestamptz not null default now()
    )`.execute(db);

  // One row per Stripe event that was applied, written in the same transaction as its effect.
  await sql`
    create table credits.stripe_events (
      id text primary key,
      type text not null,
      processed_at timestamptz not null default now()
    )`.execute(db);

  await sql`
    create table credits.usage_stats (
      user_id text not null,
      app_id text not null,
      date date not null,
      credits_used int8 not null default 0,
      primary key (user_id, app_id, date)
    )`.execute(db);

  await sql`
    create table credits.guild_pools (
      organization_id text primary key,
      balance int8 not null default 0,
      reserved int8 not null default 0,
      total_funded int8 not null default 0,
      total_spent int8 not null default 0,
      version int4 not null default 0,
      created_at timestamptz not null default now(),
      updated_at timestamptz not null default now(),
      constraint guild_pools_balance_non_negative check (balance >= 0),
      constraint guild_pools_balance_safe_integer check (balance <= 9007199254740991),
      constraint guild_pools_reserved_within_balance check (reserved >= 0 and reserved <= balance)
    )`.execute(db);

  await sql`
    create table credits.guild_spending_limits (
      id uuid primary key default gen_random_uuid(),
      organization_id text not null,
      user_id text not null,
      daily_limit int8,
      monthly_limit int8,
      created_at timestamptz not null default now(),
      updated_at timestamptz not null default now(),
      unique (organization_id, user_id),
      constraint guild_spending_limits_non_negative check (
        (daily_limit is null or daily_limit >= 0) and (monthly_limit is null or monthly_limit >= 0))
    )`.execute(db);

  await sql`
    create table credits.guild_transactions (
      id uuid primary key default gen_random_uuid(),
      organization_id text not null,
      user_id text not null,
      type text not null,
      amount int8 not null,
      balance_before int8 not null,
      balance_after int8 not null,
      app_id text,
      description text not null default '',
      metadata jsonb,
      idempotency_key text,
      request_hash text,
      created_at timestamptz not null default clock_timestamp(),
      constraint guild_transactions_type_known check (type in ('funding', 'usage', 'refund')),
      constraint guild_transactions_amount_non_zero check (amount <> 0),
      constraint guild_transactions_balance_arithmetic check (balance_after = balance_before + amount)
    )`.execute(db);
  await sql`create unique index guild_transactions_idempotency_key on credits.guild_transactions (organization_id, user_id, idempotency_key) where idempotency_key is not null`.execute(
    db,
  );
  await sql`create index guild_transactions_history on credits.guild_transactions (organization_id, created_at desc, id desc)`.execute(
    db,
  );
  await sql`create index guild_transactions_member_history on credits.guild_transactions (organization_id, user_id, created_at desc, id desc)`.execute(
    db,
  );
  await sql`create trigger guild_transactions_immutable before update or delete on credits.guild_transactions for each row execute function credits.refuse_ledger_change()`.execute(
    db,
  );
  await sql`create trigger guild_transactions_no_truncate before truncate on credits.guild_transactions for each statement execute function credits.refuse_ledger_change()`.execute(
    db,
  );

  await sql`
    create table gifts.gift_codes (
      id uuid primary key default gen_random_uuid(),
      code text not null unique,
      short_url text not null,
      creator_id text not null,
      creator_name text,
      total_credits int8 not null,
      credits_per_portion int8 not null,
      total_portions int4 not null default 1,
      claimed_portions int4 not null default 0,
      type text not null,
      status text not null default 'active',
      target_email text,
      riddle_question text,
      riddle_answer_hash text,
      message text,
      expires_at timestamptz not null,
      created_at timestamptz not null default clock_timestamp(),
      updated_at timestamptz not null default now(),
      constraint gift_codes_type_known check (type in ('simple', 'personalized', 'split', 'first_come', 'riddle')),
      constraint gift_codes_status_known check (status in ('active', 'depleted', 'expired', 'cancelled', 'refunded')),
      constraint gift_codes_portions check (total_portions >= 1 and claimed_portions >= 0 and claimed_portions <= total_portions),
      constraint gift_codes_credits_positive check (credits_per_portion >= 1 and total_credits >= credits_per_portion * total_portions)
    )`.execute(db);
  await sql`create index gift_codes_creator on gifts.gift_codes (creator_id, created_at desc, id desc)`.execute(
    db,
  );
  await sql`create index gift_codes_active_expiry on gifts.gift_codes (expires_at) where status = 'active'`.execute(
    db,
  );

  await sql`
    create table gifts.gift_redemptions (
      id uuid primary key default gen_random_uuid(),
      gift_code_id uuid not null references gifts.gift_codes (id),
      redeemer_user_id text not null,
      status text not null,
      credits_received int8 not null default 0,
      portion_number int4,
      credit_transaction_id uuid,
      source_app_id text,
      created_at timestamptz not null default clock_timestamp(),
      constraint gift_redemptions_status_known check (status in ('success', 'failed_wrong_answer', 'failed_wrong_user',
        'failed_depleted', 'failed_expired', 'failed_already_claimed'))
    )`.execute(db);
  // At most one successful claim per user per gift, and each portion claimed once: enforced by the database.
  await sql`create unique index gift_redemptions_one_success_per_user on gifts.gift_redemptions (gift_code_id, redeemer_user_id) where status = 'success'`.execute(
    db,
  );
  await sql`create unique index gift_redemptions_one_per_portion on gifts.gift_redemptions (gift_code_id, portion_number) where status = 'success'`.execute(
    db,
  );
  await sql`create index gift_redemptions_redeemer on gifts.gift_redemptions (redeemer_user_id, created_at desc, id desc)`.execute(
    db,
  );
  await sql`create index gift_redemptions_attempts on gifts.gift_redemptions (gift_code_id, redeemer_user_id, created_at)`.execute(
    db,
  );
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop schema gifts cascade`.execute(db);
  await sql`drop schema credits cascade`.execute(db);
}
