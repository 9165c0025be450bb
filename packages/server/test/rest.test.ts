import { randomUUID } from 'node:crypto';
import { validate } from '@readme/openapi-parser';
import Fastify from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { OpenApiDocument } from '../src/http/rest/openapi.ts';
import { restApi } from '../src/http/rest/plugin.ts';
import { restRoutes } from '../src/http/rest/routes.ts';
import { appRouter } from '../src/trpc/routers/_app.ts';
import { expectLedgerConsistent, ledgerSum } from './helpers/invariants.ts';
import { type Answer, type CallOptions, restCaller } from './helpers/rest.ts';
import { newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';

let server: TestServer;
let document: OpenApiDocument;
let call: (route: string, options?: CallOptions) => Promise<Answer>;

beforeAll(async () => {
  server = await startTestServer();
  ({ document, call } = await restCaller(server));
});
afterAll(async () => {
  await expectLedgerConsistent(server.deps.db);
  await server.close();
});

async function tokenFor(user = newUser()) {
  return { user, token: await server.auth.sign(user) };
}

async function fund(userId: string, amount: number) {
  const answer = await call('POST /api/v1/internal/credits/grant', {
    serviceKey: SERVICE_KEY,
    body: { userId, amount, reason: 'test funds', idempotencyKey: `fund-${randomUUID()}` },
  });
  expect(answer.status).toBe(200);
  return answer.body;
}

describe('OpenAPI document and docs page', () => {
  it('is a valid OpenAPI 3.1 document listing every route', async () => {
    const result = await validate(structuredClone(document) as never);
    expect(result.valid ? [] : result.errors).toEqual([]);
    expect(document.openapi).toBe('3.1.0');
    for (const route of restRoutes) {
      const template = route.path.replace(/:(\w+)/g, '{$1}');
      expect(
        document.paths[template]?.[route.method.toLowerCase()],
        `${route.method} ${route.path}`,
      ).toMatchObject({
        operationId: route.procedure,
      });
    }
  });

  it('every procedure has a REST route (the bench-only no-op aside)', () => {
    const procedures = Object.keys(appRouter._def.procedures);
    const routed = new Set(restRoutes.map((route) => route.procedure));
    expect(procedures.filter((procedure) => !routed.has(procedure as never))).toEqual([]);
  });

  it('documents inputs from the procedures’ own schemas', () => {
    const use = document.components.schemas.CreditsUseInput;
    expect(use?.required).toEqual(['amount', 'appId', 'description']);
    expect(use?.properties?.amount).toMatchObject({ type: 'integer', exclusiveMinimum: 0 });
    expect(use?.properties?.metadata).toMatchObject({ type: 'object' });
    const transactions = document.paths['/api/v1/credits/transactions']?.get as { parameters: unknown[] };
    expect(transactions.parameters).toEqual([
      {
        name: 'limit',
        in: 'query',
        required: false,
        schema: expect.objectContaining({ type: 'integer', maximum: 100 }),
      },
      { name: 'cursor', in: 'query', required: false, schema: expect.objectContaining({ format: 'uuid' }) },
    ]);
    expect(document.components.schemas.Balance?.properties?.updatedAt).toEqual({
      anyOf: [{ type: 'string', format: 'date-time' }, { type: 'null' }],
    });
  });

  it('serves the interactive docs at /docs (docs-viewer.test.ts tests the page)', async () => {
    const response = await fetch(`${server.url}/docs/`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/html/);
    expect(response.headers.get('content-security-policy')).toContain("default-src 'none'");
  });
});

describe('the internal routes of useBatch, packages and reconcile', () => {
  it('POST internal/credits/use-batch applies each item alone and agrees with tRPC', async () => {
    const userId = newUser().id;
    await fund(userId, 10);
    const items = [
      { userId, amount: 4, appId: 'batch', description: 'a', idempotencyKey: `rb-${randomUUID()}` },
      { userId, amount: 100, appId: 'batch', description: 'too much', idempotencyKey: `rb-${randomUUID()}` },
      { userId, amount: 0, appId: 'batch', description: 'bad', idempotencyKey: `rb-${randomUUID()}` },
    ];
    const answer = await call('POST /api/v1/internal/credits/use-batch', {
      serviceKey: SERVICE_KEY,
      body: { items },
    });
    expect(answer.status).toBe(200);
    expect(answer.body.results).toMatchObject([
      { idempotencyKey: items[0]!.idempotencyKey, ok: true, balance: 6 },
      { idempotencyKey: items[1]!.idempotencyKey, ok: false, error: { reason: 'INSUFFICIENT_CREDITS' } },
      { idempotencyKey: items[2]!.idempotencyKey, ok: false, error: { reason: 'VALIDATION' } },
    ]);
    // A replay through tRPC answers the first result.
    const replay = await server.internalClient().internal.credits.useBatch.mutate({ items: [items[0]] });
    expect(replay.results[0]).toEqual(answer.body.results[0]);
    expect(await ledgerSum(server.deps.db, userId)).toBe(6);
    const empty = await call('POST /api/v1/internal/credits/use-batch', {
      serviceKey: SERVICE_KEY,
      body: { items: [] },
    });
    expect(empty.status).toBe(400);
    expect((await call('POST /api/v1/internal/credits/use-batch', { body: { items } })).status).toBe(401);
  });

  it('POST internal/packages creates and changes a package; GET internal/audit/reconcile reports every check', async () => {
    const created = await call('POST /api/v1/internal/packages', {
      serviceKey: SERVICE_KEY,
      body: { name: 'REST pack', credits: 500, priceEuroCents: 499, active: true, sortOrder: 7 },
    });
    expect(created.status).toBe(200);
    expect(created.body).toMatchObject({ name: 'REST pack', credits: 500, active: true, validityDays: null });
    const changed = await call('POST /api/v1/internal/packages', {
      serviceKey: SERVICE_KEY,
      body: {
        id: created.body.id,
        name: 'REST pack',
        credits: 600,
        priceEuroCents: 599,
        active: false,
        sortOrder: 7,
      },
    });
    expect(changed.body).toMatchObject({ id: created.body.id, credits: 600, active: false });
    const bad = await call('POST /api/v1/internal/packages', {
      serviceKey: SERVICE_KEY,
      body: { name: 'x', credits: 1, priceEuroCents: 10, active: true, sortOrder: 0 },
    });
    expect(bad.status).toBe(400);
    expect(JSON.stringify(bad.body)).toContain('priceEuroCents');

    const report = await call('GET /api/v1/internal/audit/reconcile', { serviceKey: SERVICE_KEY });
    expect(report.status).toBe(200);
    expect(report.body.ok).toBe(true);
    expect(report.body.checks.map((check: { name: string }) => check.name)).toContain('gift_money_accounts');
    expect((await call('GET /api/v1/internal/audit/reconcile')).status).toBe(401);
  });
});

describe('GET /api/v1/credits/balance', () => {
  it('answers the balance as JSON with dates as ISO strings', async () => {
    const { user, token } = await tokenFor();
    await fund(user.id, 40);
    const answer = await call('GET /api/v1/credits/balance', { token });
    expect(answer.status).toBe(200);
    expect(answer.body).toMatchObject({ balance: 40, reserved: 0, totalEarned: 40, totalSpent: 0 });
    expect(new Date(answer.body.updatedAt).toISOString()).toBe(answer.body.updatedAt);
  });

  it('refuses without a token or with a bad one: 401 with the error body', async () => {
    const missing = await call('GET /api/v1/credits/balance');
    expect(missing.status).toBe(401);
    expect(missing.body).toEqual({
      error: { message: 'A bearer token is required', reason: 'UNAUTHORIZED', requestId: missing.requestId },
    });
    const bad = await call('GET /api/v1/credits/balance', { token: 'not-a-jwt' });
    expect(bad.status).toBe(401);
    expect(bad.body.error.reason).toBe('UNAUTHORIZED');
  });
});

describe('POST /api/v1/credits/use', () => {
  it('spends, replays with the same key, and agrees with tRPC', async () => {
    const { user, token } = await tokenFor();
    await fund(user.id, 100);
    const body = {
      amount: 30,
      appId: 'chat',
      description: 'reply',
      idempotencyKey: 'k1',
      metadata: { n: [1] },
    };
    const first = await call('POST /api/v1/credits/use', { token, body });
    expect(first.status).toBe(200);
    expect(first.body).toEqual({ transactionId: expect.any(String), balance: 70 });
    const replay = await call('POST /api/v1/credits/use', { token, body });
    expect(replay.body).toEqual(first.body);
    const trpc = await server.userClient(user);
    expect((await trpc.credits.balance.query()).balance).toBe(70);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(70);
  });

  it('answers 402 with required/available, 409 on a reused key, 400 naming the field', async () => {
    const { user, token } = await tokenFor();
    await fund(user.id, 10);
    const short = await call('POST /api/v1/credits/use', {
      token,
      body: { amount: 11, appId: 'chat', description: 'too much' },
    });
    expect(short.status).toBe(402);
    expect(short.body.error).toMatchObject({
      reason: 'INSUFFICIENT_CREDITS',
      details: { required: 11, available: 10 },
      requestId: short.requestId,
    });

    await call('POST /api/v1/credits/use', {
      token,
      body: { amount: 1, appId: 'a', description: 'x', idempotencyKey: 'k' },
    });
    const conflict = await call('POST /api/v1/credits/use', {
      token,
      body: { amount: 2, appId: 'a', description: 'x', idempotencyKey: 'k' },
    });
    expect(conflict.status).toBe(409);
    expect(conflict.body.error.reason).toBe('IDEMPOTENCY_CONFLICT');

    // JSON bodies are not coerced: a string amount is refused, as over tRPC.
    const invalid = await call('POST /api/v1/credits/use', {
      token,
      body: { amount: '5', appId: 'chat', description: 'x' },
    });
    expect(invalid.status).toBe(400);
    expect(invalid.body.error.reason).toBe('VALIDATION');
    expect(invalid.body.error.details.issues).toEqual([{ field: 'amount', message: expect.any(String) }]);
    const unknown = await call('POST /api/v1/credits/use', {
      token,
      body: { amount: 1, appId: 'chat', description: 'x', extra: true },
    });
    expect(unknown.status).toBe(400);
    expect(unknown.body.error.message).toContain('extra');
    expect(await ledgerSum(server.deps.db, user.id)).toBe(9);
  });

  it('refuses a body that is not JSON with 400 and the same error shape', async () => {
    const { token } = await tokenFor();
    const response = await fetch(`${server.url}/api/v1/credits/use`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: '{"amount": 1,',
    });
    expect(response.status).toBe(400);
    expect(await response.json()).toEqual({
      error: { message: expect.any(String), reason: expect.any(String), requestId: expect.any(String) },
    });
  });

  it('refuses prototype keys in the body with 400, writing nothing', async () => {
    const { user, token } = await tokenFor();
    await fund(user.id, 10);
    for (const body of [
      '{"amount": 1, "appId": "a", "description": "x", "__proto__": {"amount": 2}}',
      '{"amount": 1, "appId": "a", "description": "x", "metadata": {"constructor": {"prototype": {}}}}',
    ]) {
      const response = await fetch(`${server.url}/api/v1/credits/use`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body,
      });
      expect(response.status, body).toBe(400);
      expect(await response.json()).toMatchObject({ error: { reason: expect.any(String) } });
    }
    expect(await ledgerSum(server.deps.db, user.id)).toBe(10);
  });

  it('refuses without a token: 401', async () => {
    const answer = await call('POST /api/v1/credits/use', {
      body: { amount: 1, appId: 'a', description: 'x' },
    });
    expect(answer.status).toBe(401);
  });
});

describe('GET /api/v1/credits/transactions', () => {
  it('pages with limit and cursor from the query string', async () => {
    const { user, token } = await tokenFor();
    await fund(user.id, 10);
    await call('POST /api/v1/credits/use', { token, body: { amount: 3, appId: 'a', description: 'x' } });
    const first = await call('GET /api/v1/credits/transactions', { token, query: { limit: '1' } });
    expect(first.status).toBe(200);
    expect(first.body.items).toHaveLength(1);
    expect(first.body.items[0]).toMatchObject({ type: 'usage', amount: -3, balanceAfter: 7 });
    const second = await call('GET /api/v1/credits/transactions', {
      token,
      query: { limit: '1', cursor: first.body.nextCursor },
    });
    expect(second.body.items[0]).toMatchObject({ type: 'grant', amount: 10 });
    const all = await call('GET /api/v1/credits/transactions', { token });
    expect(all.body.items).toHaveLength(2);
    expect(all.body.nextCursor).toBeNull();
  });

  it('answers 400 naming a bad or unknown query parameter, 401 without a token', async () => {
    const { token } = await tokenFor();
    const queries: Record<string, string>[] = [
      { limit: 'ten' },
      { limit: '0' },
      { limit: '1.5' },
      { cursor: 'nope' },
      { page: '2' },
      { ['__proto__']: '2' },
    ];
    for (const query of queries) {
      const answer = await call('GET /api/v1/credits/transactions', { token, query });
      expect(answer.status, JSON.stringify(query)).toBe(400);
      expect(answer.body.error.message).toContain(Object.keys(query)[0]);
    }
    expect((await call('GET /api/v1/credits/transactions')).status).toBe(401);
  });
});

describe('GET /api/v1/credits/packages', () => {
  it('lists active packages without authentication', async () => {
    await server.deps.db
      .insertInto('credits.packages')
      .values([
        { name: 'Small', credits: 100, price_euro_cents: 199, sort_order: 1 },
        { name: 'Hidden', credits: 5, price_euro_cents: 1, active: false },
      ])
      .execute();
    const answer = await call('GET /api/v1/credits/packages');
    expect(answer.status).toBe(200);
    expect(answer.body).toEqual([
      {
        id: expect.any(String),
        name: 'Small',
        description: null,
        credits: 100,
        priceEuroCents: 199,
        validityDays: null,
      },
    ]);
  });
});

describe('GET /api/v1/internal/credits/balance/{userId}', () => {
  it('answers with the service key, 401 without it or with only a user token, 400 for a bad id', async () => {
    const { user, token } = await tokenFor();
    await fund(user.id, 5);
    const ok = await call('GET /api/v1/internal/credits/balance/{userId}', {
      serviceKey: SERVICE_KEY,
      params: { userId: user.id },
    });
    expect(ok.status).toBe(200);
    expect(ok.body.balance).toBe(5);
    for (const options of [{}, { token }, { serviceKey: 'wrong-key' }]) {
      const refused = await call('GET /api/v1/internal/credits/balance/{userId}', {
        ...options,
        params: { userId: user.id },
      });
      expect(refused.status).toBe(401);
      expect(refused.body.error.reason).toBe('UNAUTHORIZED');
    }
    const bad = await call('GET /api/v1/internal/credits/balance/{userId}', {
      serviceKey: SERVICE_KEY,
      params: { userId: 'a\u0001b' },
    });
    expect(bad.status).toBe(400);
    expect(bad.body.error.details.issues[0].field).toBe('userId');
  });
});

describe('POST /api/v1/internal/credits/use', () => {
  it('spends for a user: 200, 402, 400, 401', async () => {
    const user = newUser();
    await fund(user.id, 20);
    const route = 'POST /api/v1/internal/credits/use';
    const ok = await call(route, {
      serviceKey: SERVICE_KEY,
      headers: { 'x-app-id': 'images' },
      body: { userId: user.id, amount: 15, appId: 'images', description: 'render' },
    });
    expect(ok.status).toBe(200);
    expect(ok.body.balance).toBe(5);
    const short = await call(route, {
      serviceKey: SERVICE_KEY,
      body: { userId: user.id, amount: 6, appId: 'images', description: 'render' },
    });
    expect(short.status).toBe(402);
    expect(short.body.error.details).toEqual({ required: 6, available: 5 });
    const invalid = await call(route, { serviceKey: SERVICE_KEY, body: { userId: user.id, amount: 1 } });
    expect(invalid.status).toBe(400);
    expect(invalid.body.error.details.issues.map((issue: { field: string }) => issue.field)).toEqual([
      'appId',
      'description',
    ]);
    expect(
      (await call(route, { body: { userId: user.id, amount: 1, appId: 'a', description: 'x' } })).status,
    ).toBe(401);
  });
});

describe('POST /api/v1/internal/credits/refund', () => {
  it('refunds a usage: 200, replay, 409 on another payload, 404 unknown, 400 too much', async () => {
    const user = newUser();
    await fund(user.id, 50);
    const used = await call('POST /api/v1/internal/credits/use', {
      serviceKey: SERVICE_KEY,
      body: { userId: user.id, amount: 20, appId: 'a', description: 'x' },
    });
    const route = 'POST /api/v1/internal/credits/refund';
    const body = {
      userId: user.id,
      transactionId: used.body.transactionId,
      amount: 5,
      description: 'partial',
      idempotencyKey: 'r1',
    };
    const ok = await call(route, { serviceKey: SERVICE_KEY, body });
    expect(ok.status).toBe(200);
    expect(ok.body.balance).toBe(35);
    expect((await call(route, { serviceKey: SERVICE_KEY, body })).body).toEqual(ok.body);
    const conflict = await call(route, { serviceKey: SERVICE_KEY, body: { ...body, amount: 6 } });
    expect(conflict.status).toBe(409);
    const missing = await call(route, {
      serviceKey: SERVICE_KEY,
      body: { ...body, transactionId: randomUUID(), idempotencyKey: 'r2' },
    });
    expect(missing.status).toBe(404);
    expect(missing.body.error.reason).toBe('NOT_FOUND');
    const tooMuch = await call(route, {
      serviceKey: SERVICE_KEY,
      body: { ...body, amount: 16, idempotencyKey: 'r3' },
    });
    expect(tooMuch.status).toBe(400);
    expect(tooMuch.body.error).toMatchObject({
      reason: 'REFUND_EXCEEDS_TRANSACTION',
      details: { field: 'amount', refundable: 15 },
    });
    expect((await call(route, { body })).status).toBe(401);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(35);
  });
});

describe('POST /api/v1/internal/credits/init', () => {
  it('creates a balance once: 200 created, then 200 not created; 400; 401', async () => {
    const user = newUser();
    const route = 'POST /api/v1/internal/credits/init';
    const first = await call(route, { serviceKey: SERVICE_KEY, body: { userId: user.id } });
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ created: true, balance: 0 });
    expect((await call(route, { serviceKey: SERVICE_KEY, body: { userId: user.id } })).body.created).toBe(
      false,
    );
    expect((await call(route, { serviceKey: SERVICE_KEY, body: {} })).status).toBe(400);
    expect((await call(route, { body: { userId: user.id } })).status).toBe(401);
  });
});

describe('POST /api/v1/internal/credits/grant', () => {
  it('grants once per key: 200, replay, 409, 400 without a key, 401', async () => {
    const user = newUser();
    const route = 'POST /api/v1/internal/credits/grant';
    const body = { userId: user.id, amount: 25, reason: 'welcome', idempotencyKey: 'g1' };
    const ok = await call(route, { serviceKey: SERVICE_KEY, body });
    expect(ok.status).toBe(200);
    expect(ok.body.balance).toBe(25);
    expect((await call(route, { serviceKey: SERVICE_KEY, body })).body).toEqual(ok.body);
    const conflict = await call(route, { serviceKey: SERVICE_KEY, body: { ...body, amount: 26 } });
    expect(conflict.status).toBe(409);
    expect(conflict.body.error.reason).toBe('IDEMPOTENCY_CONFLICT');
    const { idempotencyKey: _key, ...withoutKey } = body;
    const invalid = await call(route, { serviceKey: SERVICE_KEY, body: withoutKey });
    expect(invalid.status).toBe(400);
    expect(invalid.body.error.details.issues[0].field).toBe('idempotencyKey');
    expect((await call(route, { body })).status).toBe(401);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(25);
  });
});

describe('routing', () => {
  it('answers unknown routes under /api/v1 with 404 and the error body', async () => {
    const response = await fetch(`${server.url}/api/v1/credits/nothing`);
    expect(response.status).toBe(404);
    const body = await response.json();
    expect(body).toEqual({
      error: {
        message: expect.any(String),
        reason: 'NOT_FOUND',
        requestId: response.headers.get('x-request-id'),
      },
    });
  });

  it('fills path parameters into the input and refuses them in the body', async () => {
    const app = Fastify({ logger: false });
    await app.register(restApi, {
      deps: server.deps,
      routes: [
        {
          method: 'POST',
          path: '/api/v1/internal/credits/init/:userId',
          procedure: 'internal.credits.init',
          auth: 'service',
          summary: 'init by path',
          output: restRoutes[0]!.output,
        },
      ],
    });
    const user = newUser();
    const send = (body: unknown) =>
      app.inject({
        method: 'POST',
        url: `/api/v1/internal/credits/init/${user.id}`,
        headers: { 'x-service-key': SERVICE_KEY, 'content-type': 'application/json' },
        payload: JSON.stringify(body),
      });
    const ok = await send({});
    expect(ok.statusCode).toBe(200);
    expect(ok.json()).toMatchObject({ created: true });
    const repeated = await send({ userId: 'someone-else' });
    expect(repeated.statusCode).toBe(400);
    expect(repeated.json().error.details.issues).toEqual([
      { field: 'userId', message: 'belongs in the path, not in the body' },
    ]);
    expect((await send([1])).statusCode).toBe(400);
    await app.close();
  });

  it('refuses to start with a path parameter the procedure does not take', async () => {
    const app = Fastify({ logger: false });
    await expect(
      app.register(restApi, {
        deps: server.deps,
        routes: [
          {
            method: 'GET',
            path: '/api/v1/credits/balance/:nope',
            procedure: 'credits.balance',
            auth: 'user',
            summary: 'broken',
            output: restRoutes[0]!.output,
          },
        ],
      }),
    ).rejects.toThrow('has no input field "nope"');
    await app.close();
  });
});
