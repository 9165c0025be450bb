import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The node flags of the production start: the Dockerfile's CMD and `pnpm start` (packages/bench/test checks
 * that they agree). The heap limit is there for memory: below 2 GB, V8 sizes the old generation at about 1.6×
 * its live data instead of 4× (docs/benchmarks.md, "Memory of the server").
 */
export const PRODUCTION_NODE_FLAGS = ['--enable-source-maps', '--max-old-space-size=1024'] as const;

export const OBSERVER = join(dirname(fileURLToPath(import.meta.url)), 'server-observer.mjs');

/** `dist`: the production bundle (`pnpm start`, the image); `tsx`: the sources through tsx's loader (`pnpm dev`). */
export type ServerRuntime = 'dist' | 'tsx';

export interface ServerOptions {
  root: string;
  /** Postgres; undefined = the embedded PGlite in memory (DATA_DIR=memory://). */
  databaseUrl: string | undefined;
  authUrl: string;
  serviceKey: string;
  poolSize: number;
  /** Extra node flags, e.g. --cpu-prof. */
  nodeFlags?: string[];
  /** Extra environment, e.g. COALESCE_DEBITS. */
  env?: Record<string, string>;
  /** Default 'dist' (call buildServer first). */
  runtime?: ServerRuntime;
  /** Preload server-observer.mjs, for runtimeBetween (GC pauses and event-loop delay). */
  observe?: boolean;
}

/** The server's GC pauses and event-loop delay over a window (server-observer.mjs). */
export interface RuntimeFigures {
  seconds: number;
  gcPauses: number;
  gcMs: number;
  longestGcMs: number;
  loopDelayMaxMs: number;
}

export interface BenchServer {
  url: string;
  pid: number;
  /** From spawn to the first successful /ready. */
  readyAfterMs: number;
  /** Resident set now and the high-water mark since start, in MiB (Linux /proc). */
  memory(): { rssMb: number; peakRssMb: number };
  /** With `observe`: GC and event-loop figures between two Date.now() times (lines come every 250 ms). */
  runtimeBetween(fromMs: number, toMs: number): RuntimeFigures | undefined;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

function statusKb(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  try {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(
      readFileSync(`/proc/${pid}/status`, 'utf8'),
    );
    return match ? Number(match[1]) : 0;
  } catch {
    return 0;
  }
}

/**
 * Bundles the server as `pnpm start` does (tsup, packages/server/dist; no type check), so that the bench
 * measures the build that ships.
 */
export async function buildServer(root: string): Promise<void> {
  const serverDir = join(root, 'packages/server');
  const child = spawn(join(serverDir, 'node_modules/.bin/tsup'), ['--silent'], {
    cwd: serverDir,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', resolve);
  });
  if (code !== 0) throw new Error(`building the server bundle failed (tsup exited with ${code})`);
}

/**
 * The real server as a child process with production settings: by default the bundle the image runs,
 * `node --enable-source-maps dist/main.js`; with runtime 'tsx' the sources, `node --import tsx src/main.ts`
 * (tsx as a loader rather than the tsx CLI, so that either way the pid is the server's own and its memory can
 * be read).
 */
export async function startServer(options: ServerOptions): Promise<BenchServer> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const serverDir = join(options.root, 'packages/server');
  const observerDir = options.observe ? mkdtempSync(join(tmpdir(), 'bench-observer-')) : undefined;
  const observerFile = observerDir && join(observerDir, 'runtime.jsonl');
  const child: ChildProcess = spawn(
    process.execPath,
    [
      ...(options.nodeFlags ?? []),
      ...(observerFile ? ['--import', OBSERVER] : []),
      ...(options.runtime === 'tsx'
        ? ['--import', 'tsx', 'src/main.ts']
        : [...PRODUCTION_NODE_FLAGS, 'dist/main.js']),
    ],
    {
      cwd: serverDir,
      env: {
        PATH: process.env.PATH,
        NODE_ENV: 'production',
        LOG_LEVEL: 'warn',
        HOST: '127.0.0.1',
        PORT: String(port),
        BASE_URL: url,
        ...(options.databaseUrl ? { DATABASE_URL: options.databaseUrl } : { DATA_DIR: 'memory://' }),
        DB_POOL_SIZE: String(options.poolSize),
        MANA_CORE_SERVICE_KEY: options.serviceKey,
        MANA_CORE_AUTH_URL: options.authUrl,
        BENCH_NOOP: 'true',
        ...(observerFile ? { BENCH_OBSERVER_FILE: observerFile } : {}),
        ...options.env,
      },
      stdio: ['ignore', 'ignore', 'inherit'],
    },
  );
  const spawnedAt = Date.now();
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const pid = child.pid;
  if (pid === undefined) throw new Error('server did not start');

  const deadline = Date.now() + 60_000;
  let ready = false;
  while (!ready && Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`server exited with code ${child.exitCode} while starting`);
    try {
      ready = (await fetch(`${url}/ready`, { signal: AbortSignal.timeout(1000) })).ok;
    } catch {}
    if (!ready) await new Promise((resolve) => setTimeout(resolve, 200));
  }
  if (!ready) {
    child.kill('SIGKILL');
    throw new Error('server was not ready within 60 s');
  }

  return {
    url,
    pid,
    readyAfterMs: Date.now() - spawnedAt,
    memory: () => ({ rssMb: statusKb(pid, 'VmRSS') / 1024, peakRssMb: statusKb(pid, 'VmHWM') / 1024 }),
    runtimeBetween: (fromMs, toMs) => (observerFile ? readRuntime(observerFile, fromMs, toMs) : undefined),
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
        await exited;
        clearTimeout(timer);
      }
      if (observerDir) rmSync(observerDir, { recursive: true, force: true });
    },
  };
}

interface ObserverLine {
  at: number;
  gcCount: number;
  gcMs: number;
  longestGcMs: number;
  loopDelayMaxMs: number;
}

/**
 * The figures of an observer file from its last line at or before `fromMs` to its first at or after `toMs`
 * (each line's longest pause and delay are those of the 250 ms before it).
 */
export function readRuntime(file: string, fromMs: number, toMs: number): RuntimeFigures | undefined {
  let lines: ObserverLine[];
  try {
    lines = readFileSync(file, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as ObserverLine);
  } catch {
    return undefined;
  }
  // No line yet at `fromMs`: the process started within the window, its counts from zero.
  const first = lines.findLast((line) => line.at <= fromMs) ?? { at: fromMs, gcCount: 0, gcMs: 0 };
  const last = lines.find((line) => line.at >= toMs) ?? lines.at(-1);
  if (!last || last.at <= first.at) return undefined;
  const window = lines.filter((line) => line.at > first.at && line.at <= last.at);
  return {
    seconds: (last.at - first.at) / 1000,
    gcPauses: last.gcCount - first.gcCount,
    gcMs: last.gcMs - first.gcMs,
    longestGcMs: Math.max(0, ...window.map((line) => line.longestGcMs)),
    loopDelayMaxMs: Math.max(0, ...window.map((line) => line.loopDelayMaxMs)),
  };
}
