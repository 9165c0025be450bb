/**
 * Timing of the history reads (issue 18) on a ledger of 1,000,000 rows (not the formal benchmark):
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npx tsx packages/server/scripts/measure-history.ts
 * Creates a throw-away database, migrates it, writes ROWS personal ledger rows over one year (2026) with
 * generate_series — one user in ten rows is the same heavy user, the rest spread over 10,000 users, 90%
 * usage over 5 apps — and ROWS guild ledger rows of one guild, ANALYZEs, then times each read (the query
 * functions the procedures call: median of 5 after one warm-up) and prints the plan of the widest ones.
 * Besides wall-clock time it reports the CPU time of the Postgres backend that answered (from /proc, so
 * Postgres must run on this machine): on a shared machine the wall clock also counts waiting for a core.
 * `--keep` leaves the database for a look with psql.
 */
import { readFileSync } from 'node:fs';
import {
  allUsage,
  balanceAtInstant,
  createDb,
  guildUsage,
  migrateToLatest,
  statementPage,
  userUsage,
} from '@mana-credits/db';
import { sql } from 'kysely';
import pg from 'pg';

const serverUrl = process.env.DATABASE_URL;
if (!serverUrl) throw new Error('set DATABASE_URL to a Postgres server');
const ROWS = Number(process.env.ROWS ?? 1_000_000);
const keep = process.argv.includes('--keep');

const name = `mana_credits_history_${process.pid}`;
const admin = new pg.Client({ connectionString: serverUrl });
await admin.connect();
await admin.query(`create database ${name}`);
const url = new URL(serverUrl);
url.pathname = `/${name}`;
// One connection, so one Postgres backend serves every read and its CPU time can be read from /proc.
const { db, close } = await createDb({ databaseUrl: url.toString(), poolSize: 1 });

const YEAR = '365 days';
const at = (iso: string) => new Date(iso);

try {
  await migrateToLatest(db);
  let started = performance.now();
  await sql`
    insert into credits.transactions
      (user_id, type, amount, balance_before, balance_after, app_id, description, created_at)
    select case when i % 10 = 0 then 'heavy' else 'u-' || (i % 10000) end,
           case when i % 10 = 1 then 'grant' else 'usage' end,
           case when i % 10 = 1 then 100 else -(1 + i % 7) end,
           1000000000,
           1000000000 + case when i % 10 = 1 then 100 else -(1 + i % 7) end,
           'app-' || (i % 5), 'metered call',
           timestamptz '2026-01-01T00:00:00Z' + (interval ${sql.lit(YEAR)} * i / ${ROWS})
      from generate_series(1, ${ROWS}) i`.execute(db);
  await sql`
    insert into credits.guild_transactions
      (organization_id, user_id, type, amount, balance_before, balance_after, app_id, description, created_at)
    select 'guild-1', 'member-' || (i % 500), 'usage', -(1 + i % 7), 1000000000, 1000000000 - (1 + i % 7),
           'app-' || (i % 5), 'metered call',
           timestamptz '2026-01-01T00:00:00Z' + (interval ${sql.lit(YEAR)} * i / ${ROWS})
      from generate_series(1, ${ROWS}) i`.execute(db);
  // What autovacuum does to an insert-only table soon after such a load: statistics, the visibility map and
  // the BRIN summaries of the new page ranges.
  await sql`vacuum analyze credits.transactions`.execute(db);
  await sql`vacuum analyze credits.guild_transactions`.execute(db);
  console.log(
    `seeded ${ROWS} personal and ${ROWS} guild ledger rows in ${Math.round(performance.now() - started)} ms`,
  );

  const heavyRows = ROWS / 10;
  const cases: [string, () => Promise<unknown>][] = [
    ['balanceAt (heavy user, mid-year)', () => balanceAtInstant(db, 'heavy', at('2026-07-01T12:00:00Z'))],
    ['balanceAt (ordinary user)', () => balanceAtInstant(db, 'u-4242', at('2026-07-01T12:00:00Z'))],
    [
      `credits.usage heavy user (${heavyRows} rows), year by month, per app`,
      () =>
        userUsage(db, 'heavy', {
          from: at('2026-01-01T00:00:00Z'),
          to: at('2027-01-01T00:00:00Z'),
          granularity: 'month',
          groupBy: 'app',
        }),
    ],
    [
      'credits.usage heavy user, 1000 hours',
      () =>
        userUsage(db, 'heavy', {
          from: at('2026-03-01T00:00:00Z'),
          to: new Date(Date.UTC(2026, 2, 1) + 1000 * 3_600_000),
          granularity: 'hour',
        }),
    ],
    [
      'credits.usage ordinary user, year by day',
      () =>
        userUsage(db, 'u-4242', {
          from: at('2026-01-01T00:00:00Z'),
          to: at('2027-01-01T00:00:00Z'),
          granularity: 'day',
        }),
    ],
    [
      'internal.usage one month by day, per app',
      () =>
        allUsage(db, {
          from: at('2026-06-01T00:00:00Z'),
          to: at('2026-07-01T00:00:00Z'),
          granularity: 'day',
          groupBy: 'app',
          limit: 100,
        }),
    ],
    [
      'internal.usage one month by day, top 100 users',
      () =>
        allUsage(db, {
          from: at('2026-06-01T00:00:00Z'),
          to: at('2026-07-01T00:00:00Z'),
          granularity: 'day',
          groupBy: 'user',
          limit: 100,
        }),
    ],
    [
      'internal.usage 1000 hours, one app',
      () =>
        allUsage(db, {
          from: at('2026-03-01T00:00:00Z'),
          to: new Date(Date.UTC(2026, 2, 1) + 1000 * 3_600_000),
          granularity: 'hour',
          appId: 'app-3',
          limit: 100,
        }),
    ],
    [
      `internal.usage whole year (${ROWS} rows) by month, per app`,
      () =>
        allUsage(db, {
          from: at('2026-01-01T00:00:00Z'),
          to: at('2027-01-01T00:00:00Z'),
          granularity: 'month',
          groupBy: 'app',
          limit: 100,
        }),
    ],
    [
      `internal.usage whole year (${ROWS} rows) by month, top 100 users`,
      () =>
        allUsage(db, {
          from: at('2026-01-01T00:00:00Z'),
          to: at('2027-01-01T00:00:00Z'),
          granularity: 'month',
          groupBy: 'user',
          limit: 100,
        }),
    ],
    [
      'guild.usage one month by day, per member',
      () =>
        guildUsage(db, 'guild-1', {
          from: at('2026-06-01T00:00:00Z'),
          to: at('2026-07-01T00:00:00Z'),
          granularity: 'day',
          groupBy: 'member',
          limit: 100,
        }),
    ],
    [
      `guild.usage whole year (${ROWS} rows) by month`,
      () =>
        guildUsage(db, 'guild-1', {
          from: at('2026-01-01T00:00:00Z'),
          to: at('2027-01-01T00:00:00Z'),
          granularity: 'month',
        }),
    ],
    [
      'statement heavy user, a page of 1000',
      () =>
        statementPage(db, {
          userId: 'heavy',
          from: at('2026-01-01T00:00:00Z'),
          to: at('2027-01-01T00:00:00Z'),
          limit: 1000,
        }),
    ],
  ];

  // No parallel workers, so the one backend does (and is charged with) all of a read's work.
  await sql`set max_parallel_workers_per_gather = 0`.execute(db);
  const { rows: backend } = await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(db);
  const backendPid = backend[0]?.pid;
  /** CPU milliseconds the backend has used (utime + stime, in clock ticks of 10 ms). */
  const backendCpuMs = () => {
    const fields = readFileSync(`/proc/${backendPid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
    return (Number(fields[11]) + Number(fields[12])) * 10;
  };
  const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? 0;
  const results: { read: string; medianMs: number; backendCpuMs: number }[] = [];
  const time = async (label: string, run: () => Promise<unknown>, times = 5) => {
    await run();
    const walls: number[] = [];
    const cpus: number[] = [];
    for (let i = 0; i < times; i++) {
      const cpu = backendCpuMs();
      started = performance.now();
      await run();
      walls.push(performance.now() - started);
      cpus.push(backendCpuMs() - cpu);
    }
    results.push({ read: label, medianMs: Math.round(median(walls) * 10) / 10, backendCpuMs: median(cpus) });
  };
  for (const [label, run] of cases) await time(label, run);

  // A page deep inside the heavy user's statement: the cursor is the 50,000th entry.
  const { rows: middle } = await sql<{ id: string }>`
    select id from credits.transactions where user_id = 'heavy' order by created_at, id offset 50000 limit 1`.execute(
    db,
  );
  const cursor = middle[0]?.id;
  await time('statement heavy user, the page after entry 50,000', () =>
    statementPage(db, {
      userId: 'heavy',
      from: at('2026-01-01T00:00:00Z'),
      to: at('2027-01-01T00:00:00Z'),
      limit: 1000,
      cursor,
    }),
  );
  console.table(results);

  const { rows: plan } = await sql<{ 'QUERY PLAN': string }>`
    explain (analyze, buffers, costs off)
    select date_trunc('day', created_at at time zone 'UTC'), app_id, -sum(amount), count(*)
      from credits.transactions
     where type = 'usage' and created_at >= '2026-06-01T00:00:00Z' and created_at < '2026-07-01T00:00:00Z'
     group by 1, 2`.execute(db);
  console.log('\ninternal.usage, one month:');
  for (const row of plan) console.log(row['QUERY PLAN']);
  const { rows: userPlan } = await sql<{ 'QUERY PLAN': string }>`
    explain (analyze, buffers, costs off)
    select date_trunc('month', created_at at time zone 'UTC'), app_id, -sum(amount), count(*)
      from credits.transactions
     where user_id = 'heavy' and type = 'usage' and created_at >= '2026-01-01T00:00:00Z' and created_at < '2027-01-01T00:00:00Z'
     group by 1, 2`.execute(db);
  console.log('\ncredits.usage, heavy user, whole year:');
  for (const row of userPlan) console.log(row['QUERY PLAN']);
} finally {
  await close();
  if (!keep) await admin.query(`drop database if exists ${name} with (force)`);
  else console.log(`kept database ${name}`);
  await admin.end();
}
