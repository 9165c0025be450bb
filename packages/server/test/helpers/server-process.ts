import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Options } from 'tsup';
import { afterEach } from 'vitest';
import { cachedArtifact, inputsKey, ROOT as root } from './build-cache.ts';
import type { TestDatabase } from './database.ts';
import { type Client, clientFor, SERVICE_KEY } from './server.ts';

/**
 * The real server process, on a test database, for tests that signal or kill it like an orchestrator would:
 * `node --enable-source-maps main.js` of the production bundle (the build `pnpm start` and the container run),
 * built from the sources by this helper (serverBundle). Every process a file starts is SIGKILLed after each
 * test that left it running.
 */

/** What the bundle is made of: the server and db sources, the build config, the locked package versions. */
const BUNDLE_INPUTS = [
  'packages/server/src',
  'packages/server/package.json',
  'packages/server/tsup.config.ts',
  'packages/server/tsconfig.json',
  'packages/db/src',
  'packages/db/package.json',
  'tsconfig.base.json',
  'pnpm-lock.yaml',
];

let bundle: Promise<string> | undefined;

/**
 * The directory of a bundle of the server built by tsup with the server's own config (its entries, externals
 * and the files it copies beside the bundle), kept between runs while its inputs are unchanged
 * (helpers/build-cache.ts). Not packages/server/dist, which build.test.ts rebuilds and checks meanwhile; but
 * inside packages/server, so that the bundle loads its npm packages from the server's node_modules as dist does.
 * A start of the bundle costs about half the CPU time of a start of the sources through tsx.
 */
export function serverBundle(): Promise<string> {
  bundle ??= cachedArtifact(
    join(root, 'packages/server/node_modules/.cache/mana-credits-test-bundle'),
    inputsKey(BUNDLE_INPUTS),
    async (outDir) => {
      const { build } = await import('tsup');
      const { default: config, copyRuntimeFiles, entry } = await import('../../tsup.config.ts');
      const serverDir = join(root, 'packages/server');
      await build({
        ...(config as Options),
        config: false,
        silent: true,
        tsconfig: join(serverDir, 'tsconfig.json'),
        entry: Object.fromEntries(Object.entries(entry).map(([name, path]) => [name, join(serverDir, path)])),
        outDir,
        onSuccess: async () => copyRuntimeFiles(pathToFileURL(`${outDir}/`)),
      });
    },
  );
  return bundle;
}

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
  const main = join(await serverBundle(), 'main.js');
  const child = spawn(process.execPath, ['--enable-source-maps', main], {
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
