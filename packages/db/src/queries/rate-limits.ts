import { type Kysely, sql } from 'kysely';
import type { Database } from '../database.ts';

/**
 * Counts one hit for `bucket` and returns the hits in the last `windowSeconds` (sliding window): the current
 * fixed window's hits plus the previous window's, weighted by how much of it the last `windowSeconds` still
 * cover. One upsert, so every server instance shares the count; a new window moves the row on in place.
 * Windows are read on credits.clock() (the database's clock, which a test can shift for its session), once.
 */
export async function hitRateLimit(
  db: Kysely<Database>,
  bucket: string,
  windowSeconds: number,
): Promise<number> {
  const { rows } = await sql<{ hits: number }>`
    with clock as (select credits.clock() as at),
    w as (
      select date_bin(make_interval(secs => ${windowSeconds}), clock.at, timestamptz '2000-01-01') as start from clock
    )
    insert into gifts.rate_limits as r (bucket, window_start, hits, previous_hits)
    select ${bucket}, w.start, 1, 0 from w
    on conflict (bucket) do update
      set previous_hits = case
            when r.window_start = excluded.window_start then r.previous_hits
            when r.window_start = excluded.window_start - make_interval(secs => ${windowSeconds}) then r.hits
            else 0 end,
          hits = case when r.window_start = excluded.window_start then r.hits + 1 else 1 end,
          window_start = excluded.window_start
    returning hits + ceil(previous_hits
                          * (1 - extract(epoch from (select at from clock) - window_start) / ${windowSeconds}))::int4 as hits`.execute(
    db,
  );
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
