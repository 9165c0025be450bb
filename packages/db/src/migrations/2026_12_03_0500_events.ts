import { type Kysely, sql } from 'kysely';

// Frozen: events out (issue 16) — the transactional outbox, balance alert settings, webhook endpoints and
// their deliveries. Never imports application types.
//
// An event is a row of credits.events, written in the transaction of the change it reports: balance
// crossings by statement triggers on the two ledgers, reservation expiry by a row trigger on
// credits.reservations, everything else by the domain code (packages/db/src/queries/events.ts). The trigger
// functions' live bodies are the files packages/db/src/functions/balance_alerts.sql and
// reservation_events.sql (applied after the migrations); here they are created as stubs that do nothing, so
// the triggers can name them.
//
// `position` is the order in which the relay (credits.relay_events, functions/relay_events.sql) saw the events
// committed: null until then. Readers page by it and can never miss an event (see relay_events.sql).

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table credits.events (
      id uuid primary key default gen_random_uuid(),
      seq int8 generated always as identity,
      type text not null,
      user_id text,
      guild_id text,
      data jsonb not null,
      created_at timestamptz not null default clock_timestamp(),
      position int8,
      relayed_at timestamptz,
      constraint events_type_format check (type ~ '^[a-z]+(\\.[a-z_]+)+$'),
      constraint events_data_object check (jsonb_typeof(data) = 'object'),
      constraint events_relayed check ((position is null) = (relayed_at is null))
    )`.execute(db);
  await sql`create unique index events_position on credits.events (position) where position is not null`.execute(
    db,
  );
  // Small however long the history grows: only events the relay has not numbered yet.
  await sql`create index events_unrelayed on credits.events (seq) where position is null`.execute(db);

  // The low-balance threshold of one account: a user's balance ('user') or a guild pool ('guild'). A row with
  // a null threshold turns alerts off for that account; no row = the default of credits.event_settings.
  await sql`
    create table credits.alert_settings (
      account_kind text not null,
      account_id text not null,
      low_balance_threshold int8,
      updated_at timestamptz not null default now(),
      primary key (account_kind, account_id),
      constraint alert_settings_kind_known check (account_kind in ('user', 'guild')),
      constraint alert_settings_threshold_range check (
        low_balance_threshold is null or (low_balance_threshold >= 0 and low_balance_threshold <= 9007199254740991))
    )`.execute(db);

  // One row: what the servers' environment says (LOW_BALANCE_THRESHOLD), written by them, read by the
  // triggers (which cannot see the environment).
  await sql`
    create table credits.event_settings (
      id boolean primary key default true,
      low_balance_threshold int8,
      updated_at timestamptz not null default now(),
      constraint event_settings_one_row check (id),
      constraint event_settings_threshold_range check (
        low_balance_threshold is null or (low_balance_threshold >= 0 and low_balance_threshold <= 9007199254740991))
    )`.execute(db);
  await sql`insert into credits.event_settings (id) values (true)`.execute(db);

  await sql`
    create table credits.webhooks (
      id uuid primary key default gen_random_uuid(),
      url text not null,
      description text,
      event_types text[],
      secret text not null,
      previous_secret text,
      previous_secret_expires_at timestamptz,
      enabled boolean not null default true,
      disabled_reason text,
      disabled_at timestamptz,
      failing_since timestamptz,
      created_at timestamptz not null default clock_timestamp(),
      updated_at timestamptz not null default clock_timestamp(),
      constraint webhooks_previous_secret check ((previous_secret is null) = (previous_secret_expires_at is null))
    )`.execute(db);

  // One delivery of one event to one endpoint ('original' from the relay's fan-out, or 'replay'). The worker
  // claims due rows with SKIP LOCKED and leases them by moving next_attempt_at past the send's timeout.
  await sql`
    create table credits.webhook_deliveries (
      id uuid primary key default gen_random_uuid(),
      webhook_id uuid not null references credits.webhooks (id) on delete cascade,
      event_id uuid not null references credits.events (id),
      kind text not null default 'original',
      status text not null default 'pending',
      attempts int4 not null default 0,
      next_attempt_at timestamptz not null default now(),
      last_attempt_at timestamptz,
      last_status int4,
      last_error text,
      created_at timestamptz not null default clock_timestamp(),
      delivered_at timestamptz,
      constraint webhook_deliveries_kind_known check (kind in ('original', 'replay')),
      constraint webhook_deliveries_status_known check (status in ('pending', 'delivered', 'failed')),
      constraint webhook_deliveries_attempts check (attempts >= 0)
    )`.execute(db);
  await sql`create unique index webhook_deliveries_one_original on credits.webhook_deliveries (webhook_id, event_id) where kind = 'original'`.execute(
    db,
  );
  await sql`create index webhook_deliveries_due on credits.webhook_deliveries (next_attempt_at) where status = 'pending'`.execute(
    db,
  );
  await sql`create index webhook_deliveries_history on credits.webhook_deliveries (webhook_id, created_at desc, id desc)`.execute(
    db,
  );
  await sql`create index webhook_deliveries_event on credits.webhook_deliveries (event_id)`.execute(db);

  // Stubs: the live bodies are applied from the function files after the migrations.
  for (const name of ['personal_balance_alerts', 'guild_balance_alerts', 'reservation_expired_event']) {
    await sql
      .raw(
        `create function credits.${name}() returns trigger language plpgsql as $$ begin return null; end $$`,
      )
      .execute(db);
  }
  // Statement triggers: one call per INSERT statement however many ledger rows it writes (use_batch writes a
  // whole batch in one), seeing them all in the transition table.
  await sql`
    create trigger transactions_balance_alerts after insert on credits.transactions
      referencing new table as new_rows for each statement execute function credits.personal_balance_alerts()`.execute(
    db,
  );
  await sql`
    create trigger guild_transactions_balance_alerts after insert on credits.guild_transactions
      referencing new table as new_rows for each statement execute function credits.guild_balance_alerts()`.execute(
    db,
  );
  // Only a hold that expires runs the function (the WHEN is evaluated without calling it).
  await sql`
    create trigger reservations_expired_event after update of status on credits.reservations
      for each row when (old.status = 'open' and new.status = 'expired')
      execute function credits.reservation_expired_event()`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop trigger reservations_expired_event on credits.reservations`.execute(db);
  await sql`drop trigger guild_transactions_balance_alerts on credits.guild_transactions`.execute(db);
  await sql`drop trigger transactions_balance_alerts on credits.transactions`.execute(db);
  for (const name of ['personal_balance_alerts', 'guild_balance_alerts', 'reservation_expired_event']) {
    await sql.raw(`drop function credits.${name}()`).execute(db);
  }
  await sql`drop table credits.webhook_deliveries`.execute(db);
  await sql`drop table credits.webhooks`.execute(db);
  await sql`drop table credits.event_settings`.execute(db);
  await sql`drop table credits.alert_settings`.execute(db);
  await sql`drop table credits.events`.execute(db);
}
