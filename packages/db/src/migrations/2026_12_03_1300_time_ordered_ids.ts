import { type Kysely, sql } from 'kysely';

// Frozen: new rows of both ledgers get time-ordered ids (credits.uuid_v7, live body in
// packages/db/src/functions/ids.sql), so their primary key indexes grow at the right edge instead of taking
// a random leaf page per row (issue 17: the ledger INSERT of a batch of debits touched one random page of
// transactions_pkey per row). Existing ids stay as they are. The function is created here as a stub (a random
// uuid is a valid id) because the function files are applied after the migrations. Never imports
// application types.
export async function up(db: Kysely<any>): Promise<void> {
  await sql`create function credits.uuid_v7() returns uuid language sql volatile as $$ select gen_random_uuid() $$`.execute(
    db,
  );
  await sql`alter table credits.transactions alter column id set default credits.uuid_v7()`.execute(db);
  await sql`alter table credits.guild_transactions alter column id set default credits.uuid_v7()`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`alter table credits.guild_transactions alter column id set default gen_random_uuid()`.execute(db);
  await sql`alter table credits.transactions alter column id set default gen_random_uuid()`.execute(db);
  await sql`drop function credits.uuid_v7()`.execute(db);
}
