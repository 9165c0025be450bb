import { type Kysely, sql } from 'kysely';

// Frozen: console sessions ended by a sign-out. A session is a signed cookie (nothing stored per sign-in), so a
// copy of the cookie taken before the operator signed out would otherwise stay good until it expires; its id
// is recorded here until then, and the console refuses it. Never imports application types.
export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table credits.admin_session_revocations (
      sid text primary key,
      expires_at timestamptz not null,
      revoked_at timestamptz not null default now()
    )`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table credits.admin_session_revocations`.execute(db);
}
