import { createDb, type DbHandle, hitRateLimit, migrateToLatest } from '@mana-credits/db';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';

// The windows are read on credits.clock(), which this file moves for its database session (one connection:
// mana_credits.clock_offset is a session setting) instead of waiting for real windows to pass.

let database: TestDatabase;
let handle: DbHandle;
beforeAll(async () => {
  database = await createTestDatabase();
  handle = await createDb({
    databaseUrl: database.url,
    dataDir: 'memory://',
    pglite: database.pglite,
    poolSize: 1,
  });
  await migrateToLatest(handle.db);
});
afterAll(async () => {
  await sql`reset mana_credits.clock_offset`.execute(handle.db);
  await handle.close();
  await database.drop();
});

/** From now on credits.clock() of this session reads `at` plus the real time passed since. */
async function setClock(at: Date) {
  const { rows } = await sql<{ offset: string }>`
    select (${at.toISOString()}::timestamptz - clock_timestamp())::text as offset`.execute(handle.db);
  await sql`select set_config('mana_credits.clock_offset', ${rows[0]!.offset}, false)`.execute(handle.db);
}

describe('hitRateLimit: a sliding window shared through the database', () => {
  it('counts hits in the window, and a burst across a window boundary is still counted', async () => {
    const window = 2;
    // A boundary of the fixed windows (every 2 s since 2000-01-01, i.e. even epoch seconds).
    const boundary = Date.parse('2031-01-01T00:00:00Z');
    const at = (ms: number) => new Date(boundary + ms);
    // Right after the boundary.
    await setClock(at(50));
    expect(await hitRateLimit(handle.db, 'a', window)).toBe(1);
    expect(await hitRateLimit(handle.db, 'a', window)).toBe(2);
    expect(await hitRateLimit(handle.db, 'b', window)).toBe(1);
    // Late in the window: 8 more hits, then the next window starts.
    await setClock(at(window * 1000 - 300));
    for (let i = 0; i < 8; i++) await hitRateLimit(handle.db, 'a', window);
    await setClock(at(window * 1000 + 100));
    // A fixed window would say 1 here; the last 2 s hold almost all of the previous window's 10 hits.
    expect(await hitRateLimit(handle.db, 'a', window)).toBeGreaterThanOrEqual(9);
    // Two windows later nothing is left.
    await setClock(at(window * 3000 + 100));
    expect(await hitRateLimit(handle.db, 'a', window)).toBe(1);
  });
});
