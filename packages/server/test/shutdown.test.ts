import { randomUUID } from 'node:crypto';
import { createDb, type DbHandle } from '@mana-credits/db';
import { TRPCClientError } from '@trpc/client';
import { sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestAuthServer } from './helpers/auth-server.ts';
import { createTestDatabase, createTestDataDir, type TestDatabase } from './helpers/database.ts';
import { expectLedgerConsistent, ledgerSum } from './helpers/invariants.ts';
import type { Client } from './helpers/server.ts';
import { type ServerProcess, spawnServer as spawnProcess, waitFor } from './helpers/server-process.ts';

/**
 * The real process (helpers/server-process.ts: the production bundle, built from the sources), on a fresh
 * database, signalled like an orchestrator would.
 */
const onPostgres = Boolean(process.env.DATABASE_URL);
/** Kysely's migration lock (an advisory lock in the migrated database). */
const KYSELY_MIGRATION_LOCK = '3853314791062309107';

let auth: TestAuthServer;
beforeAll(async () => {
  auth = await TestAuthServer.start();
});
afterAll(async () => {
  await auth.close();
});

/**
 * A database the child can use and the test can open afterwards: Postgres, or a PGlite directory as initdb
 * left it (the child runs the migrations, as on a first start), or, where the test is not about the first
 * start (`migrated`), as the migrations left it.
 */
async function freshDatabase(
  options: { migrated?: boolean } = {},
): Promise<TestDatabase & { open(): Promise<DbHandle> }> {
  if (onPostgres) {
    const database = await createTestDatabase();
    return { ...database, open: () => createDb({ databaseUrl: database.url, poolSize: 2 }) };
  }
  const database = await createTestDataDir({ empty: !options.migrated });
  return { ...database, open: () => createDb({ dataDir: database.env.DATA_DIR }) };
}

const spawnServer = (database: TestDatabase, env: Record<string, string> = {}) =>
  spawnProcess(database, {
    authUrl: auth.url,
    appId: 'shutdown-test',
    env: { SHUTDOWN_TIMEOUT_MS: '30000', ...env },
  });

/** Sessions of this database waiting for a lock (the stats snapshot is cleared: the caller is in a transaction). */
async function lockWaiters(client: pg.Client): Promise<number> {
  await client.query('select pg_stat_clear_snapshot()');
  const { rows } = await client.query<{ waiting: number }>(
    `select count(*)::int as waiting from pg_stat_activity
      where datname = current_database() and wait_event_type = 'Lock'`,
  );
  return rows[0]!.waiting;
}

const logged = (server: ServerProcess, message: string) => server.logs.some((line) => line.includes(message));

/** What a call ended as, seen from the client. */
type Outcome =
  | { kind: 'ok'; key: string; transactionId: string }
  | { kind: 'http'; key: string; status: number; reason: unknown }
  | { kind: 'network'; key: string; code: string };

function classify(key: string, error: unknown): Outcome {
  if (error instanceof TRPCClientError && typeof error.data?.httpStatus === 'number') {
    return { kind: 'http', key, status: error.data.httpStatus, reason: error.data.reason };
  }
  let cause: unknown = error;
  while (cause instanceof Error && cause.cause) cause = cause.cause;
  const code = (cause as { code?: string } | undefined)?.code ?? String(cause);
  return { kind: 'network', key, code };
}

async function spend(client: Client, userId: string, key: string): Promise<Outcome> {
  try {
    const result = await client.internal.credits.use.mutate({
      userId,
      amount: 1,
      appId: 'load',
      description: key,
      idempotencyKey: key,
    });
    return { kind: 'ok', key, transactionId: result.transactionId };
  } catch (error) {
    return classify(key, error);
  }
}

/** Every acknowledged call is in the ledger under its key; every failed one never happened. */
async function expectLedgerMatches(handle: DbHandle, userId: string, outcomes: Outcome[], granted: number) {
  const rows = await handle.db
    .selectFrom('credits.transactions')
    .select(['id', 'idempotency_key'])
    .where('user_id', '=', userId)
    .where('type', '=', 'usage')
    .execute();
  const byKey = new Map(rows.map((row) => [row.idempotency_key, row.id]));
  const acknowledged = outcomes.filter((o) => o.kind === 'ok');
  for (const outcome of acknowledged) expect(byKey.get(outcome.key), outcome.key).toBe(outcome.transactionId);
  for (const outcome of outcomes.filter((o) => o.kind !== 'ok')) {
    expect(byKey.has(outcome.key), `refused ${outcome.key} left no row`).toBe(false);
  }
  expect(rows).toHaveLength(acknowledged.length);
  expect(await ledgerSum(handle.db, userId)).toBe(granted - acknowledged.length);
  const balance = await handle.db
    .selectFrom('credits.balances')
    .select('balance')
    .where('user_id', '=', userId)
    .executeTakeFirstOrThrow();
  expect(balance.balance).toBe(granted - acknowledged.length);
  await expectLedgerConsistent(handle.db);
}

describe('graceful shutdown of the real process', () => {
  it('SIGTERM in the middle of parallel load: no failed accepted request, no lost ledger row, exit 0', async () => {
    const database = await freshDatabase({ migrated: true });
    try {
      const server = await spawnServer(database, { SHUTDOWN_DRAIN_MS: '1000' });
      await waitFor('migrations', () => (logged(server, 'migrations done') ? true : undefined));
      const userId = `load-${randomUUID()}`;
      const granted = 1_000_000;
      await server.client.internal.credits.grant.mutate({
        userId,
        amount: granted,
        reason: 'load',
        idempotencyKey: 'g',
      });

      const outcomes: Outcome[] = [];
      const failedBeforeSignal: Outcome[] = [];
      let signalled = false;
      /** The readiness answers a load balancer would have seen from SIGTERM until the listener closed. */
      const probes: Array<number | 'refused'> = [];
      let probing: Promise<void> | undefined;
      const probeReadiness = async () => {
        while (probes.at(-1) !== 'refused') {
          probes.push(
            await fetch(`${server.url}/ready`).then(
              (r) => r.status,
              () => 'refused' as const,
            ),
          );
          await new Promise((r) => setTimeout(r, 20));
        }
      };
      const workers = Array.from({ length: 16 }, async (_, worker) => {
        for (let i = 0; ; i++) {
          const outcome = await spend(server.client, userId, `w${worker}-${i}`);
          outcomes.push(outcome);
          if (outcome.kind !== 'ok' && !signalled) failedBeforeSignal.push(outcome);
          if (outcome.kind === 'network') return; // the listener is gone: this client is done
          if (!signalled && outcomes.filter((o) => o.kind === 'ok').length >= 200) {
            signalled = true;
            server.child.kill('SIGTERM');
            probing = probeReadiness();
          }
        }
      });
      await Promise.all(workers);
      await probing;
      const exit = await server.exited;

      expect(exit).toEqual({ code: 0, signal: null });
      expect(logged(server, 'shut down cleanly')).toBe(true);
      // Nothing was answered with an error: every call succeeded or found the door closed.
      expect(outcomes.filter((o) => o.kind === 'http')).toEqual([]);
      expect(failedBeforeSignal).toEqual([]);
      const acknowledged = outcomes.filter((o) => o.kind === 'ok').length;
      expect(acknowledged).toBeGreaterThanOrEqual(200);
      // Probes saw the instance leave the pool (ready until the signal landed, then 503, then closed).
      expect(probes).toContain(503);
      expect(probes.slice(probes.indexOf(503))).toEqual(expect.not.arrayContaining([200]));
      expect(probes.at(-1)).toBe('refused');
      const handle = await database.open();
      try {
        await expectLedgerMatches(handle, userId, outcomes, granted);
      } finally {
        await handle.close();
      }
    } finally {
      await database.drop();
    }
  });

  it.runIf(onPostgres)(
    'requests held in flight when SIGTERM arrives still finish (and new connections are refused meanwhile)',
    async () => {
      const database = await freshDatabase();
      const locker = new pg.Client({ connectionString: database.url });
      try {
        // Eight debit statements in flight (group commit would otherwise send two and queue six in the
        // process), so that each call waits in the database on its own row lock, where the test can see it.
        const server = await spawnServer(database, { DEBIT_STATEMENTS_IN_FLIGHT: '8' });
        await waitFor('migrations', () => (logged(server, 'migrations done') ? true : undefined));
        // One account per call, so each waits in the database on its own.
        const users = Array.from({ length: 8 }, (_, i) => `held-${i}-${randomUUID()}`);
        for (const userId of users) {
          await server.client.internal.credits.grant.mutate({
            userId,
            amount: 100,
            reason: 'x',
            idempotencyKey: 'g',
          });
        }

        // Hold the balance rows so the debits wait inside the server, in flight.
        await locker.connect();
        await locker.query('begin');
        await locker.query('select 1 from credits.balances where user_id = any($1) for update', [users]);
        const calls = users.map((userId) => spend(server.client, userId, `held-${userId}`));
        await waitFor('the debits to wait on the row lock', async () =>
          (await lockWaiters(locker)) >= 8 ? true : undefined,
        );

        server.child.kill('SIGTERM');
        await waitFor('the listener to close', async () => {
          const refused = await fetch(`${server.url}/health`).then(
            () => undefined,
            () => true,
          );
          return refused;
        });
        expect(server.child.exitCode).toBeNull(); // still finishing the 8 calls
        await locker.query('commit');

        const outcomes = await Promise.all(calls);
        expect(outcomes.map((o) => o.kind)).toEqual(Array(8).fill('ok'));
        expect(await server.exited).toEqual({ code: 0, signal: null });
        const handle = await database.open();
        try {
          for (const [i, userId] of users.entries()) {
            await expectLedgerMatches(handle, userId, [outcomes[i]!], 100);
          }
        } finally {
          await handle.close();
        }
      } finally {
        await locker.end().catch(() => {});
        await database.drop();
      }
    },
  );

  it.runIf(onPostgres)(
    'a request stuck past SHUTDOWN_TIMEOUT_MS does not hold the process: exit 1, and a retry with the same key applies once',
    async () => {
      const database = await freshDatabase();
      const locker = new pg.Client({ connectionString: database.url });
      try {
        const server = await spawnServer(database, { SHUTDOWN_TIMEOUT_MS: '1000' });
        await waitFor('migrations', () => (logged(server, 'migrations done') ? true : undefined));
        const userId = `stuck-${randomUUID()}`;
        await server.client.internal.credits.grant.mutate({
          userId,
          amount: 10,
          reason: 'x',
          idempotencyKey: 'g',
        });
        await locker.connect();
        await locker.query('begin');
        await locker.query('select 1 from credits.balances where user_id = $1 for update', [userId]);
        const stuck = spend(server.client, userId, 'stuck-1');
        await waitFor('the debit to wait on the row lock', async () =>
          (await lockWaiters(locker)) >= 1 ? true : undefined,
        );
        server.child.kill('SIGTERM');
        // The process gives up while the lock is still held.
        expect(await server.exited).toEqual({ code: 1, signal: null });
        expect(logged(server, 'shutdown timed out')).toBe(true);
        expect((await stuck).kind).toBe('network');
        await locker.query('commit');

        // Whether or not the cut-off debit committed, the client's retry with its key applies it exactly once.
        const again = await spawnServer(database);
        await waitFor('migrations', () => (logged(again, 'migrations done') ? true : undefined));
        const retried = await spend(again.client, userId, 'stuck-1');
        expect(retried.kind).toBe('ok');
        again.child.kill('SIGTERM');
        expect(await again.exited).toEqual({ code: 0, signal: null });
        const handle = await database.open();
        try {
          await expectLedgerMatches(handle, userId, [retried], 10);
        } finally {
          await handle.close();
        }
      } finally {
        await locker.end().catch(() => {});
        await database.drop();
      }
    },
  );
});

describe('readiness of the real process', () => {
  it.runIf(onPostgres)(
    'while migrations run (held by another migrator): /health 200, /ready 503, API 503; then ready',
    async () => {
      const database = await freshDatabase();
      const migrator = new pg.Client({ connectionString: database.url });
      try {
        await migrator.connect();
        await migrator.query(`select pg_advisory_lock(${KYSELY_MIGRATION_LOCK})`);
        const server = await spawnServer(database);
        expect((await fetch(`${server.url}/health`)).status).toBe(200);
        const ready = await fetch(`${server.url}/ready`);
        expect(ready.status).toBe(503);
        expect(await ready.json()).toEqual({ status: 'migrating' });
        const api = await fetch(`${server.url}/trpc/credits.packages`);
        expect(api.status).toBe(503);
        expect(await api.json()).toMatchObject({ error: { json: { data: { reason: 'MIGRATING' } } } });
        expect(logged(server, 'migrations done')).toBe(false);

        await migrator.query(`select pg_advisory_unlock(${KYSELY_MIGRATION_LOCK})`);
        await waitFor('readiness', async () => ((await fetch(`${server.url}/ready`)).ok ? true : undefined));
        expect(await server.client.credits.packages.query()).toEqual(expect.any(Array));
        const { rows } = await migrator.query<{ n: number }>(
          'select count(*)::int as n from kysely_migration',
        );
        expect(rows[0]!.n).toBeGreaterThan(0);
        server.child.kill('SIGTERM');
        expect(await server.exited).toEqual({ code: 0, signal: null });
      } finally {
        await migrator.end().catch(() => {});
        await database.drop();
      }
    },
  );

  it('SIGTERM while starting: the server stops cleanly and its database is usable afterwards', async () => {
    const database = await freshDatabase();
    try {
      const server = await spawnServer(database);
      server.child.kill('SIGTERM');
      expect(await server.exited).toEqual({ code: 0, signal: null });
      // The migration it may have been running was finished, not torn: a new start finds a usable schema.
      const again = await spawnServer(database);
      await waitFor('migrations', () => (logged(again, 'migrations done') ? true : undefined));
      expect(await again.client.credits.packages.query()).toEqual(expect.any(Array));
      again.child.kill('SIGTERM');
      expect(await again.exited).toEqual({ code: 0, signal: null });
      const handle = await database.open();
      try {
        const { rows } = await sql<{ n: number }>`select count(*)::int as n from kysely_migration`.execute(
          handle.db,
        );
        expect(rows[0]!.n).toBeGreaterThan(0);
      } finally {
        await handle.close();
      }
    } finally {
      await database.drop();
    }
  });
});
