/**
 * A quick throughput check of internal.credits.useBatch (not the formal benchmark):
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npx tsx packages/server/scripts/measure-use-batch.ts
 * Creates a throw-away database, starts the real server on a free port, funds USERS users, then sends
 * ROUNDS batches of 1,000 items from CONCURRENCY parallel callers over HTTP and prints debits per second.
 * Also times the database call alone (postUsageBatch) and checks Σ ledger = balance at the end.
 * Wall-clock figures depend on whatever else runs on the machine, so it also reports the CPU time spent per
 * 1,000 debits by this process (server and client) and by the Postgres backends serving it (read from
 * /proc, so Postgres must run on this machine; autovacuum not included), and the rate those would allow on
 * all cores.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { type BatchDebit, postUsageBatch } from '@mana-credits/db';
import { createTRPCClient, httpLink } from '@trpc/client';
import { sql } from 'kysely';
import pg from 'pg';
import superjson from 'superjson';
import { buildApp } from '../src/app.ts';
import { configFrom } from '../src/config.ts';
import { createAppDeps } from '../src/deps.ts';
import type { AppRouter } from '../src/trpc/routers/_app.ts';

const serverUrl = process.env.DATABASE_URL;
if (!serverUrl) throw new Error('set DATABASE_URL to a Postgres server');
const USERS = Number(process.env.USERS ?? 1000);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 2);
const ROUNDS = Number(process.env.ROUNDS ?? 10);
const SERVICE_KEY = 'measure-service-key-0123456789abcdef';

const name = `mana_credits_measure_${process.pid}`;
const admin = new pg.Client({ connectionString: serverUrl });
await admin.connect();
await admin.query(`create database ${name}`);
const url = new URL(serverUrl);
url.pathname = `/${name}`;

const deps = await createAppDeps(
  configFrom({ DATABASE_URL: url.toString(), MANA_CORE_SERVICE_KEY: SERVICE_KEY, DB_POOL_SIZE: '10' }),
);
const app = await buildApp(deps, { closeDepsOnClose: true, logger: false });
try {
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  const client = createTRPCClient<AppRouter>({
    links: [
      httpLink({
        url: `http://127.0.0.1:${port}/trpc`,
        transformer: superjson,
        headers: { 'x-service-key': SERVICE_KEY },
      }),
    ],
  });

  const users = Array.from({ length: USERS }, (_, i) => `measure-${i}-${randomUUID()}`);
  const funds = 1_000_000_000;
  await sql`
    with funded as (
      insert into credits.balances (user_id, balance, total_earned)
      select u, ${funds}::int8, ${funds}::int8 from unnest(${users}::text[]) u returning user_id
    )
    insert into credits.transactions (user_id, type, amount, balance_before, balance_after, available_after)
    select user_id, 'grant', ${funds}::int8, 0, ${funds}::int8, ${funds}::int8 from funded`.execute(deps.db);

  const items = () =>
    Array.from({ length: 1000 }, (_, i) => ({
      userId: users[Math.floor(Math.random() * USERS)]!,
      amount: 1 + (i % 7),
      appId: `app-${i % 5}`,
      description: 'metered call',
      idempotencyKey: randomUUID(),
      metadata: { model: 'm', tokens: i },
    }));

  /** CPU seconds used so far by each client backend connected to the measured database. */
  const postgresCpu = async () => {
    const { rows } = await sql<{ pid: number }>`
      select pid from pg_stat_activity
       where datname = current_database() and backend_type = 'client backend'`.execute(deps.db);
    const seconds = new Map<number, number>();
    for (const { pid } of rows) {
      try {
        const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
        seconds.set(pid, (Number(fields[11]) + Number(fields[12])) / 100); // utime + stime, in clock ticks
      } catch {
        // a backend that has just gone away
      }
    }
    return seconds;
  };
  const cpuSpent = (before: Map<number, number>, after: Map<number, number>) => {
    let total = 0;
    for (const [pid, seconds] of after) total += seconds - (before.get(pid) ?? seconds);
    return total;
  };

  const measure = async (label: string, send: () => Promise<number>) => {
    for (let i = 0; i < 3; i++) await send(); // warm-up
    const nodeBefore = process.cpuUsage();
    const postgresBefore = await postgresCpu();
    const started = performance.now();
    let debits = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        for (let round = 0; round < ROUNDS; round++) debits += await send();
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    const node = process.cpuUsage(nodeBefore);
    const nodeMs = ((node.user + node.system) / 1000 / debits) * 1000;
    const postgresMs = (cpuSpent(postgresBefore, await postgresCpu()) * 1000 * 1000) / debits;
    const cores = availableParallelism();
    console.log(
      `${label}: ${debits} debits in ${seconds.toFixed(2)} s = ${Math.round(debits / seconds)} debits/s ` +
        `(users=${USERS}, concurrency=${CONCURRENCY})\n` +
        `  CPU per 1,000 debits: node ${nodeMs.toFixed(1)} ms, postgres ${postgresMs.toFixed(1)} ms → ` +
        `${Math.round((cores * 1_000_000) / (nodeMs + postgresMs))} debits/s on ${cores} idle cores`,
    );
  };

  await measure('HTTP internal.credits.useBatch', async () => {
    const { results } = await client.internal.credits.useBatch.mutate({ items: items() });
    return results.filter((r) => r.ok).length;
  });
  await measure('database credits.use_batch alone', async () => {
    const debits: BatchDebit[] = items().map((item) => ({ ...item, requestHash: 'h'.repeat(43) }));
    const { outcomes } = await postUsageBatch(deps.db, debits);
    return outcomes.filter((o) => o.outcome === 'ok').length;
  });

  const { rows } = await sql<{ drift: number }>`
    select count(*)::int4 as drift from credits.balances b
      join (select user_id, sum(amount) as total from credits.transactions group by user_id) l using (user_id)
     where b.balance <> l.total`.execute(deps.db);
  console.log(`accounts whose balance differs from their ledger: ${rows[0]?.drift}`);
} finally {
  await app.close();
  await admin.query(`drop database if exists ${name} with (force)`);
  await admin.end();
}
