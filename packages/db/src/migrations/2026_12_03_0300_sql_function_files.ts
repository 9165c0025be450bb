import { type Kysely, sql } from 'kysely';

// Frozen. From here on the SQL functions live as one file each in packages/db/src/functions and are applied
// after the migrations whenever their text changes (applySqlFunctions); this table remembers what was
// applied. credits.debit_many is gone: coalesced debits go through credits.use_batch like every other
// personal usage debit, so the refusal and replay rules are written once.
export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table credits.sql_functions (
      name text primary key,
      sha256 text not null,
      applied_at timestamptz not null default now()
    )`.execute(db);
  await sql`drop function credits.debit_many(text, jsonb)`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table credits.sql_functions`.execute(db);
}
