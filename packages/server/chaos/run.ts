import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createDb, migrateToLatest } from '@mana-credits/db';
import { sql } from 'kysely';
import pg from 'pg';
import { reconcile } from '../src/domain/audit/reconcile.ts';
import { TestAuthServer } from '../test/helpers/auth-server.ts';
import { TestStripeServer } from '../test/helpers/stripe-server.ts';
import { TcpFaultProxy } from '../test/helpers/tcp-proxy.ts';
import {
  AUTO_TOP_UP_FIRST_SPEND,
  type AutoTopUpPlan,
  checkAutoTopUps,
  setUpAutoTopUps,
} from './auto-top-up.ts';
import { ChaosEvents, eventsEnv } from './events.ts';
import {
  type CallOptions,
  itemsOfBatch,
  type LoggedOperation,
  newOperation,
  seededRandom,
  settleUnknown,
  setUp,
} from './protocol.ts';
import { type ChaosPackage, StripeChaos } from './stripe.ts';

/**
 * `pnpm chaos`: a bounded fault-injection run against the local Postgres. Client processes drive mixed
 * traffic (with grants whose lots expire 2–8 s later, so lots lapse under the faults while spends, holds,
 * gifts and pool funding take from them) and a Stripe driver (./stripe.ts) buys credits and delivers duplicated, reordered webhooks, while a
 * nemesis kills, pauses and restarts servers, cuts their Postgres connections in a TCP proxy (all at once, or
 * a fraction of answers, after the statement ran), terminates Postgres backends and restarts Postgres in
 * immediate mode. Afterwards every unknown keyed operation is retried with its key, every unacknowledged
 * webhook redelivered, and the database is checked: reconcile, every acknowledged operation present exactly
 * once, no trace of a refused one, every paid purchase credited once and reversed at most as Stripe did.
 */
const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    seconds: { type: 'string' },
    instances: { type: 'string', default: '1' },
    workers: { type: 'string', default: '3' },
    seed: { type: 'string', default: String(Date.now() % 100000) },
    'no-pg-restart': { type: 'boolean', default: false },
    /** Comma-separated nemesis steps to choose from (default: all), e.g. to reproduce one kind of fault. */
    faults: { type: 'string' },
    'database-url': {
      type: 'string',
      default: process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
    },
  },
});

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const seconds = Number(args.seconds ?? (args.quick ? 25 : 300));
const instanceCount = Number(args.instances);
const workerCount = Number(args.workers);
const seed = Number(args.seed);
const random = seededRandom(seed);
const SERVICE_KEY = 'chaos-service-key-0123456789abcdefghijklmnop';
const USERS = Array.from({ length: 12 }, (_, i) => `chaos-user-${i}`);
const INITIAL_CREDITS = 500;
/** LOW_BALANCE_THRESHOLD of the servers: balances start at 500 and walk around it, crossing often. */
const LOW_BALANCE_THRESHOLD = 495;
const POOL_THRESHOLD = 5;
const PACKAGES: ChaosPackage[] = [
  { id: '00000000-0000-4000-8000-00000000c101', credits: 100, priceEuroCents: 199 },
  { id: '00000000-0000-4000-8000-00000000c102', credits: 500, priceEuroCents: 799 },
  { id: '00000000-0000-4000-8000-00000000c103', credits: 7, priceEuroCents: 333 },
];
/**
 * Users with auto top-up at the threshold their balances walk around: three with cards that pay (two of them
 * buying 7 credits, so they cross again soon; one allowed a single top-up a month, so later crossings record
 * nothing), one whose card is declined and one whose card needs authentication (refused off-session).
 */
const AUTO_TOP_UPS: AutoTopUpPlan[] = [
  { userId: 'chaos-user-2', packageId: PACKAGES[0]!.id, threshold: 495, maxPerMonth: 3, card: 'ok' },
  { userId: 'chaos-user-3', packageId: PACKAGES[2]!.id, threshold: 495, maxPerMonth: 1, card: 'ok' },
  { userId: 'chaos-user-4', packageId: PACKAGES[2]!.id, threshold: 495, maxPerMonth: 3, card: 'ok' },
  { userId: 'chaos-user-5', packageId: PACKAGES[0]!.id, threshold: 495, maxPerMonth: 3, card: 'declined' },
  {
    userId: 'chaos-user-6',
    packageId: PACKAGES[2]!.id,
    threshold: 495,
    maxPerMonth: 3,
    card: 'requires_action',
  },
];
/** How often every instance's auto-top-up job pays due attempts. */
const AUTO_TOP_UP_INTERVAL_MS = 300;
const log = (message: string) => console.log(`[chaos ${new Date().toISOString().slice(11, 19)}] ${message}`);

async function freePort(): Promise<number> {
  return new Promise((resolvePort) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolvePort(port));
    });
  });
}

// ── the database ──────────────────────────────────────────────────────────────────────────────────────────
const adminUrl = args['database-url']!;
const dbName = `mana_credits_chaos_${Date.now()}`;
const databaseUrl = Object.assign(new URL(adminUrl), { pathname: `/${dbName}` }).toString();

async function admin<T>(query: string, params: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    return (await client.query(query, params)).rows as T[];
  } finally {
    await client.end();
  }
}

async function waitForPostgres() {
  for (let i = 0; i < 60; i++) {
    try {
      await admin('select 1');
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  throw new Error('Postgres did not come back');
}

// ── the servers ───────────────────────────────────────────────────────────────────────────────────────────
interface Instance {
  port: number;
  url: string;
  child: ChildProcess | undefined;
  paused: boolean;
  /** Set before the nemesis or the end of the run stops it: any other exit is a crash. */
  stopping: boolean;
}

/** What every instance needs besides its port: the auth and Stripe servers and the proxied database URL. */
interface Services {
  auth: TestAuthServer;
  stripe: TestStripeServer;
  serverDatabaseUrl: string;
}

const crashes: string[] = [];

/** The servers' error log lines (LOG_LEVEL=error), one file per port, appended across restarts. */
const serverLogDir = mkdtempSync(join(tmpdir(), 'mana-credits-chaos-servers-'));

/**
 * What the servers logged as errors, by cause: a request answered 5xx, a job that failed. Faults explain most
 * (a cut connection, a restarting Postgres); a deadlock never has an excuse here — the writers of one table
 * lock its rows in one order — so each is a violation.
 */
function serverErrors(): { summary: string; deadlocks: string[] } {
  const causes = new Map<string, number>();
  const deadlocks: string[] = [];
  for (const file of readdirSync(serverLogDir)) {
    for (const line of readFileSync(join(serverLogDir, file), 'utf8').split('\n')) {
      if (!line.startsWith('{')) continue;
      let entry: { msg?: string; job?: string; err?: { code?: string; message?: string } };
      try {
        entry = JSON.parse(line);
      } catch {
        continue;
      }
      const cause = `${entry.job ? `job ${entry.job}` : (entry.msg ?? '?')}: ${entry.err?.code ?? entry.err?.message?.slice(0, 60) ?? '-'}`;
      causes.set(cause, (causes.get(cause) ?? 0) + 1);
      if (entry.err?.code === '40P01') deadlocks.push(`${file}: ${entry.msg}: ${entry.err.message}`);
    }
  }
  const listed = [...causes].sort((a, b) => b[1] - a[1]).map(([cause, n]) => `${n} ${cause}`);
  return { summary: `server errors: ${listed.join('; ') || 'none'}`, deadlocks };
}

function startInstance(instance: Instance, services: Services): Promise<void> {
  const logFd = openSync(join(serverLogDir, `server-${instance.port}.log`), 'a');
  const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'packages/server/src/main.ts')], {
    cwd: root,
    env: {
      ...process.env,
      NODE_ENV: 'production',
      PORT: String(instance.port),
      HOST: '127.0.0.1',
      // Through the fault proxy; migrations ran directly before the servers started.
      DATABASE_URL: services.serverDatabaseUrl,
      MIGRATE_ON_START: 'false',
      MANA_CORE_SERVICE_KEY: SERVICE_KEY,
      MANA_CORE_AUTH_URL: services.auth.url,
      STRIPE_SECRET_KEY: services.stripe.secretKey,
      STRIPE_WEBHOOK_SECRET: services.stripe.webhookSecret,
      STRIPE_API_URL: services.stripe.url,
      BASE_URL: instance.url,
      LOG_LEVEL: 'error',
      DB_POOL_SIZE: '5',
      SHUTDOWN_TIMEOUT_MS: '3000',
      AUTO_TOP_UP_INTERVAL_MS: String(AUTO_TOP_UP_INTERVAL_MS),
      ...eventsEnv(LOW_BALANCE_THRESHOLD),
    },
    stdio: ['ignore', logFd, 'inherit'],
  });
  closeSync(logFd); // the child has its own copy
  instance.child = child;
  instance.paused = false;
  instance.stopping = false;
  child.once('exit', (code, signal) => {
    if (instance.child === child && !instance.stopping) {
      crashes.push(`server :${instance.port} exited by itself (code ${code}, signal ${signal})`);
      log(`server :${instance.port} exited by itself (code ${code}, signal ${signal})`);
    }
  });
  return waitUntilReady(instance);
}

async function waitUntilReady(instance: Instance) {
  for (let i = 0; i < 120; i++) {
    try {
      const response = await fetch(`${instance.url}/ready`, { signal: AbortSignal.timeout(1000) });
      if (response.ok) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`server on ${instance.port} did not become ready`);
}

const alive = (instance: Instance) =>
  instance.child?.pid !== undefined && instance.child.exitCode === null && instance.child.signalCode === null;

function kill(instance: Instance, signal: NodeJS.Signals) {
  if (signal === 'SIGKILL' || signal === 'SIGTERM') instance.stopping = true;
  if (alive(instance)) process.kill(instance.child!.pid!, signal);
}

// ── the nemesis ───────────────────────────────────────────────────────────────────────────────────────────
const faults: Record<string, number> = {};
async function nemesis(instances: Instance[], services: Services, proxy: TcpFaultProxy, deadline: number) {
  const all = [
    'kill',
    'pause',
    'terminate-backends',
    'cut-connections',
    'cut-answers',
    ...(args['no-pg-restart'] ? [] : ['restart-postgres']),
  ];
  const chosen = args.faults?.split(',').map((kind) => kind.trim());
  const unknownKinds = chosen?.filter((kind) => !all.includes(kind)) ?? [];
  if (unknownKinds.length > 0) throw new Error(`--faults: unknown or disabled ${unknownKinds.join(', ')}`);
  const kinds = chosen ?? all;
  while (Date.now() < deadline - 3000) {
    await new Promise((r) => setTimeout(r, 1000 + random() * 2500));
    if (Date.now() >= deadline - 3000) break;
    const kind = kinds[Math.floor(random() * kinds.length)]!;
    const instance = instances[Math.floor(random() * instances.length)]!;
    const fraction = 0.1 + random() * 0.4;
    const duration = 1000 + random() * 2500;
    faults[kind] = (faults[kind] ?? 0) + 1;
    log(
      `fault: ${kind}${kind === 'kill' || kind === 'pause' ? ` server :${instance.port}` : ''}${
        kind === 'cut-answers' ? ` ${Math.round(fraction * 100)}% for ${(duration / 1000).toFixed(1)}s` : ''
      }`,
    );
    try {
      // A server that crashed on its own (reported at the end) comes back before the next fault.
      for (const other of instances) if (!alive(other)) await startInstance(other, services);
      if (kind === 'kill') {
        kill(instance, 'SIGKILL');
        await new Promise((r) => setTimeout(r, 300 + random() * 700));
        await startInstance(instance, services);
      } else if (kind === 'pause') {
        kill(instance, 'SIGSTOP');
        instance.paused = true;
        await new Promise((r) => setTimeout(r, 1000 + random() * 2500));
        kill(instance, 'SIGCONT');
        instance.paused = false;
      } else if (kind === 'cut-connections') {
        proxy.cutAll();
      } else if (kind === 'cut-answers') {
        // Statements run (and implicit transactions commit), then the connection drops before the answer.
        proxy.cutResponses(fraction);
        await new Promise((r) => setTimeout(r, duration));
        proxy.cutResponses(0);
      } else if (kind === 'terminate-backends') {
        await admin(
          `select pg_terminate_backend(pid) from pg_stat_activity
            where datname = $1 and pid <> pg_backend_pid() and random() < 0.7`,
          [dbName],
        );
      } else {
        const version = execFileSync('ls', ['/etc/postgresql']).toString().trim().split('\n')[0]!;
        execFileSync(
          'pg_ctlcluster',
          ['--skip-systemctl-redirect', '-m', 'immediate', version, 'main', 'restart'],
          {
            stdio: 'ignore',
          },
        );
        await waitForPostgres();
      }
    } catch (error) {
      log(`nemesis step failed: ${error instanceof Error ? error.message : error}`);
    }
  }
}

/** Polls `count` every 500 ms until it is 0 or `timeoutMs` passes; returns the last count. */
async function waitUntil(count: () => Promise<number>, timeoutMs: number): Promise<number> {
  const limit = Date.now() + timeoutMs;
  for (;;) {
    const left = await count();
    if (left === 0 || Date.now() >= limit) return left;
    await new Promise((r) => setTimeout(r, 500));
  }
}

// ── the run ───────────────────────────────────────────────────────────────────────────────────────────────
async function main() {
  log(`seed ${seed}, ${seconds}s, ${instanceCount} instance(s), ${workerCount} workers, database ${dbName}`);
  await admin(`create database ${dbName}`);
  const handle = await createDb({ databaseUrl, poolSize: 4 });
  await migrateToLatest(handle.db);
  await handle.db
    .insertInto('credits.packages')
    .values(
      PACKAGES.map((p, index) => ({
        id: p.id,
        name: `Chaos ${index + 1}`,
        credits: p.credits,
        price_euro_cents: p.priceEuroCents,
        sort_order: index,
      })),
    )
    .execute();
  const auth = await TestAuthServer.start();
  const stripe = await TestStripeServer.start();
  const postgres = new URL(databaseUrl);
  const proxy = await TcpFaultProxy.start(
    { host: postgres.hostname, port: Number(postgres.port || 5432) },
    { random: seededRandom(seed * 7 + 3) },
  );
  const services: Services = { auth, stripe, serverDatabaseUrl: proxy.urlFor(databaseUrl) };
  const instances: Instance[] = [];
  for (let i = 0; i < instanceCount; i++) {
    const port = await freePort();
    instances.push({
      port,
      url: `http://127.0.0.1:${port}`,
      child: undefined,
      paused: false,
      stopping: false,
    });
  }
  await Promise.all(instances.map((instance) => startInstance(instance, services)));
  const events = await ChaosEvents.start();
  // One guild: user 0 owns it and funds the pool, everyone else spends from it (user 1 under a daily limit).
  for (const [index, userId] of USERS.entries())
    auth.setRole('chaos-guild', userId, index === 0 ? 'owner' : 'member');
  const tokens = Object.fromEntries(
    await Promise.all(USERS.map(async (id) => [id, await auth.sign({ id }, { expiresIn: '2h' })] as const)),
  );
  const callOptions: CallOptions = {
    baseUrls: instances.map((i) => i.url),
    serviceKey: SERVICE_KEY,
    tokens,
    timeoutMs: 2000,
  };
  // The endpoint exists before any money moves, so every event is queued for it.
  await events.createEndpoint(callOptions, instances[0]!.url);
  await setUp(
    [
      ...USERS.map((userId) => newOperation.grant(`seed-${userId}`, userId, INITIAL_CREDITS, 'chaos seed')),
      newOperation.poolInit('chaos-guild'),
      // The pool walks near 0: its own threshold (credits.alert_settings) makes it cross low and recovered too.
      {
        id: 'pool-alerts',
        kind: 'alerts',
        path: 'guild.setAlerts',
        actor: USERS[0]!,
        input: { guildId: 'chaos-guild', lowBalanceThreshold: POOL_THRESHOLD },
      },
      {
        id: 'limits',
        kind: 'limits',
        path: 'guild.setMemberLimits',
        actor: USERS[0]!,
        input: { guildId: 'chaos-guild', userId: USERS[1], dailyLimit: 25, monthlyLimit: null },
      },
    ],
    callOptions,
    instances[0]!.url,
  );
  // Auto top-up on for the planned users, then a spend below their threshold: each has an attempt at once.
  await setUpAutoTopUps(handle.db, AUTO_TOP_UPS, stripe, callOptions, instances[0]!.url);
  await setUp(
    AUTO_TOP_UPS.map((plan) =>
      newOperation.use(`autotopup-first-${plan.userId}`, plan.userId, AUTO_TOP_UP_FIRST_SPEND, {
        appId: 'chaos',
        description: 'below the auto top-up threshold',
      }),
    ),
    callOptions,
    instances[0]!.url,
  );

  const logDir = mkdtempSync(join(tmpdir(), 'mana-credits-chaos-'));
  const deadline = Date.now() + seconds * 1000;
  const workers = Array.from({ length: workerCount }, (_, worker) => {
    const logFile = join(logDir, `worker-${worker}.jsonl`);
    writeFileSync(logFile, '');
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', join(root, 'packages/server/chaos/worker.ts')],
      {
        cwd: root,
        env: {
          ...process.env,
          CHAOS_WORKER: JSON.stringify({
            ...callOptions,
            worker,
            seed: seed * 31 + worker,
            deadline,
            users: USERS,
            logFile,
            retries: 3,
          }),
        },
        stdio: ['ignore', 'inherit', 'inherit'],
      },
    );
    return { child, logFile, done: new Promise<void>((r) => child.on('exit', () => r())) };
  });

  const stripeDriver = new StripeChaos({
    stripe,
    random: seededRandom(seed * 31 + 1000),
    deliveryRandom: seededRandom(seed * 31 + 2000),
    seed,
    callOptions,
    users: USERS,
    packages: PACKAGES,
  });
  await Promise.all([
    nemesis(instances, services, proxy, deadline),
    stripeDriver.run(deadline),
    events.faults(seededRandom(seed * 31 + 3000), deadline),
  ]);
  await Promise.all(workers.map((w) => w.done));
  proxy.cutResponses(0);
  for (const instance of instances) if (instance.paused) kill(instance, 'SIGCONT');
  await waitForPostgres();
  for (const instance of instances) {
    try {
      if (!alive(instance)) throw new Error('not running');
      await waitUntilReady(instance);
    } catch {
      kill(instance, 'SIGKILL');
      await startInstance(instance, services);
    }
  }

  // ── settle unknown outcomes with their own keys ─────────────────────────────────────────────────────────
  const operations: LoggedOperation[] = workers.flatMap((w) =>
    readFileSync(w.logFile, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as LoggedOperation),
  );
  // Keyless operations are never retried: their unknown outcome stays unknown (checked with ≤ semantics).
  const unknownAfterRun = await settleUnknown(operations, callOptions, instances[0]!.url, 20);

  // ── let every auto top-up attempt end (a lease held by a killed server runs out after a minute) ───────────
  // An expiry row may cross a threshold too: first every lot of the run's short-lived grants lapses (the sweep
  // or an access), then nothing debits any more.
  const unlapsed = await waitUntil(async () => {
    const row = await handle.db
      .selectFrom('credits.lots')
      .select((eb) => eb.fn.countAll<string>().as('count'))
      .where('expires_at', '<', sql<Date>`now() + interval '1 hour'`)
      .where('remaining', '>', 0)
      .executeTakeFirstOrThrow();
    return Number(row.count);
  }, 60_000);
  if (unlapsed > 0) log(`${unlapsed} expiring lots not lapsed yet`);
  const autoInFlight = await stripeDriver.settleAutoTopUps(handle.db, 90_000);
  if (autoInFlight > 0) log(`${autoInFlight} auto top-up attempts still in flight`);

  // ── redeliver every webhook not yet acknowledged, as Stripe keeps doing ───────────────────────────────────
  const unacknowledged = await stripeDriver.drain(15_000);
  if (unacknowledged > 0) log(`${unacknowledged} webhook deliveries still unacknowledged`);

  // ── wait until every event is delivered to the (now healthy) receiver ─────────────────────────────────────
  const undelivered = await events.waitDelivered(handle.db, 60_000);
  if (undelivered > 0) log(`${undelivered} events still undelivered`);

  // ── check ───────────────────────────────────────────────────────────────────────────────────────────────
  const violations: string[] = [...crashes];
  const report = await reconcile(handle.db);
  for (const check of report.checks.filter((c) => !c.ok)) {
    violations.push(
      `reconcile ${check.name}: ${check.violations} ${JSON.stringify(check.samples.slice(0, 3))}`,
    );
  }
  const rows = await sql<{
    user_id: string;
    idempotency_key: string;
    id: string;
    amount: number;
    type: string;
  }>`
    select user_id, idempotency_key, id, amount, type from credits.transactions where idempotency_key is not null`.execute(
    handle.db,
  );
  const byKey = new Map(rows.rows.map((row) => [`${row.user_id}/${row.idempotency_key}`, row]));
  const guildRows = await handle.db
    .selectFrom('credits.guild_transactions')
    .select(['user_id', 'idempotency_key', 'id', 'amount', 'type'])
    .where('organization_id', '=', 'chaos-guild')
    .execute();
  for (const row of guildRows)
    byKey.set(`guild/${row.user_id}/${row.idempotency_key}`, {
      ...row,
      user_id: row.user_id,
      idempotency_key: row.idempotency_key ?? '',
    });
  let expectedPool = 0;
  const reservationIds = new Set(
    (await handle.db.selectFrom('credits.reservations').select('id').execute()).map((r) => r.id),
  );
  const ledgerById = new Map(
    (await handle.db.selectFrom('credits.transactions').select(['id', 'user_id', 'amount']).execute()).map(
      (r) => [r.id, r],
    ),
  );
  const expectedBalance = new Map(
    USERS.map((u) => [
      u,
      INITIAL_CREDITS - (AUTO_TOP_UPS.some((plan) => plan.userId === u) ? AUTO_TOP_UP_FIRST_SPEND : 0),
    ]),
  );
  const adjust = (userId: string, delta: number) =>
    expectedBalance.set(userId, (expectedBalance.get(userId) ?? 0) + delta);
  const giftRows = await handle.db.selectFrom('gifts.gift_codes').selectAll().execute();
  const giftsById = new Map(giftRows.map((gift) => [gift.id, gift]));
  const successes = await handle.db
    .selectFrom('gifts.gift_redemptions')
    .innerJoin('gifts.gift_codes', 'gifts.gift_codes.id', 'gifts.gift_redemptions.gift_code_id')
    .select(['gift_code_id', 'code', 'redeemer_user_id', 'credits_received'])
    .where('gifts.gift_redemptions.status', '=', 'success')
    .execute();
  const normalCode = (code: unknown) =>
    String(code)
      .replace(/[^0-9a-z]/gi, '')
      .toUpperCase();
  const successByCodeAndUser = new Map(
    successes.map((r) => [`${normalCode(r.code)}/${r.redeemer_user_id}`, r]),
  );
  // Keyless debits are named by their metadata: an acknowledged one is charged once, as told; a refused one
  // never; one with an unknown outcome at most once (≤ semantics; it was not retried).
  const keylessRows = new Map<string, { id: string; user_id: string; amount: number }[]>();
  for (const row of (
    await sql<{ id: string; user_id: string; amount: number; op: string }>`
      select id, user_id, amount, metadata->>'chaosOp' as op from credits.transactions
       where idempotency_key is null and metadata ? 'chaosOp'`.execute(handle.db)
  ).rows) {
    keylessRows.set(row.op, [...(keylessRows.get(row.op) ?? []), row]);
  }
  const batches = operations.filter((op) => op.kind === 'use.batch');
  const batchItems = batches.flatMap(itemsOfBatch);
  for (const op of [...operations.filter((op) => op.kind !== 'use.batch'), ...batchItems]) {
    const userId = op.account ?? (op.input.userId as string | undefined) ?? op.actor;
    if (op.keyless && op.kind === 'use') {
      const charged = keylessRows.get(op.id) ?? [];
      const allowed = op.outcome === 'ok' ? [1, 1] : op.outcome === 'refused' ? [0, 0] : [0, 1];
      if (charged.length < allowed[0]! || charged.length > allowed[1]!) {
        violations.push(
          `${op.id} (keyless use of ${op.input.amount}, ${op.outcome}${op.reason ? ` ${op.reason}` : ''}) charged ${charged.length} times: ${charged.map((r) => r.id).join(', ')}`,
        );
      }
      if (op.outcome === 'ok' && charged.length === 1 && charged[0]!.id !== op.result?.transactionId) {
        violations.push(`${op.id} acknowledged ${op.result?.transactionId}, ledger has ${charged[0]!.id}`);
      }
      // What the caller was told (an unknown one: whether it happened at all), not what the ledger holds.
      const happened = op.outcome === 'ok' ? 1 : op.outcome === 'unknown' ? Math.min(charged.length, 1) : 0;
      adjust(userId, -happened * (op.input.amount as number));
      continue;
    }
    const key = op.input.idempotencyKey as string | undefined;
    const row = key
      ? byKey.get(`${op.kind.startsWith('guild.') ? 'guild/' : ''}${userId}/${key}`)
      : undefined;
    if (op.outcome === 'unknown') {
      if (!op.keyless) violations.push(`${op.id} (${op.kind}) is still unknown after retries`);
      continue;
    }
    if (op.kind === 'reserve' || op.kind === 'release') {
      // Holds move no ledger money; reconcile checks reserved = Σ open holds. A reserve must exist once.
      if (
        op.kind === 'reserve' &&
        op.outcome === 'ok' &&
        !reservationIds.has(op.result?.reservationId as string)
      ) {
        violations.push(`${op.id} reserved ${op.result?.reservationId}, not in the database`);
      }
      continue;
    }
    if (op.kind === 'commit') {
      if (op.outcome === 'ok') {
        const posted = ledgerById.get(op.result?.transactionId as string);
        if (!posted || posted.user_id !== userId || -posted.amount !== op.result?.committed) {
          violations.push(
            `${op.id} committed ${op.result?.committed} as ${op.result?.transactionId}: ledger has ${JSON.stringify(posted)}`,
          );
        }
        adjust(userId, -(op.result?.committed as number));
      }
      continue;
    }
    if (op.kind === 'gift.redeem') {
      const success = successByCodeAndUser.get(`${normalCode(op.input.code)}/${op.actor}`);
      if (op.outcome === 'ok' && success?.credits_received !== op.result?.creditsReceived) {
        violations.push(
          `${op.id} redeemed ${op.result?.creditsReceived} but the database has ${success?.credits_received}`,
        );
      }
      continue; // redemption credits are counted once per (gift, user) below
    }
    if (op.kind === 'gift.cancel') {
      const gift = giftsById.get(op.input.id as string);
      if (
        op.outcome === 'ok' &&
        (!gift || gift.refunded_credits !== op.result?.refunded || gift.status === 'active')
      ) {
        violations.push(
          `${op.id} cancel answered ${op.result?.refunded}, gift is ${gift?.status}/${gift?.refunded_credits}`,
        );
      }
      continue; // refunds are counted from the gifts below
    }
    if (op.outcome === 'ok') {
      if (!row) violations.push(`${op.id} (${op.kind}) was acknowledged but has no ledger row`);
      if (op.kind === 'guild.fund') {
        adjust(userId, -(op.input.amount as number));
        expectedPool += op.input.amount as number;
      } else if (op.kind === 'guild.use') {
        if (row && row.id !== op.result?.transactionId)
          violations.push(`${op.id} acknowledged ${op.result?.transactionId}, guild ledger has ${row.id}`);
        expectedPool -= op.input.amount as number;
      } else if (op.kind === 'gift.create') {
        if (!giftsById.has(op.result?.id as string))
          violations.push(`${op.id} created gift ${op.result?.id}, not in the database`);
        adjust(userId, -10);
      } else {
        if (row && row.id !== op.result?.transactionId) {
          violations.push(`${op.id} acknowledged ${op.result?.transactionId}, ledger has ${row.id}`);
        }
        adjust(userId, op.kind === 'use' ? -(op.input.amount as number) : (op.input.amount as number));
      }
    } else if (row) {
      violations.push(`${op.id} (${op.kind}) was refused (${op.reason}) but left ledger row ${row.id}`);
    }
  }
  for (const success of successes) adjust(success.redeemer_user_id, success.credits_received);
  for (const gift of giftRows) adjust(gift.creator_id, gift.refunded_credits);
  const stripeCheck = await stripeDriver.check(handle.db);
  const eventsCheck = await events.check(handle.db);
  const autoTopUpCheck = await checkAutoTopUps(handle.db, stripe, AUTO_TOP_UPS);
  violations.push(...autoTopUpCheck.violations);
  violations.push(...eventsCheck.violations);
  violations.push(...stripeCheck.violations);
  for (const [userId, delta] of stripeCheck.balanceDelta) adjust(userId, delta);

  // ── lots that expired during the run (second-scale expiring grants, and what they funded or gave) ────────
  // Expiry is no caller's operation: balances fall by their `expiry` rows (checked against the lots by
  // reconcile: lot_ledger, lots_match_accounts, no_spend_from_expired_lots); here, that none came early.
  const expiry = (
    await sql<{ ledger: string; account: string; amount: number; rows: number; early: number }>`
      select 'user' as ledger, t.user_id as account, sum(t.amount)::int8 as amount, count(*)::int as rows,
             count(*) filter (where t.created_at < l.expires_at or l.expires_at is null)::int as early
        from credits.transactions t join credits.lots l on l.id = t.lot_ids[1]
       where t.type = 'expiry' group by t.user_id
      union all
      select 'guild', t.organization_id, sum(t.amount)::int8, count(*)::int,
             count(*) filter (where t.created_at < l.expires_at or l.expires_at is null)::int
        from credits.guild_transactions t join credits.lots l on l.id = t.lot_ids[1]
       where t.type = 'expiry' group by t.organization_id`.execute(handle.db)
  ).rows;
  for (const row of expiry) {
    if (row.ledger === 'user') adjust(row.account, row.amount);
    else if (row.account === 'chaos-guild') expectedPool += row.amount;
    if (row.early > 0)
      violations.push(`${row.ledger} ${row.account}: ${row.early} expiry rows before their lot expired`);
  }
  const lotStats = (
    await sql<{ expiring: number; lapsed: number; debits: number; holds: number }>`
      select (select count(*) from credits.lots where expires_at is not null)::int as expiring,
             (select count(*) from credits.lots where expired > 0)::int as lapsed,
             (select count(*) from (
                select t.id from credits.transactions t cross join lateral unnest(t.lot_ids) p(lot_id)
                  join credits.lots l on l.id = p.lot_id
                 where t.amount < 0 and t.type <> 'expiry' and l.expires_at is not null
                union
                select t.id from credits.guild_transactions t cross join lateral unnest(t.lot_ids) p(lot_id)
                  join credits.lots l on l.id = p.lot_id
                 where t.amount < 0 and t.type <> 'expiry' and l.expires_at is not null) d)::int as debits,
             (select count(distinct r.id) from credits.reservations r cross join lateral unnest(r.lot_ids) p(lot_id)
                join credits.lots l on l.id = p.lot_id where l.expires_at is not null)::int as holds`.execute(
      handle.db,
    )
  ).rows[0]!;
  const expiringGrants = operations.filter((op) => op.kind === 'grant' && op.input.expiresAt !== undefined);
  const balances = await handle.db.selectFrom('credits.balances').select(['user_id', 'balance']).execute();
  for (const { user_id, balance } of balances) {
    const expected = expectedBalance.get(user_id);
    if (expected !== undefined && expected !== balance) {
      violations.push(`${user_id}: balance ${balance}, acknowledged operations say ${expected}`);
    }
  }

  const pool = await handle.db
    .selectFrom('credits.guild_pools')
    .select('balance')
    .where('organization_id', '=', 'chaos-guild')
    .executeTakeFirst();
  if ((pool?.balance ?? 0) !== expectedPool) {
    violations.push(`guild pool: balance ${pool?.balance}, acknowledged operations say ${expectedPool}`);
  }
  const limited = await handle.db
    .selectFrom('credits.guild_member_usage')
    .select(['day', 'spent'])
    .where('organization_id', '=', 'chaos-guild')
    .where('user_id', '=', USERS[1]!)
    .execute();
  for (const day of limited)
    if (day.spent > 25) violations.push(`daily limit 25 exceeded: ${day.spent} on ${day.day}`);

  for (const instance of instances) kill(instance, 'SIGTERM');
  const errors = serverErrors();
  for (const deadlock of errors.deadlocks) violations.push(`deadlock: ${deadlock}`);
  await handle.close();
  await auth.close();
  await stripe.close();
  await events.close();
  await proxy.close();
  await admin(`drop database if exists ${dbName} with (force)`).catch(() => {});

  const count = (outcome: string) => operations.filter((op) => op.outcome === outcome).length;
  console.log('');
  console.log(`chaos summary (seed ${seed}, ${seconds}s, ${instanceCount} instance(s))`);
  console.log(
    `  operations: ${operations.length} (ok ${count('ok')}, refused ${count('refused')}, settled after the run ${unknownAfterRun}; keyless ${operations.filter((op) => op.keyless).length}, of them unknown ${count('unknown')}); useBatch: ${batches.length} calls, ${batchItems.length} items (${batchItems.filter((item) => item.kind === 'guild.use').length} pool spends; ok ${batchItems.filter((item) => item.outcome === 'ok').length}, refused ${batchItems.filter((item) => item.outcome === 'refused').length})`,
  );
  const purchaseCount = (outcome: string) =>
    stripeDriver.purchases.filter((op) => op.outcome === outcome).length;
  const s = stripeDriver.stats;
  console.log(
    `  purchases: ${stripeDriver.purchases.length} calls (ok ${purchaseCount('ok')}, refused ${purchaseCount('refused')}, unknown ${purchaseCount('unknown')}, not retried), ${stripeDriver.payments.size} paid (${s.declinedFirst} after a decline, ${stripeDriver.paidWithoutAnswer()} whose purchase answer was lost; ${s.autoPaid} auto top-ups paid, ${s.autoRefused} refused), ${s.refunds} refunds (${s.fullRefunds} to the full amount, ${s.refundsBeforePayment} sent before the payment), ${s.disputes} disputes (${s.disputesWon} won by the merchant)`,
  );
  console.log(
    `  webhooks: ${s.events} events (${s.secondEventIds} second ids for the same object), ${s.deliveries} deliveries (${s.duplicateDeliveries} duplicates, ${s.redeliveries} redeliveries, ${s.acknowledgedAfterRun} acknowledged after the run)`,
  );
  const expired = expiry.reduce((sum, row) => sum - row.amount, 0);
  console.log(
    `  expiring lots: ${expiringGrants.length} grants expiring 2–8 s ahead (ok ${expiringGrants.filter((op) => op.outcome === 'ok').length}), ${lotStats.expiring} lots with an expiry (grants and what they funded or gave), ${lotStats.lapsed} lapsed: ${expired} credits in ${expiry.reduce((sum, row) => sum + row.rows, 0)} expiry rows; ${lotStats.debits} debits and ${lotStats.holds} holds took from expiring lots`,
  );
  console.log(`  ${eventsCheck.summary}`);
  console.log(`  ${autoTopUpCheck.summary}`);
  console.log(`  connections cut by the proxy: ${proxy.cuts}`);
  console.log(`  ${errors.summary}`);
  console.log(
    `  faults injected: ${
      Object.entries(faults)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ') || 'none'
    }`,
  );
  console.log(
    `  reconcile: ${report.ok ? 'no drift' : 'DRIFT'} over ${report.totals.ledger_rows} ledger rows`,
  );
  console.log(`  violations: ${violations.length}`);
  for (const violation of violations.slice(0, 50)) console.log(`    - ${violation}`);
  process.exit(violations.length === 0 && operations.length > 0 ? 0 : 1);
}

main().catch((error) => {
  console.error('chaos run failed:', error);
  process.exit(1);
});
