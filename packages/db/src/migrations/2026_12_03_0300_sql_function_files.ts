import { type Kysely, sql } from 'kysely';

// Frozen. From here on the SQL functions live as one file each in packages/db/src/functions and are applied
// after the migrations whenever their text changes (applySqlFunctions); this table remembers what was
// applied. credits.debit_many is no longer called (coalesced debits go through credits.use_batch like every
// other personal usage debit); it stays for instances of the previous release during a rolling deploy
// (migrations are additive) and is dropped by a later migration.
export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table credits.sql_functions (
      name text primary key,
      sha256 text not null,
      applied_at timestamptz not null default now()
    )`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table credits.sql_functions`.execute(db);
}
