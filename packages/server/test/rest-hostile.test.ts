import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectLedgerConsistent } from './helpers/invariants.ts';
import { newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';

// The REST layer under hostile input, with raw fetch (nothing normalised on the way): query-string coercion,
// path parameters, bodies, the internal routes added on 2026-12-04 (use-batch, packages, reconcile) and
// cross-account reach. From the review of 2026-12-04, which found two minor bugs (a decimal accepted for an
// integer query field; unknown query parameters ignored on routes without input), now refused.

let server: TestServer;
let token: string;
const owner = newUser();

beforeAll(async () => {
  server = await startTestServer();
  token = await server.auth.sign(owner);
  await server.internalClient().internal.credits.grant.mutate({
    userId: owner.id,
    amount: 1000,
    reason: 'seed',
    idempotencyKey: 'seed',
  });
});
afterAll(async () => {
  await expectLedgerConsistent(server.deps.db);
  await server?.close();
});

interface Raw {
  method?: string;
  headers?: Record<string, string>;
  body?: string;
  as?: 'user' | 'service' | 'none';
}

async function raw(path: string, options: Raw = {}) {
  const headers: Record<string, string> = { ...options.headers };
  if (options.as === 'user') headers.authorization = `Bearer ${token}`;
  if (options.as === 'service') headers['x-service-key'] = SERVICE_KEY;
  const response = await fetch(`${server.url}${path}`, {
    method: options.method ?? 'GET',
    headers,
    body: options.body,
  });
  const text = await response.text();
  // biome-ignore lint/suspicious/noExplicitAny: error bodies are inspected freely
  let body: any;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: response.status, body, text };
}

const json = (value: unknown) => ({
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify(value),
});

const balanceOf = async (userId: string) =>
  (await server.internalClient().internal.credits.balance.query({ userId })).balance;

describe('query-string coercion', () => {
  for (const value of ['1e3', '0x10', ' 5', '5 ', '9007199254740993', '+5', 'Infinity', 'NaN', '']) {
    it(`limit=${JSON.stringify(value)} is a 400 naming limit`, async () => {
      const answer = await raw(`/api/v1/credits/transactions?limit=${encodeURIComponent(value)}`, {
        as: 'user',
      });
      expect(answer.status, answer.text).toBe(400);
      expect(answer.body.error.details.issues[0].field).toBe('limit');
    });
  }

  it('duplicate limit keys are a 400 naming limit', async () => {
    const answer = await raw('/api/v1/credits/transactions?limit=5&limit=6', { as: 'user' });
    expect(answer.status, answer.text).toBe(400);
    expect(answer.body.error.details.issues[0].field).toBe('limit');
  });

  it('a fractional number in the query is refused for an integer field (5.0, 2.0000000000000001)', async () => {
    for (const value of ['5.0', '2.0000000000000001']) {
      const answer = await raw(`/api/v1/credits/transactions?limit=${value}`, { as: 'user' });
      expect(answer.status, `limit=${value}: ${answer.text}`).toBe(400);
    }
  });

  it('a boolean query field takes only true/false', async () => {
    for (const value of ['1', 'TRUE', 'yes']) {
      const answer = await raw(`/api/v1/credits/lots?includeSpent=${value}`, { as: 'user' });
      expect(answer.status, answer.text).toBe(400);
    }
    const both = await raw('/api/v1/credits/lots?includeSpent=true&includeSpent=false', { as: 'user' });
    expect(both.status, both.text).toBe(400);
  });

  it('__proto__ / constructor query keys are a 4xx, never a 5xx', async () => {
    for (const key of ['__proto__', 'constructor', '__proto__[limit]', 'toString']) {
      const answer = await raw(`/api/v1/credits/transactions?${encodeURIComponent(key)}=1`, { as: 'user' });
      expect(answer.status, `${key}: ${answer.text}`).toBe(400);
    }
  });

  it('unknown query parameters on a route without input are refused like on routes with input', async () => {
    const withInput = await raw('/api/v1/credits/transactions?bogus=1', { as: 'user' });
    expect(withInput.status).toBe(400);
    const noInput = await raw('/api/v1/internal/audit/reconcile?bogus=1', { as: 'service' });
    expect(noInput.status, noInput.text.slice(0, 200)).toBe(400);
  });
});

describe('path parameters', () => {
  it('a query userId cannot replace the path userId (GET)', async () => {
    const other = newUser();
    await server.internalClient().internal.credits.grant.mutate({
      userId: other.id,
      amount: 7,
      reason: 'x',
      idempotencyKey: 'k',
    });
    const answer = await raw(
      `/api/v1/internal/credits/balance/${encodeURIComponent(owner.id)}?userId=${encodeURIComponent(other.id)}`,
      { as: 'service' },
    );
    // Either refused, or answered for the path's user: never the query's.
    if (answer.status === 200) expect(answer.body.balance).not.toBe(7);
    else expect(answer.status).toBe(400);
  });

  it('a body userId cannot replace the path userId (PUT)', async () => {
    const answer = await raw(`/api/v1/internal/credits/alerts/${encodeURIComponent(owner.id)}`, {
      as: 'service',
      method: 'PUT',
      ...json({ userId: 'someone-else', lowBalanceThreshold: 5 }),
    });
    expect(answer.status, answer.text).toBe(400);
    expect(answer.body.error.details.issues[0].field).toBe('userId');
  });

  it('a body guildId / userId cannot replace path params of member limits', async () => {
    const answer = await raw(`/api/v1/credits/guild/g1/members/${encodeURIComponent(owner.id)}/limits`, {
      as: 'user',
      method: 'PUT',
      ...json({ guildId: 'g2', dailyLimit: null, monthlyLimit: null }),
    });
    expect(answer.status, answer.text).toBe(400);
  });

  it('encoded slashes / dots / NUL in a path param are a 400', async () => {
    for (const id of ['a%2Fb', '..', '%2e%2e', 'a%00b', '%ZZ']) {
      const answer = await raw(`/api/v1/internal/credits/balance/${id}`, { as: 'service' });
      expect(answer.status, `${id}: ${answer.text}`).toBeGreaterThanOrEqual(400);
      expect(answer.status, `${id}: ${answer.text}`).toBeLessThan(500);
    }
  });
});

describe('bodies', () => {
  it('__proto__ / constructor.prototype in a JSON body are a 400 and write nothing', async () => {
    const before = await balanceOf(owner.id);
    for (const body of [
      `{"userId":"${owner.id}","amount":1,"appId":"a","description":"d","idempotencyKey":"p1","__proto__":{"amount":5}}`,
      `{"userId":"${owner.id}","amount":1,"appId":"a","description":"d","idempotencyKey":"p2","constructor":{"prototype":{"x":1}}}`,
      `{"userId":"${owner.id}","amount":1,"appId":"a","description":"d","idempotencyKey":"p3","metadata":{"__proto__":{"x":1}}}`,
    ]) {
      const answer = await raw('/api/v1/internal/credits/use', {
        as: 'service',
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
      });
      expect(answer.status, answer.text).toBe(400);
    }
    const batch = await raw('/api/v1/internal/credits/use-batch', {
      as: 'service',
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: `{"items":[{"userId":"${owner.id}","amount":1,"appId":"a","description":"d","idempotencyKey":"p4","__proto__":{"x":1}}]}`,
    });
    expect(batch.status, batch.text).toBe(400);
    expect(await balanceOf(owner.id)).toBe(before);
  });

  it('wrong content types are 4xx', async () => {
    const use = { userId: owner.id, amount: 1, appId: 'a', description: 'd', idempotencyKey: 'ct' };
    for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'application/xml', '']) {
      const answer = await raw('/api/v1/internal/credits/use', {
        as: 'service',
        method: 'POST',
        headers: type ? { 'content-type': type } : {},
        body: JSON.stringify(use),
      });
      expect(answer.status, `${type}: ${answer.text}`).toBeGreaterThanOrEqual(400);
      expect(answer.status, `${type}: ${answer.text}`).toBeLessThan(500);
    }
  });

  it('malformed JSON, empty JSON, and a body over the limit are 4xx without internals', async () => {
    for (const body of ['{', '', 'null', '[]', '"x"', '1', '{"items":']) {
      const answer = await raw('/api/v1/internal/credits/use-batch', {
        as: 'service',
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
      });
      expect(answer.status, `${body}: ${answer.text}`).toBeGreaterThanOrEqual(400);
      expect(answer.status, `${body}: ${answer.text}`).toBeLessThan(500);
      expect(answer.text).not.toMatch(/ at |\.ts:|node_modules|select |insert /i);
    }
    const huge = await raw('/api/v1/internal/credits/use-batch', {
      as: 'service',
      method: 'POST',
      ...json({ items: [{ description: 'x'.repeat(2 * 1024 * 1024) }] }),
    });
    expect(huge.status).toBe(413);
  });

  for (const amount of ['10', '1e3', 1.5, -1, 0, true, [10], null, 1e13, 2 ** 53, '0x10']) {
    it(`credits use with amount ${JSON.stringify(amount)} is refused`, async () => {
      const before = await balanceOf(owner.id);
      const answer = await raw('/api/v1/internal/credits/use', {
        as: 'service',
        method: 'POST',
        ...json({ userId: owner.id, amount, appId: 'a', description: 'd', idempotencyKey: randomUUID() }),
      });
      expect(answer.status, answer.text).toBe(400);
      expect(answer.body.error.details.issues[0].field).toBe('amount');
      expect(await balanceOf(owner.id)).toBe(before);
    });
  }
});

describe('POST /api/v1/internal/credits/use-batch', () => {
  const item = (userId: string, key: string, amount = 1) => ({
    userId,
    amount,
    appId: 'app',
    description: 'batch',
    idempotencyKey: key,
  });

  it('refuses without the service key, and with a user token', async () => {
    const body = json({ items: [item(owner.id, 'x')] });
    expect((await raw('/api/v1/internal/credits/use-batch', { method: 'POST', ...body })).status).toBe(401);
    expect(
      (await raw('/api/v1/internal/credits/use-batch', { method: 'POST', as: 'user', ...body })).status,
    ).toBe(401);
    expect(
      (
        await raw('/api/v1/internal/credits/use-batch', {
          method: 'POST',
          ...body,
          headers: { ...body.headers, 'x-service-key': `${SERVICE_KEY}x` },
        })
      ).status,
    ).toBe(401);
  });

  it('the same key twice in one batch with the same payload spends once', async () => {
    const user = await server.fundedUser(100);
    const key = randomUUID();
    const answer = await raw('/api/v1/internal/credits/use-batch', {
      as: 'service',
      method: 'POST',
      ...json({ items: [item(user.id, key, 10), item(user.id, key, 10)] }),
    });
    expect(answer.status, answer.text).toBe(200);
    expect(answer.body.results[0].ok).toBe(true);
    expect(answer.body.results[1]).toMatchObject({
      ok: true,
      transactionId: answer.body.results[0].transactionId,
    });
    expect(await balanceOf(user.id)).toBe(90);
  });

  it('the same key twice in one batch with another payload: the second is an IDEMPOTENCY_CONFLICT', async () => {
    const user = await server.fundedUser(100);
    const key = randomUUID();
    const answer = await raw('/api/v1/internal/credits/use-batch', {
      as: 'service',
      method: 'POST',
      ...json({ items: [item(user.id, key, 10), item(user.id, key, 20)] }),
    });
    expect(answer.status, answer.text).toBe(200);
    expect(answer.body.results[0].ok).toBe(true);
    expect(answer.body.results[1]).toMatchObject({ ok: false, error: { reason: 'IDEMPOTENCY_CONFLICT' } });
    expect(await balanceOf(user.id)).toBe(90);
  });

  it('a batch item replays a credits/use with the same key, and conflicts with another payload', async () => {
    const user = await server.fundedUser(100);
    const key = randomUUID();
    const single = await raw('/api/v1/internal/credits/use', {
      as: 'service',
      method: 'POST',
      ...json(item(user.id, key, 10)),
    });
    expect(single.status).toBe(200);
    const batch = await raw('/api/v1/internal/credits/use-batch', {
      as: 'service',
      method: 'POST',
      ...json({ items: [item(user.id, key, 10), item(user.id, key, 11)] }),
    });
    expect(batch.body.results[0]).toMatchObject({ ok: true, transactionId: single.body.transactionId });
    expect(batch.body.results[1]).toMatchObject({ ok: false, error: { reason: 'IDEMPOTENCY_CONFLICT' } });
    expect(await balanceOf(user.id)).toBe(90);
  });

  it('bad items fail alone; the list is bounded', async () => {
    const user = await server.fundedUser(100);
    const answer = await raw('/api/v1/internal/credits/use-batch', {
      as: 'service',
      method: 'POST',
      ...json({
        items: [
          null,
          1,
          'x',
          [],
          { ...item(user.id, 'a'), amount: '5' },
          { ...item(user.id, 'b'), amount: 1e3 + 0.5 },
          { ...item(user.id, 'c'), extra: 1 },
          item(user.id, randomUUID(), 3),
        ],
      }),
    });
    expect(answer.status, answer.text).toBe(200);
    expect(answer.body.results.slice(0, 7).every((r: { ok: boolean }) => r.ok === false)).toBe(true);
    expect(answer.body.results[7].ok).toBe(true);
    expect(await balanceOf(user.id)).toBe(97);
    const many = await raw('/api/v1/internal/credits/use-batch', {
      as: 'service',
      method: 'POST',
      ...json({ items: Array.from({ length: 1001 }, () => 1) }),
    });
    expect(many.status).toBe(400);
    const none = await raw('/api/v1/internal/credits/use-batch', {
      as: 'service',
      method: 'POST',
      ...json({ items: [] }),
    });
    expect(none.status).toBe(400);
  });

  it('REST and tRPC answer the same batch the same way', async () => {
    const user = await server.fundedUser(100);
    const key = randomUUID();
    const rest = await raw('/api/v1/internal/credits/use-batch', {
      as: 'service',
      method: 'POST',
      ...json({ items: [item(user.id, key, 4)] }),
    });
    const trpc = await server
      .internalClient()
      .internal.credits.useBatch.mutate({ items: [item(user.id, key, 4)] });
    expect(trpc.results[0]).toMatchObject({ ok: true, transactionId: rest.body.results[0].transactionId });
    expect(await balanceOf(user.id)).toBe(96);
  });
});

describe('POST /api/v1/internal/packages', () => {
  const pack = { name: 'P', credits: 100, priceEuroCents: 999, active: true, sortOrder: 1 };

  it('refuses without the service key and with a user token', async () => {
    expect((await raw('/api/v1/internal/packages', { method: 'POST', ...json(pack) })).status).toBe(401);
    expect(
      (await raw('/api/v1/internal/packages', { method: 'POST', as: 'user', ...json(pack) })).status,
    ).toBe(401);
  });

  for (const [field, value] of [
    ['credits', '100'],
    ['credits', 1.5],
    ['credits', 0],
    ['credits', 1e13],
    ['priceEuroCents', 10],
    ['priceEuroCents', 1e9],
    ['priceEuroCents', '999'],
    ['sortOrder', 2 ** 31],
    ['validityDays', 0],
    ['name', '   '],
    ['name', 'a\u0000b'],
    ['id', 'not-a-uuid'],
    ['active', 'true'],
  ] as const) {
    it(`${field}=${JSON.stringify(value)} is a 400 naming ${field}`, async () => {
      const answer = await raw('/api/v1/internal/packages', {
        as: 'service',
        method: 'POST',
        ...json({ ...pack, [field]: value }),
      });
      expect(answer.status, answer.text).toBe(400);
      expect(answer.body.error.details.issues[0].field).toBe(field);
    });
  }

  it('a valid package is stored, and updating it by id keeps the id', async () => {
    const created = await raw('/api/v1/internal/packages', { as: 'service', method: 'POST', ...json(pack) });
    expect(created.status, created.text).toBe(200);
    const updated = await raw('/api/v1/internal/packages', {
      as: 'service',
      method: 'POST',
      ...json({ ...pack, id: created.body.id, credits: 200 }),
    });
    expect(updated.body).toMatchObject({ id: created.body.id, credits: 200 });
  });
});

describe('GET /api/v1/internal/audit/reconcile', () => {
  it('refuses without the key, with a user token, and answers only GET', async () => {
    expect((await raw('/api/v1/internal/audit/reconcile')).status).toBe(401);
    expect((await raw('/api/v1/internal/audit/reconcile', { as: 'user' })).status).toBe(401);
    const post = await raw('/api/v1/internal/audit/reconcile', {
      as: 'service',
      method: 'POST',
      ...json({}),
    });
    expect(post.status).toBe(404);
    const ok = await raw('/api/v1/internal/audit/reconcile', { as: 'service' });
    expect(ok.status).toBe(200);
    expect(ok.body.ok).toBe(true);
  });
});

describe('cross-account', () => {
  it("another user's transaction, purchase or refund is not reachable", async () => {
    const spent = await server.internalClient().internal.credits.use.mutate({
      userId: owner.id,
      amount: 1,
      appId: 'a',
      description: 'd',
      idempotencyKey: randomUUID(),
    });
    const intruder = newUser();
    const intruderToken = await server.auth.sign(intruder);
    const read = await fetch(`${server.url}/api/v1/credits/transactions/${spent.transactionId}`, {
      headers: { authorization: `Bearer ${intruderToken}` },
    });
    expect(read.status).toBe(404);
    const viaService = await raw(
      `/api/v1/internal/credits/transactions/${encodeURIComponent(intruder.id)}/${spent.transactionId}`,
      { as: 'service' },
    );
    expect(viaService.status).toBe(404);
    const before = await balanceOf(owner.id);
    const refund = await raw('/api/v1/internal/credits/refund', {
      as: 'service',
      method: 'POST',
      ...json({
        userId: intruder.id,
        transactionId: spent.transactionId,
        description: 'x',
        idempotencyKey: 'r',
      }),
    });
    expect(refund.status, refund.text).toBe(404);
    expect(await balanceOf(owner.id)).toBe(before);
    expect(
      (await server.internalClient().internal.credits.balance.query({ userId: intruder.id })).balance,
    ).toBe(0);
  });

  it('a service key sent twice (joined with a comma) or with a suffix is refused', async () => {
    // (leading/trailing blanks are optional whitespace in HTTP: Node trims them, so they are not tested)
    for (const key of [`${SERVICE_KEY}, ${SERVICE_KEY}`, `${`${SERVICE_KEY}\t`.trim()}x`]) {
      const answer = await raw('/api/v1/internal/audit/reconcile', { headers: { 'x-service-key': key } });
      expect(answer.status, JSON.stringify(key)).toBe(401);
    }
  });
});
