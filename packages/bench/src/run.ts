import { fork } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { TestAuthServer } from '../../server/test/helpers/auth-server.ts';
import { CpuMeter, type CpuSnapshot, type CpuSpent } from './cpu.ts';
import {
  checkLedger,
  createBenchDatabase,
  type Population,
  postgresVersion,
  seed,
  setDefaultThreshold,
} from './database.ts';
import type { LoadJob, LoadResult } from './load.ts';
import { captureUseStatement, pgbenchScript, pgbenchVersion, runPgbench } from './pgbench.ts';
import { mainThreadProfile, summarizeProfile } from './profile.ts';
import {
  type Goal,
  goalsText,
  loadText,
  machineInfo,
  markdownReport,
  type StepRow,
  textTable,
  writeDocs,
} from './report.ts';
import { type LoadKind, type LoadTarget, requestFactory } from './requests.ts';
import {
  type BenchServer,
  buildServer,
  type RuntimeFigures,
  type ServerRuntime,
  startServer,
} from './server.ts';

/**
 * `pnpm bench`: starts the real server against a fresh Postgres database, drives it from a separate
 * autocannon process and compares every figure with ceilings measured in the same run (a no-op procedure
 * for Node, pgbench replaying the exact debit statement for Postgres). See docs/benchmarks.md.
 */
const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    profile: { type: 'boolean', default: false },
    seconds: { type: 'string' },
    users: { type: 'string' },
    pool: { type: 'string', default: '10' },
    'no-docs': { type: 'boolean', default: false },
    /**
     * Alerts configured (issue 16): LOW_BALANCE_THRESHOLD set for every account, so each ledger insert's
     * trigger looks up the account's last entry (the bench's balances never cross it: no event is written).
     */
    alerts: { type: 'boolean', default: false },
    /** Extra server environment, KEY=VALUE, repeatable (e.g. DB_PREPARED_STATEMENTS=false to compare). */
    'server-env': { type: 'string', multiple: true, default: [] },
    /** Seconds of unmeasured load on the fresh server before step 1 (default 2 quick, 16 full). */
    'server-warmup': { type: 'string' },
    /** dist: the production bundle (built first, as `pnpm start` does); tsx: the sources, as `pnpm dev`. */
    server: { type: 'string', default: 'dist' },
    'database-url': {
      type: 'string',
      default: process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
    },
  },
});

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const mode = args.quick ? 'quick' : 'full';
const seconds = Number(args.seconds ?? (args.quick ? 3 : 10));
const warmupSeconds = args.quick ? 1 : 3;
const poolSize = Number(args.pool);
if (args.server !== 'dist' && args.server !== 'tsx') throw new Error('--server must be dist or tsx');
const runtime: ServerRuntime = args.server;
const serverEnv = Object.fromEntries(
  (args['server-env'] ?? []).map((pair) => {
    const at = pair.indexOf('=');
    if (at <= 0) throw new Error(`--server-env takes KEY=VALUE, not "${pair}"`);
    return [pair.slice(0, at), pair.slice(at + 1)];
  }),
);
const serverEnvText = Object.entries(serverEnv)
  .map(([key, value]) => `${key}=${value}`)
  .join(', ');
const SERVICE_KEY = 'bench-service-key-0123456789abcdefghijklmnop';
const CONNECTIONS = { throughput: 32, hot: 64, batch: 8 };
const BATCH_SIZE = 100;
const SERVER_WARMUP_SECONDS = Number(args['server-warmup'] ?? (args.quick ? 8 : 16));
/** With --alerts: far below the seeded balances, so the trigger runs its whole lookup and finds no crossing. */
const ALERT_THRESHOLD = 1000;
const population: Population = {
  users: Number(args.users ?? (args.quick ? 20_000 : 100_000)),
  credits: 1_000_000_000,
  hotUserId: 'bench-hot-user',
  guildId: 'bench-guild',
  guildMembers: Array.from({ length: 50 }, (_, i) => `bench-guild-member-${i + 1}`),
  // Issue 15: users with ten lots of mixed priority and expiry (LOT_MIX) beside the one-lot population.
  lotsUsers: Math.max(1, Math.floor(Number(args.users ?? (args.quick ? 20_000 : 100_000)) / 10)),
  hotLotsUserId: 'bench-hot-user-10-lots',
};
const LOTS_USERS = population.lotsUsers ?? 0;
const HOT_LOTS_USER = population.hotLotsUserId ?? '';
const TOKEN_USERS = args.quick ? 500 : 2_000;

const log = (message: string) => console.log(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}`);

const workDir = mkdtempSync(join(tmpdir(), 'mana-bench-'));
const cleanups: (() => Promise<void>)[] = [];
async function cleanUp() {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
}
process.once('SIGINT', () => {
  log('interrupted: cleaning up');
  void cleanUp().then(() => process.exit(130));
});

function baseTarget(kind: LoadKind, tokensFile?: string): LoadJob['target'] {
  return {
    kind,
    serviceKey: SERVICE_KEY,
    users: population.users,
    hotUserId: population.hotUserId,
    lotsUsers: LOTS_USERS,
    hotLotsUserId: HOT_LOTS_USER,
    guildId: population.guildId,
    guildMembers: population.guildMembers,
    batchSize: BATCH_SIZE,
    ...(tokensFile ? { tokensFile } : {}),
  };
}

/** One real call first: a missing procedure (or input field) means the feature is not built yet. */
async function probe(url: string, target: LoadTarget): Promise<{ skip?: string; fail?: string }> {
  const factory = requestFactory(target);
  const request = factory.next();
  const response = await fetch(`${url}${factory.path}`, { method: 'POST', ...request });
  if (response.ok) return {};
  const body = await response.text();
  const procedure = factory.path.slice('/trpc/'.length);
  if (response.status === 404 && body.includes('No procedure found')) {
    return { skip: `not available yet: ${procedure} is not on this server` };
  }
  if (response.status === 400 && target.kind === 'hot-guild' && body.includes('guildId')) {
    return { skip: `not available yet: ${procedure} does not take guildId` };
  }
  return { fail: `probe answered ${response.status}: ${body.slice(0, 300)}` };
}

/** The load process, forked once; each step sends it one job. */
function startLoadProcess() {
  const child = fork(join(root, 'packages/bench/src/load.ts'), [], {
    execArgv: ['--import', 'tsx'],
    cwd: join(root, 'packages/bench'),
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  cleanups.push(async () => {
    child.kill();
  });
  return (job: LoadJob, onMeasuring?: () => void) =>
    new Promise<LoadResult>((resolveResult, reject) => {
      const onExit = (code: number | null) => reject(new Error(`load process exited with ${code}`));
      const onMessage = (message: { measuring?: true; result?: LoadResult; error?: string }) => {
        if (message.measuring) return onMeasuring?.();
        child.off('exit', onExit);
        child.off('message', onMessage);
        if (message.result) resolveResult(message.result);
        else reject(new Error(`load process failed: ${message.error}`));
      };
      child.once('exit', onExit);
      child.on('message', onMessage);
      child.send(job);
    });
}

let sendLoad: ReturnType<typeof startLoadProcess> | undefined;
/** Reads the CPU time of the server and its database backends around each measured window (cpu.ts). */
let cpuMeter: CpuMeter | undefined;

async function runLoad(
  job: LoadJob,
  server: BenchServer,
): Promise<{ result: LoadResult; rssMb: number; cpu?: CpuSpent; runtime?: RuntimeFigures }> {
  sendLoad ??= startLoadProcess();
  let rssMb = 0;
  const sampler = setInterval(() => {
    rssMb = Math.max(rssMb, server.memory().rssMb);
  }, 250);
  let before: Promise<CpuSnapshot | undefined> | undefined;
  let measuringFrom = Date.now();
  try {
    const result = await sendLoad(job, () => {
      measuringFrom = Date.now();
      before ??= cpuMeter?.snapshot().catch(() => undefined);
    });
    const measuringTo = Date.now();
    const start = await before;
    const cpu = start && cpuMeter ? await cpuMeter.since(start).catch(() => undefined) : undefined;
    // The observer writes every 250 ms: its line after the window's end.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const runtime = server.runtimeBetween(measuringFrom, measuringTo);
    return { result, rssMb, ...(cpu ? { cpu } : {}), ...(runtime ? { runtime } : {}) };
  } finally {
    clearInterval(sampler);
  }
}

interface HttpStep {
  id: string;
  title: string;
  kind: LoadKind;
  connections: number;
  rate?: number;
  unit?: string;
}

/** User tokens for step 3b: in a file for the load process, one at hand for the probe. */
interface Tokens {
  file: string;
  sample: string;
}

async function httpStep(server: BenchServer, step: HttpStep, tokens: Tokens): Promise<StepRow> {
  const row: StepRow = { id: step.id, title: step.title, status: 'ok', connections: step.connections };
  const target = baseTarget(step.kind, tokens.file);
  const { skip, fail } = await probe(server.url, { ...target, tokens: [tokens.sample] });
  if (skip || fail) {
    log(`step ${step.id} ${step.title}: ${skip ?? fail}`);
    return { ...row, status: skip ? 'skipped' : 'failed', note: skip ?? fail };
  }
  log(
    `step ${step.id} ${step.title}: ${step.rate ? `open loop at ${step.rate}/s` : `${step.connections} connections`}`,
  );
  const loadBefore = loadavg()[0]!;
  measuredSteps++;
  const { result, rssMb, cpu, runtime } = await runLoad(
    { url: server.url, target, connections: step.connections, warmupSeconds, seconds, rate: step.rate },
    server,
  );
  // Per debit for batches, per request otherwise.
  const operations = step.kind === 'use-batch' ? result.debitsPerSecond * result.seconds : result.ok;
  const throughput = step.kind === 'use-batch' ? result.debitsPerSecond : result.okPerSecond;
  const statuses = Object.entries(result.statuses)
    .filter(([code]) => !code.startsWith('2'))
    .map(([code, count]) => `${count}×${code}`)
    .join(', ');
  const notes = [
    ...(statuses || result.errors
      ? [`non-2xx ${statuses || 'none'}; socket errors ${result.errors} (timeouts ${result.timeouts})`]
      : []),
    ...(result.openLoop ? [openLoopNote(result.openLoop)] : []),
  ];
  const openLoop = result.openLoop;
  return {
    ...row,
    // Open loop: the sockets it needed (never more requests were in flight at once).
    ...(openLoop ? { connections: openLoop.socketsOpened } : {}),
    throughput,
    unit: step.unit ?? 'req/s',
    ...(openLoop ? { ratio: { value: result.okPerSecond / openLoop.targetRate, of: 'target' } } : {}),
    latency: result.latency,
    errors: result.errors,
    non2xx: result.non2xx,
    statuses: result.statuses,
    rssMb,
    ...(runtime ? { runtime } : {}),
    ...(cpu && operations > 0
      ? {
          cpuPerOperation: {
            serverUs: (cpu.serverMs * 1000) / operations,
            databaseUs: (cpu.databaseMs * 1000) / operations,
          },
        }
      : {}),
    load: { before: loadBefore, after: loadavg()[0]! },
    ...(notes.length ? { note: notes.join('; ') } : {}),
  };
}

function openLoopNote(openLoop: NonNullable<LoadResult['openLoop']>): string {
  const ms = (value: number) => value.toFixed(value < 10 ? 2 : 1);
  return (
    `open loop at ${openLoop.targetRate}/s (sent ${openLoop.sentRate.toFixed(1)}/s), latency from each request's ` +
    `intended send time; from the actual send (uncorrected) p50 ${ms(openLoop.serviceTime.p50)} / p99 ` +
    `${ms(openLoop.serviceTime.p99)} ms; the generator sent late by p99 ${ms(openLoop.sendLag.p99)} / max ` +
    `${ms(openLoop.sendLag.max)} ms; at most ${openLoop.peakInFlight} requests in flight`
  );
}

/** A ceiling may move by this much (relative) over the steps measured against it before they are rerun. */
const CEILING_DRIFT = 0.2;
/** The measurements of a run without reruns (steps 1 and 2b twice), and --quick's budget by its own clock. */
const PLANNED_STEPS = 16;
const QUICK_BUDGET_SECONDS = 95;
/** Measurements made so far (reruns included), for the budget. */
let measuredSteps = 0;

const signedPercent = (value: number) => `${value >= 0 ? '+' : '−'}${Math.abs(value * 100).toFixed(0)} %`;

/**
 * Steps measured against a ceiling, bracketed by it: `first` is the ceiling measured just before them, `again`
 * measures it right after, and each step's ratio is against the mean of the two. When the ceiling moved more
 * than CEILING_DRIFT in between, the machine changed under the steps: they run once more, between that second
 * measurement and a third, and both rounds are reported (the goals read the last).
 */
async function bracketed(
  first: StepRow,
  again: () => Promise<StepRow>,
  of: string,
  steps: ((round: number) => Promise<StepRow>)[],
  /** Whether a rerun of this many more steps still fits the run's time budget (--quick has one). */
  rerunFits: (extraSteps: number) => boolean,
): Promise<StepRow[]> {
  const out: StepRow[] = [];
  let before = first;
  for (let round = 1; ; round++) {
    const measured: StepRow[] = [];
    for (const step of steps) measured.push(await step(round));
    const after = await again();
    const ids = measured.map((row) => row.id).join(', ');
    const drift =
      before.throughput && after.throughput ? after.throughput / before.throughput - 1 : undefined;
    const ceiling =
      drift === undefined
        ? (before.throughput ?? after.throughput)
        : (before.throughput! + after.throughput!) / 2;
    for (const row of measured) {
      out.push(
        ceiling && row.status === 'ok' && row.throughput !== undefined
          ? { ...row, ratio: { value: row.throughput / ceiling, of } }
          : row,
      );
    }
    const moved = drift !== undefined && Math.abs(drift) > CEILING_DRIFT;
    const rerun = moved && round === 1 && rerunFits(steps.length + 1);
    const verdict = !moved
      ? ''
      : rerun
        ? `, more than ${CEILING_DRIFT * 100} %: ${ids} rerun`
        : round === 1
          ? `, more than ${CEILING_DRIFT * 100} %, no time left to rerun ${ids} (--quick): their ratios are not reliable`
          : `, more than ${CEILING_DRIFT * 100} % again: the ratios of ${ids} are not reliable`;
    const driftNote =
      drift === undefined ? undefined : `ceiling again after ${ids}: ${signedPercent(drift)}${verdict}`;
    out.push({ ...after, note: [after.note, driftNote].filter(Boolean).join('; ') || undefined });
    if (!rerun) return out;
    log(`ceiling ${after.id} moved ${signedPercent(drift!)}: rerunning ${ids}`);
    before = after;
  }
}

async function main() {
  const started = Date.now();
  const adminUrl = args['database-url']!;
  const machine = machineInfo(await postgresVersion(adminUrl), await pgbenchVersion(), root);
  log(
    `${mode} run: ${seconds} s per step (+${warmupSeconds} s warm-up), pool ${poolSize}, load ${machine.loadBefore}`,
  );

  if (runtime === 'dist') {
    log('building the server bundle (packages/server/dist)');
    await buildServer(root);
  }
  sendLoad = startLoadProcess();
  const database = await createBenchDatabase(adminUrl);
  cleanups.push(() => database.drop());
  const auth = await TestAuthServer.start();
  cleanups.push(() => auth.close());
  for (const member of population.guildMembers) auth.setRole(population.guildId, member, 'member');
  const serverOptions = {
    root,
    databaseUrl: database.url,
    authUrl: auth.url,
    serviceKey: SERVICE_KEY,
    poolSize,
    runtime,
    observe: true,
    env: { ...serverEnv, ...(args.alerts ? { LOW_BALANCE_THRESHOLD: String(ALERT_THRESHOLD) } : {}) },
  };

  // Seeding, the server's start-up and signing tokens overlap (both sides migrate under Kysely's lock).
  const seeded = (async () => {
    const seeding = Date.now();
    await seed(database.url, population);
    log(
      `seeded ${population.users.toLocaleString('en-US')} users with 1 lot and ${LOTS_USERS.toLocaleString('en-US')} + 1 hot with 10 lots in ${Date.now() - seeding} ms`,
    );
  })();
  const starting = startServer(serverOptions);
  const signed = Promise.all(
    Array.from({ length: TOKEN_USERS }, (_, i) => auth.sign({ id: String(i + 1) }, { expiresIn: '2h' })),
  );
  const [server, signedTokens] = await Promise.all([starting, signed, seeded]).then(
    ([server, signedTokens]) => [server, signedTokens] as const,
    async (error: unknown) => {
      await starting.then((server) => server.stop()).catch(() => undefined);
      throw error;
    },
  );
  cleanups.push(() => server.stop());
  const tokens: Tokens = { file: join(workDir, 'tokens.json'), sample: signedTokens[0]! };
  writeFileSync(tokens.file, JSON.stringify(signedTokens));
  if (args.alerts) {
    // The server writes it on its first delivery-job run; written here too, so pgbench's steps see it at once.
    await setDefaultThreshold(database.url, ALERT_THRESHOLD);
    log(`alerts configured: LOW_BALANCE_THRESHOLD=${ALERT_THRESHOLD}`);
  }
  log(`server pid ${server.pid} at ${server.url}`);
  const meter = await CpuMeter.open(database.url, server.pid);
  cpuMeter = meter;
  cleanups.push(() => meter.close());

  // Unmeasured: a freshly started server spends more CPU per request than it does a minute later (JIT, heap
  // sizing), and measured the no-op ceiling of step 1 well below its second measurement (docs/benchmarks.md).
  log(`server warm-up: ${SERVER_WARMUP_SECONDS} s of internal.credits.use and the no-op, not measured`);
  for (const kind of ['internal-use', 'noop'] as const) {
    await runLoad(
      {
        url: server.url,
        target: baseTarget(kind),
        connections: CONNECTIONS.throughput,
        warmupSeconds: 0,
        seconds: SERVER_WARMUP_SECONDS / 2,
      },
      server,
    );
  }

  const rows: StepRow[] = [];
  const find = (id: string) => rows.findLast((row) => row.id === id && row.status === 'ok');
  // --quick keeps to its time budget: a rerun is made only if it and the steps still to come fit in it.
  let plannedSteps = PLANNED_STEPS;
  const stepMs = (warmupSeconds + seconds) * 1000 + 500;
  const rerunFits = (extraSteps: number) => {
    const projected = Date.now() - started + (plannedSteps - measuredSteps + extraSteps) * stepMs;
    if (args.quick && projected > QUICK_BUDGET_SECONDS * 1000) return false;
    plannedSteps += extraSteps;
    return true;
  };
  const http = (step: HttpStep) => (round: number) =>
    httpStep(server, { ...step, title: round > 1 ? `${step.title}, rerun` : step.title }, tokens);

  // 1, then 3: the Node ceiling, the real procedures on random users against it, the ceiling again.
  const noop: HttpStep = {
    id: '1',
    title: 'no-op procedure (Node ceiling)',
    kind: 'noop',
    connections: CONNECTIONS.throughput,
  };
  const noopFirst = await httpStep(server, noop, tokens);
  rows.push(noopFirst);
  rows.push(
    ...(await bracketed(
      noopFirst,
      () => httpStep(server, { ...noop, title: `${noop.title}, again` }, tokens),
      'no-op',
      [
        http({
          id: '3a',
          title: 'internal.credits.use, random users, 1 lot',
          kind: 'internal-use',
          connections: CONNECTIONS.throughput,
        }),
        // 3c right after 3a, so the two are measured as close together as the machine allows (issue 15).
        http({
          id: '3c',
          title: 'internal.credits.use, random users, 10 lots',
          kind: 'internal-use-lots',
          connections: CONNECTIONS.throughput,
        }),
        http({
          id: '3b',
          title: 'credits.use with JWT, random users',
          kind: 'user-use',
          connections: CONNECTIONS.throughput,
        }),
      ],
      rerunFits,
    )),
  );

  // 2. Database ceilings: the captured debit statement, replayed by pgbench with the pool's client count.
  const statement = await captureUseStatement();
  const pgbenchStep = async (
    id: string,
    title: string,
    user: { random: number } | { fixed: string },
    protocol: 'prepared' | 'extended',
    reference?: { id: string; of: string },
    rate?: number,
  ): Promise<StepRow> => {
    log(`step ${id} ${title}: ${poolSize} clients${rate ? `, open loop at ${rate}/s` : ''}`);
    const loadBefore = loadavg()[0]!;
    measuredSteps++;
    const { script, defines } = pgbenchScript(statement, user);
    const result = await runPgbench({
      databaseUrl: database.url,
      script,
      defines,
      clients: poolSize,
      protocol,
      warmupSeconds,
      seconds,
      workDir: join(workDir, `pgbench-${id}`),
      ...(rate ? { rate } : {}),
    });
    const ceiling = reference && find(reference.id)?.throughput;
    return {
      id,
      title,
      status: 'ok',
      ...(reference && ceiling ? { ratio: { value: result.tps / ceiling, of: reference.of } } : {}),
      connections: poolSize,
      throughput: result.tps,
      unit: 'tps',
      latency: result.latency,
      errors: result.failed,
      non2xx: 0,
      load: { before: loadBefore, after: loadavg()[0]! },
      ...(result.aborted ? { note: 'some pgbench clients aborted' } : {}),
    };
  };
  const hotRow = (title: string) => pgbenchStep('2b', title, { fixed: population.hotUserId }, 'prepared');
  rows.push(
    await pgbenchStep(
      '2a',
      'pgbench debit, random users (DB ceiling)',
      { random: population.users },
      'prepared',
    ),
  );
  // 2c is for reference, not a goal: the same replay with unnamed statements, the way node-pg sends them.
  rows.push(
    await pgbenchStep(
      '2c',
      'pgbench debit, random users, unnamed (as node-pg)',
      { random: population.users },
      'extended',
      { id: '2a', of: 'DB' },
    ),
  );
  const hotRowFirst = await hotRow('pgbench debit, one hot user (hot-row ceiling)');
  rows.push(hotRowFirst);
  // For reference, no goal: the hot row's debit when it burns from ten lots instead of one.
  rows.push(
    await pgbenchStep('2d', 'pgbench debit, hot user with 10 lots', { fixed: HOT_LOTS_USER }, 'prepared', {
      id: '2b',
      of: '1 lot',
    }),
  );

  // 4. One hot account, 64 callers, against the hot-row ceiling (measured again after them).
  rows.push(
    ...(await bracketed(
      hotRowFirst,
      () => hotRow('pgbench debit, one hot user (hot-row ceiling), again'),
      'hot-row',
      [
        http({ id: '4a', title: 'hot user, 1 lot', kind: 'hot-user', connections: CONNECTIONS.hot }),
        http({
          id: '4c',
          title: 'hot user, 10 lots (mixed priority/expiry)',
          kind: 'hot-user-lots',
          connections: CONNECTIONS.hot,
        }),
        http({
          id: '4b',
          title: `hot guild pool (${population.guildMembers.length} members)`,
          kind: 'hot-guild',
          connections: CONNECTIONS.hot,
        }),
      ],
      rerunFits,
    )),
  );

  // 5. Batches of 100 debits.
  rows.push(
    await httpStep(
      server,
      {
        id: '5',
        title: `internal.credits.useBatch, ${BATCH_SIZE} items/call`,
        kind: 'use-batch',
        connections: CONNECTIONS.batch,
        unit: 'debits/s',
      },
      tokens,
    ),
  );

  // 6. Latency, open loop at half of the measured peak of 3a (its last run).
  const peak = find('3a')?.throughput;
  if (peak) {
    const rate = Math.max(1, Math.floor(peak / 2));
    rows.push(
      await httpStep(
        server,
        {
          id: '6',
          title: 'internal.credits.use at ½ peak, open loop (latency)',
          kind: 'internal-use',
          connections: 0,
          rate,
        },
        tokens,
      ),
    );
    // For reference, no goal: the database's own tail at that rate, without Node (pgbench open loop, -R).
    rows.push(
      await pgbenchStep(
        '6p',
        'pgbench debit at the rate of 6, open loop (DB latency)',
        { random: population.users },
        'extended',
        undefined,
        rate,
      ),
    );
  } else {
    rows.push({ id: '6', title: 'latency at ½ peak', status: 'skipped', note: 'no peak from step 3a' });
  }

  const peakRssMb = server.memory().peakRssMb;
  await server.stop();

  let profile: ReturnType<typeof summarizeProfile> | undefined;
  if (args.profile) {
    const profileDir = join(workDir, 'profile');
    log('profiling: server with --cpu-prof under the load of step 3a');
    const profiled = await startServer({
      ...serverOptions,
      nodeFlags: ['--cpu-prof', `--cpu-prof-dir=${profileDir}`],
      observe: false,
    });
    cleanups.push(() => profiled.stop());
    await runLoad(
      {
        url: profiled.url,
        target: baseTarget('internal-use'),
        connections: CONNECTIONS.throughput,
        warmupSeconds,
        seconds,
      },
      profiled,
    );
    await profiled.stop();
    const file = mainThreadProfile(
      readdirSync(profileDir)
        .filter((name) => name.endsWith('.cpuprofile'))
        .map((name) => join(profileDir, name)),
    );
    if (file) {
      // Start-up and warm-up are left out; what remains is the server under the measured load.
      profile = summarizeProfile(file, profiled.readyAfterMs + warmupSeconds * 1000 + 1000);
      // Kept for a closer look (e.g. Chrome DevTools or speedscope); ignored by git.
      const kept = join(root, 'packages/bench/profiles', `server-${mode}-${Date.now()}.cpuprofile`);
      mkdirSync(dirname(kept), { recursive: true });
      copyFileSync(file, kept);
      log(`profile kept at ${kept}`);
    } else {
      log('no .cpuprofile was written');
    }
  }

  const ledger = await checkLedger(database.url);
  const ledgerText =
    (ledger.mismatched === 0
      ? `Σ ledger = balance for all ${ledger.accounts.toLocaleString('en-US')} accounts (${ledger.ledgerRows.toLocaleString('en-US')} ledger rows)`
      : `MISMATCH: ${ledger.mismatched} of ${ledger.accounts} accounts differ from their ledger`) +
    (ledger.lotsMismatched === 0
      ? '; their lots add up (Σ remaining = balance, Σ pinned = reserved).'
      : `; LOTS MISMATCH: the lots of ${ledger.lotsMismatched} accounts do not add up.`);
  machine.loadAfter = loadText();

  const goals = evaluateGoals(rows, peakRssMb);
  const table = textTable(rows);
  console.log(
    `\n${table}\n\nserver peak RSS (VmHWM): ${peakRssMb.toFixed(0)} MB\n${goalsText(goals)}\n${ledgerText}`,
  );
  if (profile) {
    console.log('\nprofile, self time by origin:');
    for (const line of profile.byOrigin)
      console.log(`  ${line.percent.toFixed(1).padStart(5)}%  ${line.name}`);
    console.log('profile, inclusive time by area:');
    for (const line of profile.byArea) console.log(`  ${line.percent.toFixed(1).padStart(5)}%  ${line.name}`);
    console.log('profile, top functions (self):');
    for (const line of profile.byFunction)
      console.log(`  ${line.percent.toFixed(1).padStart(5)}%  ${line.name}`);
  }

  if (!args['no-docs']) {
    const block = markdownReport({
      mode,
      date: `started ${new Date(started).toISOString().slice(0, 16).replace('T', ' ')} UTC, took ${Math.round((Date.now() - started) / 1000)} s`,
      machine,
      settings:
        `${seconds} s per step after ${warmupSeconds} s warm-up; ${population.users.toLocaleString('en-US')} seeded users; ` +
        `server pool ${poolSize} (pgbench clients the same); autocannon connections: ${CONNECTIONS.throughput} ` +
        `(steps 1, 3), ${CONNECTIONS.hot} (4), ${CONNECTIONS.batch} (5); step 6 open loop (conns = sockets it opened); ` +
        `ceilings measured again after their steps (ratios against the mean; steps rerun once when it moved > ${CEILING_DRIFT * 100} %); ` +
        `${SERVER_WARMUP_SECONDS} s of unmeasured server warm-up before step 1; amount 1 and a unique idempotency key per debit; ` +
        `server ${runtime === 'dist' ? 'bundle (node dist/main.js)' : 'sources through tsx'}, peak RSS (VmHWM) ${peakRssMb.toFixed(0)} MB` +
        `${args.alerts ? `; alerts configured (LOW_BALANCE_THRESHOLD=${ALERT_THRESHOLD})` : ''}` +
        `${serverEnvText ? `; server environment ${serverEnvText}` : ''}.`,
      rows,
      goals,
      ledger: ledgerText,
      profile,
    });
    writeDocs(join(root, 'docs/benchmarks.md'), mode, block);
    log(`wrote docs/benchmarks.md (${mode} block)`);
  }
  log(`done in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  if (ledger.mismatched > 0 || ledger.lotsMismatched > 0) process.exitCode = 1;
}

function evaluateGoals(rows: StepRow[], peakRssMb: number): Goal[] {
  const ok = (id: string) => rows.findLast((row) => row.id === id && row.status === 'ok');
  const verdict = (pass: boolean | undefined): Goal['verdict'] =>
    pass === undefined ? 'n/a' : pass ? 'pass' : 'FAIL';
  const ratioOf = (id: string) => ok(id)?.ratio?.value;
  const p1 = ratioOf('3a');
  const p2 = ratioOf('4a');
  const p2guild = ratioOf('4b');
  const p3 = ok('5')?.throughput;
  // Issue 15: the ten-lot steps against the one-lot steps of the same run (same ceilings, so the same ratio).
  const lotsP1 = p1 !== undefined && ratioOf('3c') !== undefined ? ratioOf('3c')! / p1 : undefined;
  const lotsP2 = p2 !== undefined && ratioOf('4c') !== undefined ? ratioOf('4c')! / p2 : undefined;
  const lotsText = (label: string, ten: string, one: string, value: number | undefined) =>
    value === undefined
      ? `${label} not measured`
      : `${label} ${value.toFixed(2)}× (${ratioOf(ten)!.toFixed(2)} vs ${ratioOf(one)!.toFixed(2)})`;
  const p99 = ok('6')?.latency?.p99;
  const fmt = (value: number | undefined, text: (v: number) => string) =>
    value === undefined ? 'not measured' : text(value);
  return [
    {
      id: 'P1',
      text: 'internal.credits.use, random users ≥ 0.8× no-op',
      measured: fmt(p1, (v) => `${v.toFixed(2)}×`),
      verdict: verdict(p1 === undefined ? undefined : p1 >= 0.8),
    },
    {
      id: 'P2',
      text: 'hot account, 64 callers ≥ 1.0× pgbench hot row',
      measured:
        fmt(p2, (v) => `user ${v.toFixed(2)}×`) +
        (p2guild === undefined ? '; guild pool not measured' : `; guild pool ${p2guild.toFixed(2)}×`),
      verdict: verdict(p2 === undefined ? undefined : p2 >= 1 && (p2guild === undefined || p2guild >= 1)),
    },
    {
      id: 'lots',
      text: '10 lots ≥ 0.8× the 1-lot ratio (P1: 3c/3a, P2: 4c/4a)',
      measured: `${lotsText('P1', '3c', '3a', lotsP1)}; ${lotsText('P2', '4c', '4a', lotsP2)}`,
      verdict: verdict(
        lotsP1 === undefined && lotsP2 === undefined
          ? undefined
          : (lotsP1 === undefined || lotsP1 >= 0.8) && (lotsP2 === undefined || lotsP2 >= 0.8),
      ),
    },
    {
      id: 'P3',
      text: 'useBatch ≥ 40,000 debits/s',
      measured: fmt(p3, (v) => `${Math.round(v).toLocaleString('en-US')} debits/s`),
      verdict: verdict(p3 === undefined ? undefined : p3 >= 40_000),
    },
    {
      id: 'P4',
      text: 'p99 ≤ 10 ms at ½ peak; RSS ≤ 150 MB',
      measured: `${fmt(p99, (v) => `p99 ${v.toFixed(2)} ms`)}; peak RSS ${peakRssMb.toFixed(0)} MB`,
      verdict: verdict(p99 === undefined ? undefined : p99 <= 10 && peakRssMb <= 150),
    },
  ];
}

main()
  .catch((error) => {
    console.error('bench failed:', error instanceof Error ? (error.stack ?? error.message) : error);
    process.exitCode = 1;
  })
  .finally(async () => {
    await cleanUp();
    rmSync(workDir, { recursive: true, force: true });
  });
