import { setTimeout as sleep } from 'node:timers/promises';
import { createDb, type DbHandle, hitRateLimit, migrateToLatest } from '@mana-credits/db';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';

let database: TestDatabase;
let handle: DbHandle;
beforeAll(async () => {
  database = await createTestDatabase();
  handle = await createDb({
    databaseUrl: database.url,
    dataDir: 'memory://',
    pglite: database.pglite,
  });
  await migrateToLatest(handle.db);
});
afterAll(async () => {
  await handle.close();
  await database.drop();
});

describe('hitRateLimit: a sliding window shared through the database', () => {
  it('counts hits in the window, and a burst across a window boundary is still counted', async () => {
    const window = 2;
    // Start right after a boundary of the fixed windows (every 2 s since 2000-01-01, i.e. even epoch seconds).
    await sleep(window * 1000 - (Date.now() % (window * 1000)) + 50);
    expect(await hitRateLimit(handle.db, 'a', window)).toBe(1);
    expect(await hitRateLimit(handle.db, 'a', window)).toBe(2);
    expect(await hitRateLimit(handle.db, 'b', window)).toBe(1);
    // Late in the window: 8 more hits, then the next window starts.
    await sleep(window * 1000 - (Date.now() % (window * 1000)) - 300);
    // The boundary is fixed before the hits: on a loaded machine they may run past it, and then they count in
    // the new window instead (fully), but the check must still come right after this boundary, not the next.
    const boundary = Date.now() - (Date.now() % (window * 1000)) + window * 1000;
    for (let i = 0; i < 8; i++) await hitRateLimit(handle.db, 'a', window);
    await sleep(Math.max(0, boundary + 100 - Date.now()));
    // A fixed window would say 1 here; the last 2 s hold almost all of the previous window's 10 hits.
    expect(await hitRateLimit(handle.db, 'a', window)).toBeGreaterThanOrEqual(9);
    // Two windows later nothing is left.
    await sleep(window * 2000);
    expect(await hitRateLimit(handle.db, 'a', window)).toBe(1);
  });
});
