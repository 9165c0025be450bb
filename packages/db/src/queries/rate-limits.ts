import { type Kysely, sql } from 'kysely';
import type { Database } from '../database.ts';

/**
 * Counts one hit in a fixed window of `windowSeconds` for `bucket` and returns the hits so far in the current
 * window: one upsert, so every server instance shares the count. A new window resets the row in place.
 */
export async function hitRateLimit(
  db: Kysely<Database>,
  bucket: string,
  windowSeconds: number,
): Promise<number> {
  const { rows } = await sql<{ hits: number }>`
    insert into gifts.rate_limits as r (bucket, window_start, hits)
    values (${bucket}, date_bin(make_interval(secs => ${windowSeconds}), now(), timestamptz '2000-01-01'), 1)
    on conflict (bucket) do update
      set hits = case when r.window_start = excluded.window_start then r.hits + 1 else 1 end,
          window_start = excluded.window_start
    returning hits`.execute(db);
  return rows[0]!.hits;
}

/** Drops counters whose window ended long ago; returns how many. */
export async function pruneRateLimits(db: Kysely<Database>, olderThanSeconds: number): Promise<number> {
  const result = await db
    .deleteFrom('gifts.rate_limits')
    .where('window_start', '<', sql<Date>`now() - make_interval(secs => ${olderThanSeconds})`)
    .executeTakeFirst();
  return Number(result.numDeletedRows);
}
