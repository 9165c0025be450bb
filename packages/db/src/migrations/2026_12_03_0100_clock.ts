import { type Kysely, sql } from 'kysely';

// Frozen. One clock for the guild limit windows (issue 13.3): credits.clock() is the database's
// clock_timestamp(), shifted by the session setting mana_credits.clock_offset when a test sets it (the server
// never does). Guild ledger rows are dated by it, the member's day counter is booked by the day of that row,
// and memberSpending reads "today" from it, so the check, the booking and reconcile agree on the day.
export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create function credits.clock() returns timestamptz language sql volatile as $$
      select clock_timestamp()
             + coalesce(nullif(current_setting('mana_credits.clock_offset', true), ''), '0 seconds')::interval
    $$`.execute(db);
  await sql`alter table credits.guild_transactions alter column created_at set default credits.clock()`.execute(
    db,
  );
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`alter table credits.guild_transactions alter column created_at set default clock_timestamp()`.execute(
    db,
  );
  await sql`drop function credits.clock()`.execute(db);
}
