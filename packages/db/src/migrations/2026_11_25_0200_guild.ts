import { type Kysely, sql } from 'kysely';

// Frozen: guild pool usage counters. Never imports application types.

export async function up(db: Kysely<any>): Promise<void> {
  // What each member spent from a pool per UTC day, written in the same transaction as the debit. The
  // month is the sum of at most 31 rows, so a limit check costs one short index range scan.
  await sql`
    create table credits.guild_member_usage (
      organization_id text not null,
      user_id text not null,
      day date not null,
      spent int8 not null default 0,
      primary key (organization_id, user_id, day),
      constraint guild_member_usage_spent_non_negative check (spent >= 0)
    )`.execute(db);

  // The spendable pool balance (balance − reserved) right after the entry: what a replay answers.
  await sql`alter table credits.guild_transactions add column available_after int8`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`alter table credits.guild_transactions drop column available_after`.execute(db);
  await sql`drop table credits.guild_member_usage`.execute(db);
}
