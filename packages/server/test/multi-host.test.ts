import { existsSync } from 'node:fs';
import { createDb, type DbHandle, parseMultiHostUrl } from '@mana-credits/db';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanupAllSync, PgPair } from '../failover/cluster.ts';
import { buildApp } from '../src/app.ts';
import { configFrom } from '../src/config.ts';
import { createAppDeps } from '../src/deps.ts';
import { isConnectionFailure } from '../src/domain/outcome.ts';

describe('a DATABASE_URL with several hosts (libpq form)', () => {
  it('one host without target_session_attrs stays on the plain pool', () => {
    expect(parseMultiHostUrl('postgres://u:p@db:5432/app')).toBeUndefined();
    expect(parseMultiHostUrl('postgres://u@db/app?sslmode=disable&target_session_attrs=any')).toBeUndefined();
    expect(parseMultiHostUrl('postgres://u@/app?host=/var/run/postgresql')).toBeUndefined();
  });

  it('reads the host list, default ports, IPv6 and the libpq-only parameters', () => {
    const parsed = parseMultiHostUrl(
      'postgresql://app:s%40cret@h1:5433,h2,[::1]:6000/credits?target_session_attrs=read-write&sslmode=disable&connect_timeout=3',
    )!;
    expect(parsed.hosts).toEqual([
      { host: 'h1', port: 5433 },
      { host: 'h2', port: 5432 },
      { host: '::1', port: 6000 },
    ]);
    expect(parsed.targetSessionAttrs).toBe('read-write');
    expect(parsed.connectTimeoutMs).toBe(3000);
    expect(parsed.urlFor(parsed.hosts[1]!)).toBe('postgresql://app:s%40cret@h2:5432/credits?sslmode=disable');
    expect(parsed.urlFor(parsed.hosts[2]!)).toBe(
      'postgresql://app:s%40cret@[::1]:6000/credits?sslmode=disable',
    );
    // Several hosts without target_session_attrs: libpq's default (any) — the first that answers.
    expect(parseMultiHostUrl('postgres://u@a:1,b:2/db')?.targetSessionAttrs).toBe('any');
    // One host with read-write: checked like a list of one.
    expect(parseMultiHostUrl('postgres://u@a:1/db?target_session_attrs=primary')?.hosts).toEqual([
      { host: 'a', port: 1 },
    ]);
  });

  it('refuses target_session_attrs a writing service cannot use', () => {
    expect(() => parseMultiHostUrl('postgres://u@a,b/db?target_session_attrs=read-only')).toThrow(
      /read-only is not supported/,
    );
    expect(() => parseMultiHostUrl('postgres://u@a,b/db?target_session_attrs=prefer-standby')).toThrow();
  });
});

const hasPostgres = ['17', '16', '15', '14'].some((v) => existsSync(`/usr/lib/postgresql/${v}/bin/pg_ctl`));

describe.skipIf(!hasPostgres)('the multi-host pool against a real primary and standby', () => {
  let pair: PgPair;
  let handle: DbHandle;
  const port = async () =>
    (await sql<{ port: number }>`select inet_server_port() as port`.execute(handle.db)).rows[0]!.port;

  beforeAll(async () => {
    pair = await PgPair.create({ mode: 'async' });
    await pair.primary.query('create table t (id int primary key)');
    await pair.waitForStandby();
    // The standby is listed first: the pool must pass over it to the writable primary.
    const url = `postgres://postgres@${pair.standby!.hostPort},${pair.primary.hostPort}/postgres?target_session_attrs=read-write&connect_timeout=2`;
    handle = await createDb({ databaseUrl: url, poolSize: 3 });
  }, 120_000);

  afterAll(async () => {
    await handle?.close();
    await pair?.destroy();
    cleanupAllSync();
  });

  it('connects only to the writable primary, even when a standby is listed first', async () => {
    expect(await port()).toBe(pair.primary.port);
    await sql`insert into t values (1)`.execute(handle.db);
  });

  it('answers a connection failure (class 08) while no primary is up, and finds the promoted standby', async () => {
    const { port: oldPort } = pair.primary;
    await pair.killPrimary();
    // The pooled connections died with the old primary; the standby is not writable yet.
    const failure = await sql`insert into t values (2)`.execute(handle.db).catch((error: unknown) => error);
    expect(String((failure as { code?: string }).code)).toMatch(/^08|^57P|^ECONN/);
    await pair.promote();
    let answered: number | undefined;
    for (let i = 0; i < 50 && answered === undefined; i++) {
      answered = await port().catch(() => undefined);
      if (answered === undefined) await new Promise((r) => setTimeout(r, 100));
    }
    expect(answered).toBe(pair.primary.port);
    expect(answered).not.toBe(oldPort);
    await sql`insert into t values (3)`.execute(handle.db);
  }, 60_000);

  it('drops a connection whose server turns read-only (25006) and answers it as a connection failure', async () => {
    // Every pooled connection is on the primary; it is then set read-only under them.
    await sql`select 1`.execute(handle.db);
    await pair.primary.query('alter system set default_transaction_read_only = on');
    await pair.primary.query('select pg_reload_conf()');
    await new Promise((r) => setTimeout(r, 300));
    const refused = await sql`insert into t values (4)`.execute(handle.db).catch((error: unknown) => error);
    expect(refused).toMatchObject({ code: '25006', severity: 'ERROR' });
    expect(isConnectionFailure(refused)).toBe(true);
    // No host is writable now: new connections are refused with a clear, retryable error.
    const none = await sql`insert into t values (5)`.execute(handle.db).catch((error: unknown) => error);
    expect(none).toMatchObject({ name: 'NoWritablePrimaryError', code: '08001' });
    await pair.primary.query('alter system reset default_transaction_read_only');
    await pair.primary.query('select pg_reload_conf()');
    await new Promise((r) => setTimeout(r, 300));
    await sql`insert into t values (6)`.execute(handle.db);
    const rows = await sql<{ id: number }>`select id from t order by id`.execute(handle.db);
    expect(rows.rows.map((r) => r.id)).toEqual([1, 3, 6]);
  }, 60_000);

  it('/ready is 503 while the database is read-only, behind a single-host URL too', async () => {
    const deps = await createAppDeps(
      configFrom({
        DATABASE_URL: pair.primary.url(),
        MIGRATE_ON_START: 'false',
        MANA_CORE_SERVICE_KEY: 'x'.repeat(32),
      }),
      { migrate: false },
    );
    const app = await buildApp(deps, { closeDepsOnClose: true, logger: false });
    try {
      expect((await app.inject({ url: '/ready' })).json()).toEqual({ status: 'ready' });
      await pair.primary.query('alter system set default_transaction_read_only = on');
      await pair.primary.query('select pg_reload_conf()');
      await new Promise((r) => setTimeout(r, 300));
      const ready = await app.inject({ url: '/ready' });
      expect(ready.statusCode).toBe(503);
      expect(ready.json()).toEqual({ status: 'database-read-only' });
    } finally {
      await pair.primary.query('alter system reset default_transaction_read_only');
      await pair.primary.query('select pg_reload_conf()');
      await app.close();
    }
  }, 60_000);
});
