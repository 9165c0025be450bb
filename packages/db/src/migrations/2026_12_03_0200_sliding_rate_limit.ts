import { type Kysely, sql } from 'kysely';

// Frozen. Per-address throttles count in a sliding window: the hits of the previous fixed window are kept
// and weighted by how much of it still overlaps the last `window` seconds, so a burst at the end of one
// window and the start of the next is not let through twice (hitRateLimit in queries/rate-limits.ts).
export async function up(db: Kysely<any>): Promise<void> {
  await sql`alter table gifts.rate_limits add column previous_hits int4 not null default 0`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`alter table gifts.rate_limits drop column previous_hits`.execute(db);
}
