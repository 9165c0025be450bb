import { type ChildProcess, spawn } from 'node:child_process';
import { loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createDb, migrateToLatest } from '@mana-credits/db';
import pg from 'pg';
import {
  type CallOptions,
  callWithRetries,
  newOperation,
  seededRandom,
  settleUnknown,
  setUp,
  type TimedOperation,
} from '../chaos/protocol.ts';
import { TestAuthServer } from '../test/helpers/auth-server.ts';
import { TcpFaultProxy } from '../test/helpers/tcp-proxy.ts';
import { checkDatabase } from './check.ts';
import { cleanupAllSync, freePort, PgPair, type StandbyMode } from './cluster.ts';
import { Traffic } from './traffic.ts';

/**
 * `pnpm failover`: what happens to money when the Postgres primary dies. For each standby mode (sync, async)
 * a throw-away primary and streaming standby are made (./cluster.ts: temp dirs, free ports, never the machine's
 * own cluster), two server instances started on the multi-host DATABASE_URL (or, with --route proxy, behind a
 * TCP proxy that is switched to the new primary), and 16 callers drive keyed money traffic (./traffic.ts).
 * Then, several times: the primary is killed (pg_ctl -m immediate), the standby promoted, the time until every
 * instance acknowledges a write again measured, and the old primary rewound (pg_rewind) and rejoined as the
 * new standby. Afterwards every unknown outcome is retried with its key and the last primary checked
 * (./check.ts): every acknowledged operation present exactly once, balances and pool as acknowledged,
 * reconcile clean. Sync mode must lose nothing and be back within --bound-ms; async mode reports its loss.
 * `--bench` instead measures throughput without a standby, with an async and with a sync one.
 */
const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    /** Comma-separated: sync, async. */
    modes: { type: 'string', default: 'sync,async' },
    failovers: { type: 'string' },
    'async-failovers': { type: 'string' },
    /** Seconds of traffic with a confirmed standby before each kill. */
    warmup: { type: 'string' },
    callers: { type: 'string', default: '16' },
    route: { type: 'string', default: 'multihost' },
    'bound-ms': { type: 'string', default: '5000' },
    seed: { type: 'string', default: String(Date.now() % 100000) },
    fsync: { type: 'string', default: 'on' },
    /** kill: the primary dies; partition: it is cut off from its standby for --partition-ms first. */
    fault: { type: 'string', default: 'kill' },
    'partition-ms': { type: 'string', default: '1000' },
    /** One-way delay of the primary → standby link in ms (see link.ts). */
    'link-delay-ms': { type: 'string', default: '2' },
    bench: { type: 'boolean', default: false },
    /** --bench: seconds measured per configuration, and rounds over the three. */
    seconds: { type: 'string' },
    rounds: { type: 'string' },
    /** --bench: the standby configurations compared. */
    standbys: { type: 'string', default: 'none,async,sync' },
  },
});

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const quick = args.quick;
const modes = args.modes.split(',').map((m) => m.trim()) as StandbyMode[];
const syncFailovers = Number(args.failovers ?? (quick ? 3 : 5));
const asyncFailovers = Number(args['async-failovers'] ?? (quick ? 1 : 3));
const warmupSeconds = Number(args.warmup ?? (quick ? 2 : 5));
const callers = Number(args.callers);
const route = args.route as 'multihost' | 'proxy';
const boundMs = Number(args['bound-ms']);
const seed = Number(args.seed);
const fsync = args.fsync !== 'off';
const linkDelayMs = Number(args['link-delay-ms']);
const fault = args.fault as 'kill' | 'partition';
const partitionMs = Number(args['partition-ms']);
if (!['kill', 'partition'].includes(fault)) throw new Error(`--fault: kill or partition, not ${fault}`);
const SERVICE_KEY = 'failover-service-key-0123456789abcdefghijklmn';
const USERS = Array.from({ length: 12 }, (_, i) => `failover-user-${i}`);
const PROBE_USER = 'failover-probe';
const GUILD = 'failover-guild';
const INITIAL_CREDITS = 5000;
const DATABASE = 'mana_credits';
const started = Date.now();
const log = (message: string) =>
  console.log(`[failover ${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${message}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

if (!['multihost', 'proxy'].includes(route)) throw new Error(`--route: multihost or proxy, not ${route}`);

// ── cleanup, also on failure: clusters, servers ─────────────────────────────────────────────────────────────
const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
  cleanupAllSync();
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => process.exit(130));

// ── the servers ─────────────────────────────────────────────────────────────────────────────────────────────
interface Instance {
  port: number;
  url: string;
  child: ChildProcess;
  crashed?: string;
}

async function startInstance(databaseUrl: string, auth: TestAuthServer): Promise<Instance> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'packages/server/src/main.ts')], {
    cwd: root,
    env: {
      ...process.env,
      NODE_ENV: 'production',
      PORT: String(port),
      HOST: '127.0.0.1',
      DATABASE_URL: databaseUrl,
      MIGRATE_ON_START: 'false',
      MANA_CORE_SERVICE_KEY: SERVICE_KEY,
      MANA_CORE_AUTH_URL: auth.url,
      BASE_URL: url,
      LOG_LEVEL: 'fatal',
      DB_POOL_SIZE: '8',
      SHUTDOWN_TIMEOUT_MS: '3000',
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  children.add(child);
  const instance: Instance = { port, url, child };
  child.once('exit', (code, signal) => {
    children.delete(child);
    instance.crashed = `server :${port} exited (code ${code}, signal ${signal})`;
  });
  for (let i = 0; i < 240; i++) {
    if (instance.crashed) throw new Error(instance.crashed);
    try {
      if ((await fetch(`${url}/ready`, { signal: AbortSignal.timeout(1000) })).ok) return instance;
    } catch {}
    await sleep(250);
  }
  throw new Error(`server :${port} did not become ready`);
}

async function stopInstance(instance: Instance): Promise<void> {
  if (instance.crashed) return;
  const exited = new Promise<void>((r) => instance.child.once('exit', () => r()));
  instance.crashed = 'stopped';
  instance.child.kill('SIGTERM');
  await Promise.race([exited, sleep(5000)]);
  instance.child.kill('SIGKILL');
}

// ── watching the service: a keyed write per instance every 50 ms, and /ready ───────────────────────────────
class Watch {
  readonly probes: TimedOperation[] = [];
  private readonly probesOf: TimedOperation[][];
  readonly readiness: { instance: number; at: number; ready: boolean }[] = [];
  private stopping = false;
  private loops: Promise<void>[] = [];

  constructor(
    private readonly instances: Instance[],
    private readonly callOptions: CallOptions,
  ) {
    this.probesOf = instances.map(() => []);
  }

  start(): void {
    this.instances.forEach((instance, index) => {
      this.loops.push(this.writeLoop(instance, index), this.readyLoop(instance, index));
    });
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.loops);
  }

  private async writeLoop(instance: Instance, index: number): Promise<void> {
    const random = seededRandom(seed + index);
    for (let n = 1; !this.stopping; n++) {
      const operation = newOperation.grant(`probe-${index}-${n}`, PROBE_USER, 1, 'failover probe');
      const options = { callOptions: { ...this.callOptions, timeoutMs: 1000 }, retries: 0 };
      const probe = await callWithRetries(operation, options, random, instance.url);
      this.probes.push(probe);
      this.probesOf[index]!.push(probe);
      await sleep(50);
    }
  }

  private async readyLoop(instance: Instance, index: number): Promise<void> {
    let last: boolean | undefined;
    while (!this.stopping) {
      let ready = false;
      try {
        ready = (await fetch(`${instance.url}/ready`, { signal: AbortSignal.timeout(1000) })).ok;
      } catch {}
      if (ready !== last) this.readiness.push({ instance: index, at: Date.now(), ready });
      last = ready;
      await sleep(50);
    }
  }

  /** When instance `index` first acknowledged a write it was asked for after `since` (undefined: not yet). */
  backAt(index: number, since: number): number | undefined {
    return this.probesOf[index]!.find((p) => p.startedAt >= since && p.outcome === 'ok')?.endedAt;
  }
}

// ── one mode: a pair, two servers, traffic, several failovers, the check ─────────────────────────────────────
interface FailoverReport {
  promoteMs: number;
  /** Kill → every instance acknowledged a write again. */
  backMs: number;
  /** Longest time an instance's /ready said 503 (or did not answer within 1 s). */
  notReadyMs: number;
  /** Fault (kill, or the start of the partition) → ok-throughput of the callers back to half of before. */
  throughputBackMs: number | undefined;
  /** Calls answered with an unknown outcome (mostly 503) in the 10 s after the kill. */
  failedCalls: number;
  /** WAL the primary had sent that the link dropped at the kill (the standby never got it). */
  droppedWalBytes: number;
  /** The rejoin of the old primary as the new standby (none after the last failover). */
  rewindMs: number | undefined;
  catchUpMs: number | undefined;
}

interface ModeReport {
  mode: StandbyMode;
  failovers: FailoverReport[];
  operations: number;
  acknowledged: number;
  refused: number;
  settledLater: number;
  lost: number;
  lostKinds: string;
  present: number;
  ledgerRows: number;
  reconcileOk: boolean;
  okPerSecond: number;
  violations: string[];
}

async function setUpServers(pair: PgPair, auth: TestAuthServer) {
  const directUrl = pair.multiHostUrl(DATABASE);
  await pair.primary.query(`create database ${DATABASE}`);
  const handle = await createDb({ databaseUrl: directUrl, poolSize: 2 });
  await migrateToLatest(handle.db);
  let proxy: TcpFaultProxy | undefined;
  const proxyTarget = { host: '127.0.0.1', port: pair.primary.port };
  let serverUrl = directUrl;
  if (route === 'proxy') {
    // start() keeps this object: changing its port sends new connections to another node.
    proxy = await TcpFaultProxy.start(proxyTarget);
    serverUrl = proxy.urlFor(pair.primary.url(DATABASE));
  }
  const instances = await Promise.all([startInstance(serverUrl, auth), startInstance(serverUrl, auth)]);
  for (const [index, userId] of USERS.entries())
    auth.setRole(GUILD, userId, index === 0 ? 'owner' : 'member');
  const tokens = Object.fromEntries(
    await Promise.all(USERS.map(async (id) => [id, await auth.sign({ id }, { expiresIn: '2h' })] as const)),
  );
  const callOptions: CallOptions = {
    baseUrls: instances.map((i) => i.url),
    serviceKey: SERVICE_KEY,
    tokens,
    timeoutMs: 3000,
  };
  await setUp(
    [
      ...USERS.map((userId) =>
        newOperation.grant(`seed-${userId}`, userId, INITIAL_CREDITS, 'failover seed'),
      ),
      newOperation.poolInit(GUILD),
    ],
    callOptions,
    instances[0]!.url,
  );
  return { handle, proxy, proxyTarget, instances, callOptions };
}

function okRate(operations: TimedOperation[], from: number, to: number): number {
  const count = operations.filter(
    (op) => op.outcome === 'ok' && op.endedAt >= from && op.endedAt < to,
  ).length;
  return count / Math.max((to - from) / 1000, 0.001);
}

async function runMode(mode: 'sync' | 'async', failovers: number): Promise<ModeReport> {
  log(`${mode} standby: creating a primary and a standby`);
  const pair = await PgPair.create({ mode, fsync, linkDelayMs });
  const auth = await TestAuthServer.start();
  const violations: string[] = [];
  try {
    log(`${mode}: nodes on ${pair.nodes.map((n) => n.port).join(', ')}; starting two servers (${route})`);
    const { handle, proxy, proxyTarget, instances, callOptions } = await setUpServers(pair, auth);
    const traffic = new Traffic({ callOptions, users: USERS, guildId: GUILD, callers, seed, retries: 2 });
    const watch = new Watch(instances, callOptions);
    traffic.start();
    watch.start();
    const trafficStarted = Date.now();
    const reports: FailoverReport[] = [];
    for (let i = 1; i <= failovers; i++) {
      await sleep(warmupSeconds * 1000);
      const before = okRate(traffic.operations, Date.now() - 2000, Date.now());
      const faultAt = Date.now();
      const killedNode = pair.primary.name;
      const { killedAt } = await pair.killPrimary(fault, partitionMs);
      const droppedWalBytes = pair.lastDroppedBytes;
      const { promoteMs } = await pair.promote();
      if (proxy) {
        proxyTarget.port = pair.primary.port;
        proxy.cutAll();
      }
      log(
        `failover ${i}/${failovers}: killed ${killedNode}, promoted ${pair.primary.name} in ${promoteMs.toFixed(0)} ms`,
      );
      let backAt: number | undefined;
      for (const deadline = Date.now() + 30_000; Date.now() < deadline; await sleep(20)) {
        const times = instances.map((_, index) => watch.backAt(index, killedAt));
        if (times.every((t) => t !== undefined)) {
          backAt = Math.max(...(times as number[]));
          break;
        }
      }
      const backMs = backAt === undefined ? Number.POSITIVE_INFINITY : backAt - killedAt;
      // The old primary comes back as the standby before the next kill; after the last one the run ends on the
      // promoted node (a rejoin then would prove nothing more and cost seconds).
      const last = i === failovers;
      log(
        `  every instance acknowledges writes again ${backMs} ms after the kill${last ? '' : `; rejoining ${killedNode} (pg_rewind)`}`,
      );
      let rewindMs: number | undefined;
      let catchUpMs: number | undefined;
      if (last) await sleep(2000);
      else {
        ({ rewindMs, catchUpMs } = await pair.rejoin());
        log(
          `  ${killedNode} streams again as the ${mode} standby (rewind ${rewindMs.toFixed(0)} ms, catch-up ${catchUpMs.toFixed(0)} ms)`,
        );
      }
      // Throughput: after the kill the callers' ok-rate (250 ms windows) drops below half of what it was in the
      // 2 s before; back = the end of the first window after that dip at half or more again.
      let throughputBackMs: number | undefined;
      let dipped = false;
      for (let t = faultAt; t + 250 <= Date.now(); t += 250) {
        const rate = okRate(traffic.operations, t, t + 250);
        if (!dipped) dipped = rate < before / 2;
        else if (rate >= before / 2) {
          throughputBackMs = t + 250 - faultAt;
          break;
        }
      }
      if (!dipped) throughputBackMs = 0;
      let notReadyMs = 0;
      instances.forEach((_, index) => {
        const changes = watch.readiness.filter((r) => r.instance === index && r.at >= faultAt - 100);
        for (const [k, change] of changes.entries()) {
          if (change.ready) continue;
          const readyAgain = changes.slice(k + 1).find((c) => c.ready)?.at ?? Date.now();
          notReadyMs = Math.max(notReadyMs, readyAgain - change.at);
        }
      });
      const failedCalls = [...traffic.operations, ...watch.probes]
        .filter((op) => op.endedAt >= faultAt && op.startedAt < killedAt + 10_000)
        .reduce((sum, op) => sum + op.failedAttempts, 0);
      reports.push({
        promoteMs,
        backMs,
        notReadyMs,
        throughputBackMs,
        failedCalls,
        droppedWalBytes,
        rewindMs,
        catchUpMs,
      });
      if (mode === 'sync' && backMs > boundMs) {
        violations.push(`failover ${i}: back after ${backMs} ms, more than the bound of ${boundMs} ms`);
      }
    }
    await Promise.all([traffic.stop(), watch.stop()]);
    const trafficSeconds = (Date.now() - trafficStarted) / 1000;
    const operations = [...traffic.operations, ...watch.probes];
    log(`${mode}: ${operations.length} calls; settling the unknown outcomes with their keys`);
    const settledLater = await settleUnknown(operations, callOptions, instances[0]!.url, 30);
    for (const instance of instances) {
      if (instance.crashed) violations.push(instance.crashed);
    }
    const result = await checkDatabase({
      db: handle.db,
      operations,
      // The probe user starts at 0 (the check counts every user it sees an operation of).
      users: USERS,
      initialCredits: INITIAL_CREDITS,
      guildId: GUILD,
    });
    violations.push(...result.violations);
    if (mode === 'sync') {
      for (const op of result.lost.slice(0, 20)) {
        violations.push(`${op.id} (${op.kind}) was acknowledged but is not on the promoted standby`);
      }
      if (result.lost.length > 20) violations.push(`… and ${result.lost.length - 20} more lost`);
    }
    const count = (outcome: string) => operations.filter((op) => op.outcome === outcome).length;
    const lostKinds = Object.entries(
      result.lost.reduce<Record<string, number>>((acc, op) => {
        acc[op.kind] = (acc[op.kind] ?? 0) + 1;
        return acc;
      }, {}),
    )
      .map(([kind, n]) => `${kind} ${n}`)
      .join(', ');
    for (const instance of instances) await stopInstance(instance);
    await handle.close();
    await proxy?.close();
    return {
      mode,
      failovers: reports,
      operations: operations.length,
      acknowledged: count('ok'),
      refused: count('refused'),
      settledLater,
      lost: result.lost.length,
      lostKinds,
      present: result.present,
      ledgerRows: result.ledgerRows,
      reconcileOk: result.reconcileOk,
      okPerSecond: traffic.operations.filter((op) => op.outcome === 'ok').length / trafficSeconds,
      violations,
    };
  } finally {
    await auth.close();
    await pair.destroy();
  }
}

function printMode(report: ModeReport) {
  const f = report.failovers;
  const max = (values: number[]) => (values.length ? Math.max(...values) : 0);
  console.log(`\n${report.mode} standby: ${f.length} failover(s)`);
  f.forEach((r, i) => {
    console.log(
      `  #${i + 1}: promote ${r.promoteMs.toFixed(0)} ms, back within ${r.backMs} ms, /ready not ready for ${r.notReadyMs} ms, throughput back within ${r.throughputBackMs ?? '?'} ms, ${r.failedCalls} failed calls, ${r.droppedWalBytes} WAL bytes in flight dropped${r.rewindMs === undefined ? '' : `; rejoin: rewind ${r.rewindMs.toFixed(0)} ms, catch-up ${r.catchUpMs!.toFixed(0)} ms`}`,
    );
  });
  console.log(
    `  calls: ${report.operations} (acknowledged ${report.acknowledged}, refused ${report.refused}, unknown then settled with their keys ${report.settledLater}); ${report.okPerSecond.toFixed(0)} acknowledged/s from ${callers} callers`,
  );
  console.log(
    `  lost: ${report.lost} of ${report.lost + report.present} acknowledged operations checked${report.lostKinds ? ` (${report.lostKinds})` : ''}; reconcile ${report.reconcileOk ? 'clean' : 'DRIFT'} over ${report.ledgerRows} ledger rows; back within max ${max(f.map((r) => r.backMs))} ms`,
  );
  console.log(`  violations: ${report.violations.length}`);
  for (const violation of report.violations.slice(0, 30)) console.log(`    - ${violation}`);
}

// ── --bench: throughput without a standby, with an async and with a sync one ────────────────────────────────
async function bench() {
  const seconds = Number(args.seconds ?? (quick ? 8 : 20));
  const rounds = Number(args.rounds ?? (quick ? 1 : 2));
  const standbys = args.standbys.split(',').map((m) => m.trim()) as StandbyMode[];
  const results: Record<string, { okPerSecond: number[]; p50: number[]; p99: number[]; commitMs: number[] }> =
    {};
  for (let round = 1; round <= rounds; round++) {
    for (const mode of standbys) {
      const pair = await PgPair.create({ mode, fsync, linkDelayMs });
      const auth = await TestAuthServer.start();
      try {
        const { handle, instances, callOptions, proxy } = await setUpServers(pair, auth);
        const traffic = new Traffic({
          callOptions,
          users: USERS,
          guildId: GUILD,
          callers,
          seed: seed + round,
          retries: 2,
        });
        traffic.start();
        await sleep(2000);
        const from = Date.now();
        await sleep(seconds * 1000);
        const to = Date.now();
        await traffic.stop();
        const window = traffic.operations.filter(
          (op) => op.outcome === 'ok' && op.endedAt >= from && op.endedAt < to,
        );
        const latencies = window.map((op) => op.endedAt - op.startedAt).sort((a, b) => a - b);
        results[mode] ??= { okPerSecond: [], p50: [], p99: [], commitMs: [] };
        const entry = results[mode];
        entry.okPerSecond.push(window.length / ((to - from) / 1000));
        entry.p50.push(latencies[Math.floor(latencies.length * 0.5)] ?? 0);
        entry.p99.push(latencies[Math.floor(latencies.length * 0.99)] ?? 0);
        if (process.env.FAILOVER_DEBUG) {
          const kinds = new Map<string, number[]>();
          for (const op of window)
            kinds.set(op.kind, [...(kinds.get(op.kind) ?? []), op.endedAt - op.startedAt]);
          for (const [kind, values] of kinds) {
            values.sort((a, b) => a - b);
            log(`  ${kind}: ${values.length} p50 ${values[Math.floor(values.length / 2)]} ms`);
          }
        }
        // What a commit itself costs, without the service and with the machine quiet: one connection doing
        // single-row insert commits back to back for 3 s.
        entry.commitMs.push(await commitLatency(pair));
        log(
          `bench round ${round} ${mode}: ${entry.okPerSecond.at(-1)!.toFixed(0)} acknowledged/s, p50 ${entry.p50.at(-1)} ms, p99 ${entry.p99.at(-1)} ms; one commit ${entry.commitMs.at(-1)!.toFixed(2)} ms`,
        );
        for (const instance of instances) await stopInstance(instance);
        await handle.close();
        await proxy?.close();
      } finally {
        await auth.close();
        await pair.destroy();
      }
    }
  }
  const each = (values: number[], digits = 0) => values.map((v) => v.toFixed(digits)).join(' / ');
  console.log(
    `\nthroughput, ${callers} callers, 2 instances, ${seconds} s per round (${rounds} round(s), each value below: round 1 / round 2 …), fsync ${fsync ? 'on' : 'off'}, replication link delay ${linkDelayMs} ms one way, load average ${loadavg()[0]!.toFixed(1)}`,
  );
  console.log('| standby | acknowledged/s | p50 ms | p99 ms | one commit, ms |');
  console.log('|---|---|---|---|---|');
  for (const [mode, r] of Object.entries(results)) {
    console.log(
      `| ${mode} | ${each(r.okPerSecond)} | ${each(r.p50)} | ${each(r.p99)} | ${each(r.commitMs, 2)} |`,
    );
  }
}

/** Mean milliseconds of one single-row insert commit on the primary, one connection, 3 s. */
async function commitLatency(pair: PgPair): Promise<number> {
  const client = new pg.Client({ connectionString: pair.primary.url(DATABASE) });
  await client.connect();
  try {
    await client.query('create table if not exists bench_commit (id bigserial primary key, at timestamptz)');
    let commits = 0;
    const from = performance.now();
    while (performance.now() - from < 3000) {
      await client.query('insert into bench_commit (at) values (now())');
      commits++;
    }
    return (performance.now() - from) / commits;
  } finally {
    await client.end();
  }
}

async function main() {
  if (args.bench) {
    await bench();
    process.exit(0);
  }
  log(
    `seed ${seed}, modes ${modes.join(', ')}, ${callers} callers, route ${route}, warm-up ${warmupSeconds}s, fsync ${fsync ? 'on' : 'off'}, replication link delay ${linkDelayMs} ms`,
  );
  const reports: ModeReport[] = [];
  for (const mode of modes)
    reports.push(await runMode(mode as 'sync' | 'async', mode === 'sync' ? syncFailovers : asyncFailovers));
  for (const report of reports) printMode(report);
  const sync = reports.find((r) => r.mode === 'sync');
  const asyncReport = reports.find((r) => r.mode === 'async');
  const failed = reports.some((r) => r.violations.length > 0) || reports.some((r) => r.acknowledged === 0);
  const parts: string[] = [];
  if (sync) {
    parts.push(
      `sync standby: ${sync.failovers.length} failovers, ${sync.lost} of ${sync.lost + sync.present} acknowledged operations lost, back within ${Math.max(...sync.failovers.map((f) => f.backMs))} ms (bound ${boundMs} ms)`,
    );
  }
  if (asyncReport) {
    parts.push(
      `async standby: ${asyncReport.failovers.length} failover(s), ${asyncReport.lost} of ${asyncReport.lost + asyncReport.present} acknowledged operations lost`,
    );
  }
  console.log(`\nfailover ${failed ? 'FAILED' : 'passed'} — ${parts.join('; ')}`);
  process.exit(failed ? 1 : 0);
}

main().catch((error) => {
  console.error('failover run failed:', error);
  process.exit(1);
});
