import { type Kysely, sql } from 'kysely';

// Frozen: an operator action's key (its form nonce) is claimed, with the fingerprint of its request, before the
// action runs. credits.admin_actions records an action only after it ran (its row holds the result, and rows
// are never changed), so two submits of one nonce for different targets could both act before either was
// recorded; the claim makes the second a CONFLICT before it does anything. A claim whose action was refused
// (nothing done) is removed, so the corrected form can be sent again. Never imports application types.
export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table credits.admin_action_claims (
      idempotency_key text primary key,
      request_hash text not null,
      created_at timestamptz not null default now()
    )`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table credits.admin_action_claims`.execute(db);
}
