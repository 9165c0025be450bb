import { type Kysely, sql } from 'kysely';

// Frozen. The history reads of issue 18 that cross users (internal.usage) select ledger rows by time alone,
// which no index served: every such read scanned the whole ledger (280 ms for one month of a 1,000,000-row
// ledger, growing with the ledger rather than the range). The ledger is append-only and dated at insert,
// so its rows lie on disk in created_at order and a BRIN index (the smallest and min/max of created_at per
// range of 128 pages) narrows the scan to the pages of the range: 24 kB for 1,000,000 rows, next to nothing
// per insert on the money path, one month in 67 ms. Reads of one user or one guild keep using
// transactions_user_history and guild_transactions_history. A page range is summarized by VACUUM (autovacuum
// runs on inserts too) or, with autosummarize, as soon as the next range is started; until then it is
// scanned whatever the range asked, which costs only the newest pages.
export async function up(db: Kysely<any>): Promise<void> {
  await sql`create index transactions_created_at_brin on credits.transactions using brin (created_at) with (autosummarize = on)`.execute(
    db,
  );
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop index credits.transactions_created_at_brin`.execute(db);
}
