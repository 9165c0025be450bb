import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TestAuthServer } from './helpers/auth-server.ts';
import { createTestDataDir } from './helpers/database.ts';
import { clientFor, SERVICE_KEY } from './helpers/server.ts';

/**
 * The production build (`pnpm build` / `pnpm start` / the image): the tsup bundle in packages/server/dist,
 * run with plain `node` from the server package as the image does, with production settings: `pnpm bundle`
 * itself, then migrate, serve and reconcile. The other process tests (shutdown, events-crash) run a bundle
 * helpers/server-process.ts builds elsewhere with the same config; chaos runs the sources through tsx.
 */
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const serverDir = join(root, 'packages/server');
const distDir = join(serverDir, 'dist');
const onPostgres = Boolean(process.env.DATABASE_URL);

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  output: string;
}

const running = new Set<ChildProcess>();
afterEach(() => {
  for (const child of running) if (child.exitCode === null) child.kill('SIGKILL');
  running.clear();
});

function start(command: string, args: readonly string[], env: Record<string, string>, cwd = serverDir) {
  const child = spawn(command, args, {
    cwd,
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    output += chunk.toString('utf8');
  });
  child.stderr?.on('data', (chunk: Buffer) => {
    output += chunk.toString('utf8');
  });
  const exited = new Promise<Run>((done) =>
    child.once('exit', (code, signal) => done({ code, signal, output })),
  );
  return { child, exited, output: () => output };
}

const run = (command: string, args: readonly string[], env: Record<string, string> = {}) =>
  start(command, args, env).exited;

let auth: TestAuthServer;
beforeAll(async () => {
  // The same bundle step `pnpm start` runs (type checking is `pnpm typecheck`'s job, not this test's).
  const built = await run(join(serverDir, 'node_modules/.bin/tsup'), [], { NODE_ENV: 'production' });
  expect(built.code, built.output).toBe(0);
  auth = await TestAuthServer.start();
}, 180_000);
afterAll(async () => {
  await auth?.close();
});

/** The npm packages a bundle imports (bare specifiers, reduced to the package name). */
function bundleImports(file: string): string[] {
  const code = readFileSync(join(distDir, file), 'utf8');
  const specifiers = [
    ...code.matchAll(/^\s*(?:import|export)\s(?:[^'"]*?\sfrom\s)?["']([^"'./][^"']*)["']/gm),
    ...code.matchAll(/\bimport\(\s*["']([^"'./][^"']*)["']\s*\)/g),
  ].map((match) => match[1]!);
  return specifiers.map((specifier) =>
    specifier
      .split('/')
      .slice(0, specifier.startsWith('@') ? 2 : 1)
      .join('/'),
  );
}

describe('the production bundle', () => {
  it('has one file per entry point, imports only declared dependencies, and maps back to the sources', () => {
    const files = readdirSync(distDir);
    for (const name of ['main', 'migrate', 'reconcile', 'seed']) {
      expect(files).toContain(`${name}.js`);
      expect(files).toContain(`${name}.js.map`);
    }
    const manifest = JSON.parse(readFileSync(join(serverDir, 'package.json'), 'utf8')) as {
      dependencies: Record<string, string>;
    };
    const builtins = new Set(builtinModules);
    for (const file of files.filter((f) => f.endsWith('.js'))) {
      for (const name of bundleImports(file)) {
        if (name.startsWith('node:') || builtins.has(name)) continue;
        // Workspace packages are compiled in; everything else is installed by `pnpm install --prod`.
        expect(name, `${file} imports ${name}`).not.toMatch(/^@mana-credits\//);
        expect(manifest.dependencies, `${file} imports ${name}`).toHaveProperty([name]);
      }
    }
    expect(bundleImports('main.js')).toEqual(
      expect.arrayContaining(['fastify', 'pg', '@electric-sql/pglite']),
    );
    // Stack traces under `node --enable-source-maps` point at the TypeScript sources.
    const map = JSON.parse(readFileSync(join(distDir, 'main.js.map'), 'utf8')) as { sources: string[] };
    expect(map.sources).toContain('../src/main.ts');
    expect(map.sources).toContain('../../db/src/connect.ts');
  });

  it(`migrate, serve, reconcile, stop: dist/*.js on a fresh ${onPostgres ? 'Postgres' : 'embedded'} database`, async () => {
    // Postgres: a database of its own. PGlite: a directory (as initdb left it; embedded.test.ts runs initdb
    // in an empty directory on CI), so migrate, server and reconcile share it.
    const database = await createTestDataDir({ empty: true });
    try {
      const env = {
        NODE_ENV: 'production',
        LOG_LEVEL: 'info',
        HOST: '127.0.0.1',
        PORT: '0',
        MANA_CORE_AUTH_URL: auth.url,
        MANA_CORE_SERVICE_KEY: SERVICE_KEY,
        BASE_URL: 'http://127.0.0.1',
        METRICS_TOKEN: 'metrics-token-for-the-build-test-0123',
        MIGRATE_ON_START: 'false',
        ...database.env,
      };
      const node = (script: string) => [process.execPath, ['--enable-source-maps', script]] as const;

      // The compose file's migrate service.
      const migrated = await run(...node('dist/migrate.js'), env);
      expect(migrated.code, migrated.output).toBe(0);
      expect(migrated.output).toMatch(/Success: 2026_11_25_0001_initial/);

      // The image's CMD.
      const server = start(...node('dist/main.js'), env);
      const url = await new Promise<string>((found, failed) => {
        const timer = setInterval(() => {
          const match = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(server.output());
          if (match) {
            clearInterval(timer);
            found(match[1]!);
          } else if (server.child.exitCode !== null) {
            clearInterval(timer);
            failed(new Error(`server exited early:\n${server.output()}`));
          }
        }, 25);
      });
      expect((await fetch(`${url}/health`)).status).toBe(200);
      const ready = await fetch(`${url}/ready`);
      expect(ready.status).toBe(200);
      expect(await ready.json()).toEqual({ status: 'ready' });
      const client = clientFor(url, () => ({ 'x-service-key': SERVICE_KEY, 'x-app-id': 'build-test' }));
      await client.internal.credits.grant.mutate({
        userId: 'bundle-user',
        amount: 10,
        reason: 'bundle',
        idempotencyKey: 'g',
      });
      await client.internal.credits.use.mutate({
        userId: 'bundle-user',
        amount: 3,
        appId: 'build-test',
        description: 'bundle',
      });
      expect(await client.internal.credits.balance.query({ userId: 'bundle-user' })).toMatchObject({
        balance: 7,
      });

      server.child.kill('SIGTERM');
      const stopped = await server.exited;
      expect({ code: stopped.code, signal: stopped.signal }, stopped.output).toEqual({
        code: 0,
        signal: null,
      });
      expect(stopped.output).toContain('shut down cleanly');

      // `pnpm reconcile` as shipped: no drift after the calls above.
      const reconciled = await run(...node('dist/reconcile.js'), env);
      expect(reconciled.code, reconciled.output).toBe(0);
      expect(reconciled.output).toMatch(/no drift/);
    } finally {
      await database.drop();
    }
  }, 240_000);
});
