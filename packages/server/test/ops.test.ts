import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, posix, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { buildApp } from '../src/app.ts';
import { ConfigError, ENV_NAMES, loadConfig } from '../src/config.ts';
import { BoundedLabel, createMetrics, MAX_APP_LABELS } from '../src/metrics.ts';
import { failure } from './helpers/errors.ts';
import { expectLedgerConsistent } from './helpers/invariants.ts';
import { newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';

const METRICS_TOKEN = 'metrics-token-for-the-ops-tests-0123';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer({ METRICS_TOKEN });
});
afterAll(async () => {
  await expectLedgerConsistent(server.deps.db);
  await server.close();
});

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses Prometheus text exposition into samples. */
function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match) throw new Error(`unparseable metrics line: ${line}`);
    const labels: Record<string, string> = {};
    for (const pair of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1]!] = pair[2]!;
    }
    samples.push({ name: match[1]!, labels, value: Number(match[3]) });
  }
  return samples;
}

async function scrape() {
  const response = await fetch(`${server.url}/metrics`, {
    headers: { authorization: `Bearer ${METRICS_TOKEN}` },
  });
  expect(response.status).toBe(200);
  const text = await response.text();
  const samples = parseExposition(text);
  /** Sum of the samples of `name` whose labels include `labels`. */
  const value = (name: string, labels: Record<string, string> = {}) =>
    samples
      .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
      .reduce((sum, s) => sum + s.value, 0);
  return { text, samples, value };
}

async function grant(userId: string, amount: number, appId = 'ops-seed') {
  return server.internalClient({ appId }).internal.credits.grant.mutate({
    userId,
    amount,
    reason: 'seed',
    idempotencyKey: `seed-${userId}-${amount}`,
  });
}

describe('request ids', () => {
  it('a REST error body, a 404 and a /metrics refusal carry the request id, as the header does', async () => {
    const headers = { 'x-request-id': 'ops-trace-1', 'content-type': 'application/json' };
    const badJson = await fetch(`${server.url}/trpc/internal.credits.use`, {
      method: 'POST',
      headers: { ...headers, 'x-service-key': SERVICE_KEY },
      body: '{"json": {',
    });
    expect(badJson.status).toBe(400);
    const tooLarge = await fetch(`${server.url}/trpc/credits.use`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ json: { pad: 'x'.repeat(2 * 1024 * 1024) } }),
    });
    expect(tooLarge.status).toBe(413);
    expect(await tooLarge.json()).toEqual({
      error: {
        message: 'Request body is too large',
        reason: 'FST_ERR_CTP_BODY_TOO_LARGE',
        requestId: 'ops-trace-1',
      },
    });
    const notFound = await fetch(`${server.url}/no/such/route`, { headers });
    expect(notFound.status).toBe(404);
    expect(notFound.headers.get('x-request-id')).toBe('ops-trace-1');
    expect(await notFound.json()).toMatchObject({ error: { reason: 'NOT_FOUND', requestId: 'ops-trace-1' } });
    const metrics = await fetch(`${server.url}/metrics`, { headers });
    expect(metrics.status).toBe(401);
    expect(await metrics.json()).toMatchObject({
      error: { reason: 'UNAUTHORIZED', requestId: 'ops-trace-1' },
    });
  });

  it('tRPC errors raised before a context exists (a batch over the limit) carry it too', async () => {
    const paths = Array.from({ length: 101 }, () => 'credits.packages').join(',');
    const response = await fetch(`${server.url}/trpc/${paths}?batch=1`, {
      headers: { 'x-request-id': 'ops-trace-batch' },
    });
    expect(response.status).toBe(400);
    const body = (await response.json()) as { error: { json: { data: { requestId: string } } } };
    expect(body.error.json.data.requestId).toBe('ops-trace-batch');
  });

  it('an unusable x-request-id is replaced by a fresh UUID, the same in header and error data', async () => {
    for (const bad of ['has spaces', 'x'.repeat(129), 'semi;colon']) {
      const response = await fetch(`${server.url}/trpc/credits.balance`, {
        headers: { 'x-request-id': bad },
      });
      const id = response.headers.get('x-request-id');
      expect(id).toMatch(UUID);
      const body = (await response.json()) as { error: { json: { data: { requestId: string } } } };
      expect(body.error.json.data.requestId).toBe(id);
    }
    const error = await failure(
      server.rawClient({ 'x-request-id': 'ops-trace-client' }).credits.balance.query(),
    );
    expect(error.data?.requestId).toBe('ops-trace-client');
  });

  it('every log line of a request carries its request id (and no credential)', async () => {
    const lines: string[] = [];
    const deps = { ...server.deps, config: { ...server.deps.config, logLevel: 'info' as const } };
    const app = await buildApp(deps, { logStream: { write: (line) => lines.push(line) } });
    try {
      await app.inject({
        method: 'GET',
        url: '/trpc/credits.balance',
        headers: { 'x-request-id': 'ops-trace-log', authorization: 'Bearer not-a-token' },
      });
      await app.inject({ method: 'GET', url: '/health' });
    } finally {
      await app.close();
    }
    const entries = lines.map((line) => JSON.parse(line) as Record<string, unknown>);
    const ofRequest = entries.filter((entry) => entry.req !== undefined || entry.res !== undefined);
    expect(ofRequest.length).toBeGreaterThanOrEqual(4);
    for (const entry of ofRequest) {
      expect(entry.requestId).toEqual(expect.any(String));
      expect(entry).not.toHaveProperty('reqId');
    }
    expect(ofRequest.filter((entry) => entry.requestId === 'ops-trace-log')).toHaveLength(2);
    expect(lines.join('\n')).not.toContain('not-a-token');
  });
});

describe('metrics', () => {
  it('/metrics wants the bearer token when METRICS_TOKEN is set', async () => {
    expect((await fetch(`${server.url}/metrics`)).status).toBe(401);
    const wrong = await fetch(`${server.url}/metrics`, { headers: { authorization: 'Bearer wrong-token' } });
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get('www-authenticate')).toMatch(/^Bearer/);
    const prefixOnly = await fetch(`${server.url}/metrics`, {
      headers: { authorization: `Bearer ${METRICS_TOKEN.slice(0, -1)}` },
    });
    expect(prefixOnly.status).toBe(401);
    const ok = await fetch(`${server.url}/metrics`, {
      headers: { authorization: `Bearer ${METRICS_TOKEN}` },
    });
    expect(ok.status).toBe(200);
    expect(ok.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  });

  it('serves process metrics and database pool gauges', async () => {
    const { samples, value } = await scrape();
    const names = new Set(samples.map((s) => s.name));
    for (const name of [
      'mana_credits_process_cpu_user_seconds_total',
      'mana_credits_process_resident_memory_bytes',
      'mana_credits_nodejs_eventloop_lag_seconds',
      'mana_credits_nodejs_heap_size_used_bytes',
      'mana_credits_db_pool_connections_in_use',
      'mana_credits_db_pool_connections_idle',
      'mana_credits_db_pool_waiting_requests',
    ]) {
      expect(names, name).toContain(name);
    }
    const open =
      value('mana_credits_db_pool_connections_in_use') + value('mana_credits_db_pool_connections_idle');
    expect(open).toBeGreaterThanOrEqual(1);
    expect(open).toBeLessThanOrEqual(server.deps.config.dbPoolSize);
    expect(value('mana_credits_db_pool_waiting_requests')).toBe(0);
  });

  it('counts credits debited, credited and refunded by app, each movement once', async () => {
    const before = await scrape();
    const user = newUser();
    await grant(user.id, 1000, 'ops-shop');
    const internal = server.internalClient({ appId: 'ops-backend' });
    const spent = await internal.internal.credits.use.mutate({
      userId: user.id,
      amount: 30,
      appId: 'ops-game',
      description: 'a level',
    });
    await (await server.userClient(user)).credits.use.mutate({
      amount: 5,
      appId: 'ops-web',
      description: 'x',
    });
    await internal.internal.credits.refund.mutate({
      userId: user.id,
      transactionId: spent.transactionId,
      amount: 10,
      description: 'partly',
      idempotencyKey: 'ops-refund-1',
    });
    // A full refund names no amount: the metric reads it from the posted ledger row.
    await internal.internal.credits.refund.mutate({
      userId: user.id,
      transactionId: spent.transactionId,
      description: 'the rest',
      idempotencyKey: 'ops-refund-2',
    });
    const after = await scrape();
    const delta = (name: string, labels: Record<string, string>) =>
      after.value(name, labels) - before.value(name, labels);
    expect(delta('mana_credits_credits_credited_total', { app: 'ops-shop' })).toBe(1000);
    expect(delta('mana_credits_credits_debited_total', { app: 'ops-game' })).toBe(30);
    expect(delta('mana_credits_credits_debited_total', { app: 'ops-web' })).toBe(5);
    expect(delta('mana_credits_credits_refunded_total', { app: 'ops-game' })).toBe(30);
    expect(delta('mana_credits_credits_debited_total', {})).toBe(35);
    expect(delta('mana_credits_credits_refunded_total', {})).toBe(30);
    expect(after.text).not.toContain(user.id);
  });

  it('a replay is counted as a replay, never as money moved again, even when 50 race on one key', async () => {
    const user = newUser();
    await grant(user.id, 100);
    const before = await scrape();
    const internal = server.internalClient();
    const input = {
      userId: user.id,
      amount: 7,
      appId: 'ops-replay',
      description: 'once',
      idempotencyKey: 'k',
    };
    const results = await Promise.all(
      Array.from({ length: 50 }, () => internal.internal.credits.use.mutate(input)),
    );
    expect(new Set(results.map((r) => r.transactionId)).size).toBe(1);
    const after = await scrape();
    const delta = (name: string, labels: Record<string, string>) =>
      after.value(name, labels) - before.value(name, labels);
    expect(delta('mana_credits_credits_debited_total', { app: 'ops-replay', outcome: 'ok' })).toBe(7);
    expect(delta('mana_credits_credits_debited_total', { app: 'ops-replay', outcome: 'replay' })).toBe(
      49 * 7,
    );
    expect(delta('mana_credits_idempotent_replays_total', { procedure: 'internal.credits.use' })).toBe(49);
  });

  it('counts insufficient-credit refusals by procedure and app, and procedure outcomes', async () => {
    const user = newUser();
    await grant(user.id, 3);
    const before = await scrape();
    const internal = server.internalClient();
    const refusal = await failure(
      internal.internal.credits.use.mutate({
        userId: user.id,
        amount: 4,
        appId: 'ops-poor',
        description: 'x',
      }),
    );
    expect(refusal.data?.reason).toBe('INSUFFICIENT_CREDITS');
    await internal.internal.credits.use.mutate({
      userId: user.id,
      amount: 3,
      appId: 'ops-poor',
      description: 'y',
    });
    const after = await scrape();
    const delta = (name: string, labels: Record<string, string>) =>
      after.value(name, labels) - before.value(name, labels);
    expect(
      delta('mana_credits_insufficient_credits_total', {
        procedure: 'internal.credits.use',
        app: 'ops-poor',
      }),
    ).toBe(1);
    const calls = 'mana_credits_procedure_duration_seconds_count';
    expect(delta(calls, { procedure: 'internal.credits.use', outcome: 'PAYMENT_REQUIRED' })).toBe(1);
    expect(delta(calls, { procedure: 'internal.credits.use', outcome: 'ok' })).toBe(1);
    expect(delta('mana_credits_credits_debited_total', { app: 'ops-poor' })).toBe(3);
  });

  it('times HTTP requests by route pattern and status class, never by raw URL', async () => {
    const before = await scrape();
    await fetch(`${server.url}/trpc/credits.packages`);
    await fetch(`${server.url}/trpc/credits.packages,credits.packages?batch=1`);
    await fetch(`${server.url}/trpc/no.such.procedure-${newUser().id}`);
    await fetch(`${server.url}/random/${newUser().id}`);
    await fetch(`${server.url}/trpc/credits.balance`);
    const after = await scrape();
    const count = 'mana_credits_http_request_duration_seconds_count';
    const delta = (labels: Record<string, string>) =>
      after.value(count, labels) - before.value(count, labels);
    expect(delta({ route: '/trpc/credits.packages', status_class: '2xx', method: 'GET' })).toBe(1);
    expect(delta({ route: '/trpc/(batch)', status_class: '2xx' })).toBe(1);
    expect(delta({ route: '/trpc/(unknown)', status_class: '4xx' })).toBe(1);
    expect(delta({ route: '(unmatched)', status_class: '4xx' })).toBe(1);
    expect(delta({ route: '/trpc/credits.balance', status_class: '4xx' })).toBe(1);
    const routes = new Set(after.samples.filter((s) => s.name === count).map((s) => s.labels.route));
    for (const route of routes) expect(route).not.toMatch(/user-|no\.such/);
  });

  it('app ids are bounded: past the cap new ones count as "other", and no credit goes uncounted', async () => {
    const user = newUser();
    await grant(user.id, 500);
    const internal = server.internalClient({ batch: true });
    const spendFromGame = () =>
      internal.internal.credits.use.mutate({
        userId: user.id,
        amount: 2,
        appId: 'ops-game',
        description: 'x',
      });
    await spendFromGame();
    const before = await scrape();
    const calls = 150;
    await Promise.all(
      Array.from({ length: calls }, (_, i) =>
        internal.internal.credits.use.mutate({
          userId: user.id,
          amount: 1,
          appId: `ops-many-${i}`,
          description: 'x',
        }),
      ),
    );
    await spendFromGame();
    const after = await scrape();
    const debited = after.samples.filter((s) => s.name === 'mana_credits_credits_debited_total');
    const apps = new Set(debited.map((s) => s.labels.app));
    expect(apps.has('other')).toBe(true);
    const everyAppLabel = new Set(after.samples.map((s) => s.labels.app).filter(Boolean));
    expect(everyAppLabel.size).toBeLessThanOrEqual(MAX_APP_LABELS + 2); // + 'other' and 'unknown'
    // An app seen before the cap keeps its own label afterwards.
    expect(
      after.value('mana_credits_credits_debited_total', { app: 'ops-game' }) -
        before.value('mana_credits_credits_debited_total', { app: 'ops-game' }),
    ).toBe(2);
    expect(
      after.value('mana_credits_credits_debited_total') - before.value('mana_credits_credits_debited_total'),
    ).toBe(calls + 2);
  });

  it('a bounded label keeps its first values, maps the rest (and absurdly long ones) to "other"', () => {
    const label = new BoundedLabel(2);
    expect([label.of('a'), label.of('b'), label.of('c'), label.of('a'), label.of(undefined)]).toEqual([
      'a',
      'b',
      'other',
      'a',
      'unknown',
    ]);
    expect(new BoundedLabel(5).of('y'.repeat(101))).toBe('other');
  });

  it('every app has its own registry: two in one process do not share counts', async () => {
    const pool = { poolStats: () => ({ total: 3, idle: 1, waiting: 0 }) };
    const first = createMetrics(pool);
    const second = createMetrics(pool);
    first.creditsDebited.inc({ app: 'a' }, 5);
    const firstText = (await first.render()).body;
    const secondText = (await second.render()).body;
    expect(
      parseExposition(firstText).find((s) => s.name === 'mana_credits_credits_debited_total')?.value,
    ).toBe(5);
    expect(secondText).not.toMatch(/^mana_credits_credits_debited_total\{/m);
    expect(
      parseExposition(secondText).find((s) => s.name === 'mana_credits_db_pool_connections_in_use')?.value,
    ).toBe(2);
  });
});

describe('readiness', () => {
  it('while migrations run: /health 200, /ready 503 "migrating", the API refuses with MIGRATING', async () => {
    server.app.readiness.migrating = true;
    try {
      expect((await fetch(`${server.url}/health`)).status).toBe(200);
      const ready = await fetch(`${server.url}/ready`);
      expect(ready.status).toBe(503);
      expect(await ready.json()).toEqual({ status: 'migrating' });
      // tRPC callers get tRPC's error envelope, which the client parses (single calls and batches alike).
      const api = await fetch(`${server.url}/trpc/credits.packages`, {
        headers: { 'x-request-id': 'ops-mig' },
      });
      expect(api.status).toBe(503);
      expect(api.headers.get('retry-after')).toBe('5');
      expect(await api.json()).toMatchObject({
        error: { json: { data: { code: 'SERVICE_UNAVAILABLE', reason: 'MIGRATING', requestId: 'ops-mig' } } },
      });
      for (const client of [server.internalClient(), server.internalClient({ batch: true })]) {
        const refused = await failure(client.credits.packages.query());
        expect(refused.data).toMatchObject({
          code: 'SERVICE_UNAVAILABLE',
          httpStatus: 503,
          reason: 'MIGRATING',
        });
      }
      // REST callers get the REST envelope.
      const rest = await fetch(`${server.url}/api/v1/credits/packages`, {
        headers: { 'x-request-id': 'ops-rest' },
      });
      expect(rest.status).toBe(503);
      expect(await rest.json()).toEqual({
        error: {
          message: 'The service is starting (migrations)',
          reason: 'MIGRATING',
          requestId: 'ops-rest',
        },
      });
    } finally {
      server.app.readiness.migrating = false;
    }
    expect((await fetch(`${server.url}/ready`)).status).toBe(200);
  });

  it('while shutting down: /ready 503, requests still served, every response asks to close the connection', async () => {
    server.app.readiness.accepting = false;
    try {
      const ready = await server.app.inject({ method: 'GET', url: '/ready' });
      expect(ready.statusCode).toBe(503);
      expect(ready.json()).toEqual({ status: 'shutting-down' });
      const api = await server.app.inject({ method: 'GET', url: '/trpc/credits.packages' });
      expect(api.statusCode).toBe(200);
      expect(api.headers.connection).toBe('close');
    } finally {
      server.app.readiness.accepting = true;
    }
    const after = await server.app.inject({ method: 'GET', url: '/ready' });
    expect(after.statusCode).toBe(200);
    expect(after.headers.connection).not.toBe('close');
  });

  it('the drain must be shorter than the shutdown timeout', () => {
    expect(() => loadConfig({ SHUTDOWN_DRAIN_MS: '10000', SHUTDOWN_TIMEOUT_MS: '5000' })).toThrow(
      ConfigError,
    );
    expect(() => loadConfig({ SHUTDOWN_DRAIN_MS: '10000', SHUTDOWN_TIMEOUT_MS: '5000' })).toThrow(
      /SHUTDOWN_DRAIN_MS/,
    );
    expect(loadConfig({ SHUTDOWN_DRAIN_MS: '2000', SHUTDOWN_TIMEOUT_MS: '5000' }).shutdownDrainMs).toBe(2000);
  });
});

// ---------------------------------------------------------------------------------------------------------
// The container recipe. There is no Docker engine here, so these check that what the Dockerfile and the
// compose file name (paths, scripts, packages, variables, probe URLs) exists and fits together.

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const read = (path: string) => readFileSync(join(root, path), 'utf8');
const readJson = (path: string) => JSON.parse(read(path)) as Record<string, Record<string, string> | string>;

interface Instruction {
  keyword: string;
  args: string;
  stage: number;
}

function parseDockerfile(text: string): Instruction[] {
  const instructions: Instruction[] = [];
  let stage = -1;
  const logical = text
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line && !line.startsWith('#'));
  for (const line of logical) {
    const [, keyword = '', args = ''] = /^(\S+)\s*(.*)$/.exec(line) ?? [];
    if (keyword.toUpperCase() === 'FROM') stage++;
    instructions.push({ keyword: keyword.toUpperCase(), args, stage });
  }
  return instructions;
}

/** .dockerignore patterns as regular expressions over repository paths (a match excludes the path and below). */
function dockerIgnored(patterns: string[], path: string): boolean {
  return patterns.some((pattern) => {
    const source = pattern
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*\*\//g, '«GS»')
      .replace(/\*\*/g, '«G»')
      .replace(/\*/g, '[^/]*')
      .replace(/«GS»/g, '(?:.*/)?')
      .replace(/«G»/g, '.*');
    return new RegExp(`^${source}(?:/.*)?$`).test(path);
  });
}

/** Compose-style ${VAR:-default} / ${VAR:?message} / ${VAR}, with `given` standing in for the operator's env. */
function interpolate(value: string, given: Record<string, string>): string {
  return value.replace(
    /\$\{([A-Z0-9_]+)(?::([-?])([^}]*))?\}/g,
    (_, name: string, kind?: string, rest?: string) => {
      if (given[name] !== undefined) return given[name]!;
      if (kind === '-') return rest ?? '';
      if (kind === '?') throw new Error(`${name} is required: ${rest}`);
      return '';
    },
  );
}

const scriptTarget = (script: string) => /^tsx (\S+\.ts)$/.exec(script)?.[1];

describe('container image and compose file', () => {
  const dockerfile = parseDockerfile(read('Dockerfile'));
  const ignore = read('.dockerignore')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line && !line.startsWith('#'));
  const finalStage = Math.max(...dockerfile.map((i) => i.stage));
  const rootScripts = readJson('package.json').scripts as Record<string, string>;
  const serverPackage = readJson('packages/server/package.json');
  const compose = parseYaml(read('docker-compose.yml')) as {
    services: Record<
      string,
      {
        build?: string;
        command?: string[];
        depends_on?: Record<string, { condition: string }>;
        environment?: Record<string, string>;
        healthcheck?: { test: string[] };
        ports?: string[];
        stop_grace_period?: string;
      }
    >;
  };

  /** Where the image runs its commands: the last WORKDIR of the final stage. */
  const workdir =
    dockerfile.filter((i) => i.stage === finalStage && i.keyword === 'WORKDIR').at(-1)?.args ?? '/';
  /** A path inside the image (relative to its workdir) as a repository path; the image's /app is the repo. */
  const repoPathOf = (imagePath: string) => posix.relative('/app', posix.resolve(workdir, imagePath));

  it('is multi-stage and runs as a non-root user', () => {
    expect(finalStage).toBeGreaterThanOrEqual(1);
    const user = dockerfile.filter((i) => i.stage === finalStage && i.keyword === 'USER').at(-1)?.args;
    expect(user).toBeDefined();
    expect(['root', '0']).not.toContain(user);
  });

  it('copies only files that exist and that .dockerignore lets through', () => {
    const copies = dockerfile.filter((i) => i.keyword === 'COPY' && !i.args.includes('--from'));
    expect(copies.length).toBeGreaterThan(0);
    for (const copy of copies) {
      const parts = copy.args.split(/\s+/).filter((part) => !part.startsWith('--'));
      for (const source of parts.slice(0, -1)) {
        expect(existsSync(join(root, source)), `${source} exists`).toBe(true);
        expect(dockerIgnored(ignore, source), `${source} is not ignored`).toBe(false);
      }
    }
    // …and keeps what the image must not carry out of the context.
    for (const path of [
      'node_modules',
      'packages/server/node_modules',
      '.git',
      'packages/server/test/ops.test.ts',
      '.data',
    ]) {
      expect(dockerIgnored(ignore, path), path).toBe(true);
    }
  });

  /** The stage an instruction belongs to, by its `FROM … AS <name>`. */
  const stageName = (stage: number) =>
    /\bAS\s+(\S+)\s*$/i.exec(
      dockerfile.find((i) => i.stage === stage && i.keyword === 'FROM')?.args ?? '',
    )?.[1];
  const finalCopiesFrom = (name: string | undefined) =>
    dockerfile
      .filter((i) => i.stage === finalStage && i.keyword === 'COPY' && i.args.includes(`--from=${name}`))
      .map((i) => i.args.split(/\s+/).filter((part) => !part.startsWith('--')));

  it('runs only production dependencies of the server, which declare every npm package the shipped code imports', () => {
    const prod = dockerfile.find(
      (i) => i.keyword === 'RUN' && /pnpm install/.test(i.args) && /--prod\b/.test(i.args),
    );
    expect(prod?.args).toMatch(/--frozen-lockfile/);
    expect(prod?.args).toMatch(new RegExp(`--filter ${serverPackage.name}(\\s|$)`));
    // The runtime stage takes its node_modules from that install, and installs nothing itself.
    const copied = finalCopiesFrom(stageName(prod!.stage)).map((parts) => parts[0]);
    expect(copied).toEqual(
      expect.arrayContaining(['/app/node_modules', '/app/packages/server/node_modules']),
    );
    expect(dockerfile.some((i) => i.stage === finalStage && /pnpm|npm install/.test(i.args))).toBe(false);

    // What the bundle imports at run time (sources of the server and of the workspace packages it bundles).
    const dependencies = serverPackage.dependencies as Record<string, string>;
    expect(dependencies.tsx, 'tsx is a dev dependency: production runs compiled JavaScript').toBeUndefined();
    const sourceFiles = (dir: string): string[] =>
      readdirSync(join(root, dir), { withFileTypes: true }).flatMap((entry) =>
        entry.isDirectory()
          ? sourceFiles(`${dir}/${entry.name}`)
          : entry.name.endsWith('.ts')
            ? [`${dir}/${entry.name}`]
            : [],
      );
    const imported = new Set<string>();
    for (const file of [...sourceFiles('packages/server/src'), ...sourceFiles('packages/db/src')]) {
      // Static imports and exports, and dynamic import('…') (PGlite is loaded only when embedded).
      for (const match of read(file).matchAll(
        /^(?:import|export)\s+(?!type\s)[^;]*?\sfrom\s+'([^'.][^']*)'|\bimport\('([^'.][^']*)'\)/gm,
      )) {
        const specifier = (match[1] ?? match[2])!;
        if (specifier.startsWith('node:')) continue;
        imported.add(
          specifier
            .split('/')
            .slice(0, specifier.startsWith('@') ? 2 : 1)
            .join('/'),
        );
      }
    }
    expect([...imported]).toEqual(expect.arrayContaining(['pg', '@electric-sql/pglite', 'fastify']));
    const buildCopies = dockerfile
      .filter((i) => i.keyword === 'COPY' && !i.args.includes('--from'))
      .map((i) => i.args);
    for (const name of imported) {
      if (name.startsWith('@mana-credits/')) {
        // Bundled in: its manifest and sources reach the build stage.
        const dir = name.split('/')[1]!;
        expect(readJson(`packages/${dir}/package.json`).name).toBe(name);
        expect(buildCopies.some((args) => args.startsWith(`packages/${dir}/package.json `))).toBe(true);
        expect(buildCopies.some((args) => args.startsWith(`packages/${dir}/src `))).toBe(true);
      } else {
        expect(dependencies[name], `${name} is imported by the server or the db sources`).toBeDefined();
      }
    }
  });

  it('starts the bundle `pnpm start` runs, and the migrate service the bundle of `pnpm db:migrate`', async () => {
    const { entry } = (await import('../tsup.config.ts')) as { entry: Record<string, string> };
    /** A bundle's path inside the image → the source file it was built from (repository path). */
    const sourceOf = (imagePath: string) => {
      const name = /^packages\/server\/dist\/([\w-]+)\.js$/.exec(repoPathOf(imagePath))?.[1];
      return name && entry[name] ? posix.join('packages/server', entry[name]) : undefined;
    };
    const cmd = JSON.parse(
      dockerfile.filter((i) => i.stage === finalStage && i.keyword === 'CMD').at(-1)?.args ?? '[]',
    ) as string[];
    expect(cmd).toEqual(['node', '--enable-source-maps', '--max-old-space-size=1024', 'dist/main.js']);
    const script = cmd.at(-1)!;
    expect(sourceOf(script)).toBe('packages/server/src/main.ts');
    expect(existsSync(join(root, sourceOf(script)!))).toBe(true);
    // `pnpm start` builds the same bundle and runs it the same way (same node flags); `pnpm dev` runs its source.
    expect(rootScripts.start).toMatch(/--filter @mana-credits\/server bundle && /);
    expect(rootScripts.start).toContain([...cmd.slice(0, -1), repoPathOf(script)].join(' '));
    expect(rootScripts.dev).toBe(`tsx watch ${sourceOf(script)}`);
    // The image builds with `pnpm build` (type check, then bundle) and copies that dist where CMD runs it.
    const build = dockerfile.find((i) => i.keyword === 'RUN' && /^pnpm build$/.test(i.args));
    expect(build).toBeDefined();
    expect(rootScripts.build).toBe('pnpm --filter @mana-credits/server build');
    expect((serverPackage.scripts as Record<string, string>).build).toMatch(
      /^tsc -p tsconfig\.build\.json && tsup\b/,
    );
    const dist = finalCopiesFrom(stageName(build!.stage)).find(
      (parts) => parts[0] === '/app/packages/server/dist',
    );
    expect(dist && posix.resolve('/app', dist[1]!)).toBe(posix.resolve(workdir, 'dist'));

    const migrate = compose.services.migrate?.command ?? [];
    expect(migrate).toEqual(['node', '--enable-source-maps', 'dist/migrate.js']);
    expect(sourceOf(migrate[2]!)).toBe(posix.normalize(`packages/server/${entry.migrate}`));
    expect(posix.normalize(sourceOf(migrate[2]!)!)).toBe(scriptTarget(rootScripts['db:migrate']!));
  });

  it('sets only variables the server reads, and the README documents every one of them', () => {
    const names = new Set(ENV_NAMES);
    const dockerEnv = dockerfile
      .filter((i) => i.keyword === 'ENV')
      .flatMap((i) => [...i.args.matchAll(/([A-Z_][A-Z0-9_]*)=/g)].map((m) => m[1]!));
    expect(dockerEnv.length).toBeGreaterThan(0);
    for (const name of dockerEnv) expect(names, name).toContain(name);
    for (const service of ['server', 'migrate']) {
      for (const name of Object.keys(compose.services[service]?.environment ?? {})) {
        expect(names, `${service}: ${name}`).toContain(name);
      }
    }
    const readme = read('README.md');
    for (const name of ENV_NAMES) expect(readme, name).toContain(`\`${name}\``);
  });

  it('compose: the server env with its defaults is a valid production config, wired to the postgres service', () => {
    const { postgres, migrate, server: service } = compose.services;
    expect(service?.build).toBe('.');
    expect(migrate?.build).toBe('.');
    expect(existsSync(join(root, 'Dockerfile'))).toBe(true);
    const env = Object.fromEntries(
      Object.entries(service?.environment ?? {}).map(([name, value]) => [
        name,
        interpolate(String(value), { MANA_CORE_SERVICE_KEY: 'k'.repeat(40) }),
      ]),
    );
    const config = loadConfig(env);
    expect(config.nodeEnv).toBe('production');
    expect(config.migrateOnStart).toBe(false);
    const databaseUrl = new URL(config.databaseUrl ?? '');
    expect(Object.keys(compose.services)).toContain(databaseUrl.hostname);
    expect(databaseUrl.pathname).toBe(`/${postgres?.environment?.POSTGRES_DB}`);
    expect(interpolate(migrate?.environment?.DATABASE_URL ?? '', {})).toBe(config.databaseUrl);
    expect(service?.ports?.some((port) => port.endsWith(`:${config.port}`))).toBe(true);
    // Docker waits longer than the server's own shutdown bound before it kills.
    const grace = Number(/^(\d+)s$/.exec(service?.stop_grace_period ?? '')?.[1]) * 1000;
    expect(grace).toBeGreaterThan(config.shutdownTimeoutMs);
    // Ordering: postgres healthy, migrations done, then the server.
    expect(service?.depends_on).toEqual({
      postgres: { condition: 'service_healthy' },
      migrate: { condition: 'service_completed_successfully' },
    });
    expect(migrate?.depends_on).toEqual({ postgres: { condition: 'service_healthy' } });
    expect(postgres?.healthcheck?.test.join(' ')).toMatch(/pg_isready/);
  });

  it('the health checks of the image and of compose ask URLs the server answers 200 when ready', async () => {
    const probes = [
      dockerfile.find((i) => i.keyword === 'HEALTHCHECK')?.args ?? '',
      (compose.services.server?.healthcheck?.test ?? []).join(' '),
    ];
    for (const probe of probes) {
      const path = /127\.0\.0\.1:[^/]*(\/[a-z]+)/.exec(probe)?.[1];
      expect(path, probe).toBeDefined();
      expect((await server.app.inject({ method: 'GET', url: path! })).statusCode).toBe(200);
    }
  });
});
