import { loadavg } from 'node:os';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { TestAuthServer } from '../../server/test/helpers/auth-server.ts';
import { createBenchDatabase } from './database.ts';
import { buildServer, type ServerRuntime, startServer } from './server.ts';

/**
 * `pnpm bench:memory`: resident memory of the server as it ships (the bundle, `node dist/main.js`) next to
 * the sources run through tsx, on the embedded database and on Postgres. For each: RSS after start-up and a
 * few idle seconds, then after N sequential `internal.credits.use` calls, and the high-water mark (VmHWM).
 * Prints a Markdown table for docs/benchmarks.md; writes nothing.
 */
const { values: args } = parseArgs({
  options: {
    calls: { type: 'string', default: '2000' },
    'idle-seconds': { type: 'string', default: '5' },
    rounds: { type: 'string', default: '1' },
    'no-postgres': { type: 'boolean', default: false },
    'database-url': {
      type: 'string',
      default: process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
    },
  },
});
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const calls = Number(args.calls);
const idleMs = Number(args['idle-seconds']) * 1000;
const SERVICE_KEY = 'bench-service-key-0123456789abcdefghijklmnop';
const load = () =>
  loadavg()
    .map((n) => n.toFixed(2))
    .join(' / ');
const log = (message: string) =>
  console.error(`[memory ${new Date().toISOString().slice(11, 19)}] ${message}`);

interface Row {
  runtime: ServerRuntime;
  database: 'embedded (memory://)' | 'Postgres';
  readyMs: number;
  idleMb: number;
  loadedMb: number;
  peakMb: number;
  callsPerSecond: number;
}

async function measure(
  runtime: ServerRuntime,
  databaseUrl: string | undefined,
  authUrl: string,
): Promise<Row> {
  const server = await startServer({
    root,
    databaseUrl,
    authUrl,
    serviceKey: SERVICE_KEY,
    poolSize: 10,
    runtime,
  });
  try {
    await new Promise((r) => setTimeout(r, idleMs));
    const idleMb = server.memory().rssMb;
    const headers = {
      'content-type': 'application/json',
      'x-service-key': SERVICE_KEY,
      'x-app-id': 'memory',
    };
    const call = async (path: string, input: unknown) => {
      const response = await fetch(`${server.url}/trpc/${path}`, {
        method: 'POST',
        headers,
        body: JSON.stringify({ json: input }),
      });
      if (!response.ok) throw new Error(`${path} answered ${response.status}: ${await response.text()}`);
      await response.arrayBuffer();
    };
    await call('internal.credits.grant', {
      userId: 'memory',
      amount: calls,
      reason: 'memory',
      idempotencyKey: 'g',
    });
    const started = performance.now();
    for (let i = 0; i < calls; i++) {
      await call('internal.credits.use', {
        userId: 'memory',
        amount: 1,
        appId: 'memory',
        description: 'memory',
        idempotencyKey: `use-${i}`,
      });
    }
    const seconds = (performance.now() - started) / 1000;
    const { rssMb: loadedMb, peakRssMb: peakMb } = server.memory();
    return {
      runtime,
      database: databaseUrl ? 'Postgres' : 'embedded (memory://)',
      readyMs: server.readyAfterMs,
      idleMb,
      loadedMb,
      peakMb,
      callsPerSecond: calls / seconds,
    };
  } finally {
    await server.stop();
  }
}

const loadBefore = load();
log(`load average before: ${loadBefore}; building the bundle`);
await buildServer(root);
const auth = await TestAuthServer.start();
const rows: Row[] = [];
try {
  for (let round = 0; round < Number(args.rounds); round++) {
    for (const postgres of args['no-postgres'] ? [false] : [false, true]) {
      for (const runtime of ['dist', 'tsx'] as const) {
        const database = postgres ? await createBenchDatabase(args['database-url']!) : undefined;
        try {
          log(`${runtime} on ${postgres ? 'Postgres' : 'PGlite'}`);
          rows.push(await measure(runtime, database?.url, auth.url));
        } finally {
          await database?.drop();
        }
      }
    }
  }
} finally {
  await auth.close();
}

const label = (runtime: ServerRuntime) =>
  runtime === 'dist' ? 'bundle: `node dist/main.js`' : 'sources: `node --import tsx src/main.ts`';
console.log(
  `Load average (1/5/15 min) before: ${loadBefore}, after: ${load()}; ${calls} sequential calls.\n`,
);
console.log(
  '| server | database | ready after | idle RSS | RSS after the calls | peak RSS (VmHWM) | calls/s |\n' +
    '| --- | --- | ---: | ---: | ---: | ---: | ---: |',
);
for (const row of rows) {
  console.log(
    `| ${label(row.runtime)} | ${row.database} | ${(row.readyMs / 1000).toFixed(1)} s | ${row.idleMb.toFixed(0)} MB | ` +
      `${row.loadedMb.toFixed(0)} MB | ${row.peakMb.toFixed(0)} MB | ${row.callsPerSecond.toFixed(0)} |`,
  );
}
