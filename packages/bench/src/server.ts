import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';

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
}

export interface BenchServer {
  url: string;
  pid: number;
  /** From spawn to the first successful /ready. */
  readyAfterMs: number;
  /** Resident set now and the high-water mark since start, in MiB (Linux /proc). */
  memory(): { rssMb: number; peakRssMb: number };
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
  const child: ChildProcess = spawn(
    process.execPath,
    [
      ...(options.nodeFlags ?? []),
      ...(options.runtime === 'tsx'
        ? ['--import', 'tsx', 'src/main.ts']
        : ['--enable-source-maps', 'dist/main.js']),
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
    async stop() {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
