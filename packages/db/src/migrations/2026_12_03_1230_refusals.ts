import { type Kysely, sql } from 'kysely';

// Frozen: refused keyed requests. Never imports application types.
//
// A keyed debit or hold that is refused (too few credits in the account or pool, a member limit) records the
// refusal under its key, so the key is taken by the refusal as a posted row takes it: a later call with the
// same key — a retry, or the original attempt arriving late from a paused instance — is answered with this
// refusal (another payload: CONFLICT) and never charges. Keys live in three spaces, as their unique indexes
// say: 'personal' (credits.transactions: credits.use, useBatch items, gifts.create), 'guild'
// (credits.guild_transactions, per guild and member: guild.fund, guild.use) and 'hold' (credits.reservations:
// personal and pool holds). `organization_id` is part of the key in the guild space only.
//
// Atomic by lock, not by this index alone: a refusal is written under the row lock of the account that
// refused, after checking that no row took its key (credits.record_refusal), and every keyed debit or hold
// asks credits.assert_not_refused after taking that lock (live bodies: packages/db/src/functions/refusals.sql).
// Refusals move no money; like the ledger they are never changed or removed.
export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table credits.refusals (
      id uuid primary key default gen_random_uuid(),
      key_space text not null,
      user_id text not null,
      organization_id text,
      idempotency_key text not null,
      request_hash text not null,
      reason text not null,
      details jsonb not null,
      created_at timestamptz not null default now(),
      constraint refusals_key_space_known check (key_space in ('personal', 'guild', 'hold')),
      constraint refusals_guild_keys_name_their_guild check ((key_space = 'guild') = (organization_id is not null))
    )`.execute(db);
  await sql`create unique index refusals_key on credits.refusals (user_id, idempotency_key, key_space, organization_id)
             nulls not distinct`.execute(db);
  await sql`create trigger refusals_immutable before update or delete on credits.refusals for each row execute function credits.refuse_ledger_change()`.execute(
    db,
  );
  await sql`create trigger refusals_no_truncate before truncate on credits.refusals for each statement execute function credits.refuse_ledger_change()`.execute(
    db,
  );
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table credits.refusals`.execute(db);
}
