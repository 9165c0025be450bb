import { type ChildProcess, spawn } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach } from 'vitest';
import type { TestDatabase } from './database.ts';
import { type Client, clientFor, SERVICE_KEY } from './server.ts';

/**
 * The real server process, from its sources: `node --import tsx packages/server/src/main.ts` (no build needed;
 * the bundle that `pnpm start` and the container run is started by build.test.ts), on a test database, for
 * tests that signal or kill it like an orchestrator would. Every process a file starts is SIGKILLed after
 * each test that left it running.
 */
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');

export interface ServerProcess {
  child: ChildProcess;
  url: string;
  /** Calls with the service key, as `appId`. */
  client: Client;
  logs: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const running = new Set<ChildProcess>();
afterEach(() => {
  for (const child of running)
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  running.clear();
});

export async function waitFor<T>(
  what: string,
  probe: () => T | undefined | Promise<T | undefined>,
  ms = 60_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Starts the server on `database` and waits until it listens (it may still be migrating: see /ready). */
export async function spawnServer(
  database: TestDatabase,
  options: { authUrl: string; appId: string; env?: Record<string, string> },
): Promise<ServerProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'packages/server/src/main.ts'], {
    cwd: root,
    env: {
      PATH: process.env.PATH ?? '',
      NODE_ENV: 'test',
      LOG_LEVEL: 'info',
      HOST: '127.0.0.1',
      PORT: '0',
      MANA_CORE_AUTH_URL: options.authUrl,
      MANA_CORE_SERVICE_KEY: SERVICE_KEY,
      ...database.env,
      ...options.env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  const logs: string[] = [];
  const collect = (chunk: Buffer) => logs.push(...chunk.toString('utf8').split('\n').filter(Boolean));
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) =>
    child.once('exit', (code, signal) => done({ code, signal })),
  );
  const url = await waitFor('the server to listen', () => {
    if (child.exitCode !== null) throw new Error(`server exited early:\n${logs.join('\n')}`);
    for (const line of logs) {
      const match = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(line);
      if (match) return match[1];
    }
    return undefined;
  });
  const client = clientFor(url, () => ({ 'x-service-key': SERVICE_KEY, 'x-app-id': options.appId }));
  return { child, url, client, logs, exited };
}
