import pg from 'pg';
import { eventually } from './webhook-receiver.ts';

type Statement = [text: string, values?: unknown[]];

/**
 * A lock-order check with two sessions (Postgres only): another session begins, runs `first` (taking its
 * locks), then `work` starts here and is awaited until it waits on a lock; the other session then runs `then`
 * and commits. A `work` that took its locks in the other order deadlocks with `then` (one of them fails with
 * 40P01); in the same order it simply waited. Returns what `work` gave.
 */
export async function whileAnotherSession<T>(
  url: string,
  first: Statement,
  work: () => Promise<T>,
  then: Statement,
): Promise<T> {
  const other = new pg.Client({ connectionString: url });
  await other.connect();
  try {
    await other.query('begin');
    await other.query(...first);
    const working = work();
    working.catch(() => {}); // awaited below
    await eventually('the work to wait on a lock', async () => {
      await other.query('select pg_stat_clear_snapshot()');
      const { rows } = await other.query<{ waiting: number }>(
        `select count(*)::int as waiting from pg_stat_activity
          where datname = current_database() and wait_event_type = 'Lock'`,
      );
      return rows[0]!.waiting > 0 ? true : undefined;
    });
    await other.query(...then);
    await other.query('commit');
    return await working;
  } finally {
    await other.end();
  }
}
