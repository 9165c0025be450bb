import { base64url } from 'jose';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reconcile } from '../src/domain/audit/reconcile.ts';
import { newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';

/**
 * The bad-input catalogue: hostile or malformed requests against the live server. Each must get a 4xx with a
 * reason, and leave the database exactly as it was (ledger, balances, reconcile).
 */
let server: TestServer;
const victim = newUser();
let victimToken: string;
let victimUsage: string;

beforeAll(async () => {
  server = await startTestServer();
  victimToken = await server.auth.sign(victim);
  const internal = server.internalClient();
  await internal.internal.credits.grant.mutate({
    userId: victim.id,
    amount: 100,
    reason: 'x',
    idempotencyKey: 'seed',
  });
  victimUsage = (
    await internal.internal.credits.use.mutate({
      userId: victim.id,
      amount: 10,
      appId: 'app',
      description: 'first',
      idempotencyKey: 'used-key',
    })
  ).transactionId;
});
afterAll(async () => {
  await server.close();
});

interface BadRequest {
  name: string;
  method?: 'GET' | 'POST' | 'PUT' | 'DELETE';
  path: string;
  /** 'user' = the victim's valid token, 'service' = a valid service key, or explicit headers. */
  as?: 'user' | 'service' | 'none';
  headers?: Record<string, string>;
  /** A JS value sent as {"json": value}, or a raw string body. */
  input?: unknown;
  raw?: string;
  status?: number;
  reason?: string;
}

const use = (input: Record<string, unknown>): Omit<BadRequest, 'name'> => ({
  path: '/trpc/credits.use',
  method: 'POST',
  as: 'user',
  input: { amount: 1, appId: 'app', description: 'd', ...input },
});
const internalUse = (input: Record<string, unknown>): Omit<BadRequest, 'name'> => ({
  path: '/trpc/internal.credits.use',
  method: 'POST',
  as: 'service',
  input: { userId: victim.id, amount: 1, appId: 'app', description: 'd', ...input },
});
const now = () => Math.floor(Date.now() / 1000);

async function jwtCases(): Promise<BadRequest[]> {
  const auth = server.auth;
  const header = (h: object) => base64url.encode(JSON.stringify(h));
  const claims = (extra: object = {}) =>
    base64url.encode(
      JSON.stringify({
        sub: victim.id,
        iss: auth.issuer,
        aud: 'manacore',
        exp: now() + 600,
        iat: now(),
        ...extra,
      }),
    );
  // HS256 "signed" with the public key bytes: the classic algorithm-confusion attack.
  const { createHmac } = await import('node:crypto');
  const hsHeader = header({ alg: 'HS256', typ: 'JWT', kid: auth.jwks.keys[0]!.kid });
  const hsBody = claims();
  const hsSignature = createHmac('sha256', JSON.stringify(auth.jwks.keys[0]))
    .update(`${hsHeader}.${hsBody}`)
    .digest('base64url');
  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
  return [
    { name: 'jwt: alg none', headers: bearer(`${header({ alg: 'none' })}.${claims()}.`) },
    {
      name: 'jwt: HS256 signed with the public key',
      headers: bearer(`${hsHeader}.${hsBody}.${hsSignature}`),
    },
    {
      name: 'jwt: wrong issuer',
      headers: bearer(await auth.sign(victim, { issuer: 'https://evil.example' })),
    },
    { name: 'jwt: wrong audience', headers: bearer(await auth.sign(victim, { audience: 'someone-else' })) },
    { name: 'jwt: expired', headers: bearer(await auth.sign(victim, { expiresIn: now() - 60 })) },
    { name: 'jwt: future nbf', headers: bearer(await auth.sign(victim, { notBefore: now() + 3600 })) },
    { name: 'jwt: missing exp', headers: bearer(await auth.sign(victim, { noExp: true })) },
    { name: 'jwt: unknown kid', headers: bearer(await auth.sign(victim, { kid: 'unknown' })) },
    { name: 'jwt: signed by another key', headers: bearer(await auth.sign(victim, { rogueKey: true })) },
    { name: 'jwt: garbage', headers: bearer('a.b.c') },
    { name: 'jwt: basic scheme', headers: { authorization: 'Basic dXNlcjpwYXNz' } },
  ].map((c) => ({ ...c, ...use({}), as: undefined, status: 401 }) as BadRequest);
}

const CASES: BadRequest[] = [
  // amounts
  { name: 'amount 0', ...use({ amount: 0 }), status: 400, reason: 'VALIDATION' },
  { name: 'amount negative', ...use({ amount: -5 }), status: 400, reason: 'VALIDATION' },
  { name: 'amount fractional', ...use({ amount: 0.5 }), status: 400, reason: 'VALIDATION' },
  { name: 'amount as a string', ...use({ amount: '5' }), status: 400, reason: 'VALIDATION' },
  {
    name: 'amount 2^53+1',
    raw: '{"json":{"amount":9007199254740993,"appId":"a","description":"d"}}',
    ...use({}),
    input: undefined,
    status: 400,
  },
  {
    name: 'amount 2^63',
    raw: '{"json":{"amount":9223372036854775808,"appId":"a","description":"d"}}',
    ...use({}),
    input: undefined,
    status: 400,
  },
  { name: 'amount 1e300', ...use({ amount: 1e300 }), status: 400, reason: 'VALIDATION' },
  {
    name: 'amount NaN via superjson',
    ...use({}),
    input: undefined,
    raw: '{"json":{"amount":"NaN","appId":"a","description":"d"},"meta":{"values":{"amount":["number"]}}}',
    status: 400,
  },
  {
    name: 'amount Infinity via superjson',
    ...use({}),
    input: undefined,
    raw: '{"json":{"amount":"Infinity","appId":"a","description":"d"},"meta":{"values":{"amount":["number"]}}}',
    status: 400,
  },
  {
    name: 'amount as a BigInt via superjson',
    ...use({}),
    input: undefined,
    raw: '{"json":{"amount":"5","appId":"a","description":"d"},"meta":{"values":{"amount":["bigint"]}}}',
    status: 400,
  },
  {
    name: 'amount missing',
    path: '/trpc/credits.use',
    method: 'POST',
    as: 'user',
    input: { appId: 'a', description: 'd' },
    status: 400,
  },
  { name: 'internal amount negative', ...internalUse({ amount: -1 }), status: 400, reason: 'VALIDATION' },
  // identity only from the token
  {
    name: 'extra userId on a user procedure',
    ...use({ userId: 'someone-else' }),
    status: 400,
    reason: 'VALIDATION',
  },
  { name: 'extra unknown field', ...use({ admin: true }), status: 400, reason: 'VALIDATION' },
  // prototype pollution
  {
    name: '__proto__ at the top level',
    ...use({}),
    input: undefined,
    raw: '{"json":{"amount":1,"appId":"a","description":"d","__proto__":{"x":1}}}',
    status: 400,
  },
  {
    name: '__proto__ in metadata',
    ...use({}),
    input: undefined,
    raw: '{"json":{"amount":1,"appId":"a","description":"d","metadata":{"__proto__":{"x":1}}}}',
    status: 400,
  },
  {
    name: 'constructor.prototype in metadata',
    ...use({}),
    input: undefined,
    raw: '{"json":{"amount":1,"appId":"a","description":"d","metadata":{"constructor":{"prototype":{"x":1}}}}}',
    status: 400,
  },
  {
    name: 'superjson meta path through __proto__',
    ...use({}),
    input: undefined,
    raw: '{"json":{"amount":1,"appId":"a","description":"d"},"meta":{"values":{"__proto__.polluted":["undefined"]}}}',
    status: 400,
  },
  // idempotency keys
  { name: 'idempotency key empty', ...use({ idempotencyKey: '' }), status: 400, reason: 'VALIDATION' },
  {
    name: 'idempotency key 10 kB',
    ...use({ idempotencyKey: 'k'.repeat(10_000) }),
    status: 400,
    reason: 'VALIDATION',
  },
  {
    name: 'idempotency key with NUL',
    ...use({ idempotencyKey: 'a\u0000b' }),
    status: 400,
    reason: 'VALIDATION',
  },
  { name: 'idempotency key as a number', ...use({ idempotencyKey: 42 }), status: 400, reason: 'VALIDATION' },
  {
    name: 'same key, another payload',
    ...internalUse({ amount: 11, description: 'first', idempotencyKey: 'used-key' }),
    status: 409,
    reason: 'IDEMPOTENCY_CONFLICT',
  },
  // text fields
  {
    name: 'description too long',
    ...use({ description: 'd'.repeat(501) }),
    status: 400,
    reason: 'VALIDATION',
  },
  { name: 'description with NUL', ...use({ description: 'a\u0000' }), status: 400, reason: 'VALIDATION' },
  { name: 'appId empty', ...use({ appId: '' }), status: 400, reason: 'VALIDATION' },
  { name: 'appId with a newline', ...use({ appId: 'a\nb' }), status: 400, reason: 'VALIDATION' },
  {
    name: 'metadata too big',
    ...use({ metadata: { x: 'y'.repeat(10_000) } }),
    status: 400,
    reason: 'VALIDATION',
  },
  { name: 'metadata an array', ...use({ metadata: [1, 2] }), status: 400, reason: 'VALIDATION' },
  {
    name: 'metadata nested 50 deep',
    ...use({ metadata: JSON.parse(`${'{"a":'.repeat(50)}1${'}'.repeat(50)}`) }),
    status: 400,
  },
  // other users' things
  {
    name: "refund of another user's transaction",
    path: '/trpc/internal.credits.refund',
    method: 'POST',
    as: 'service',
    input: {
      userId: 'not-the-owner',
      transactionId: '00000000-0000-4000-8000-000000000000',
      description: 'x',
      idempotencyKey: 'k',
    },
    status: 404,
  },
  // bodies and transport
  { name: 'invalid JSON', ...use({}), input: undefined, raw: '{"json": {"amount": 1,', status: 400 },
  { name: 'JSON null body', ...use({}), input: undefined, raw: 'null', status: 400 },
  { name: 'body is a JSON string', ...use({}), input: undefined, raw: '"hello"', status: 400 },
  {
    name: 'deeply nested body',
    ...use({}),
    input: undefined,
    raw: `{"json":${'['.repeat(5000)}${']'.repeat(5000)}}`,
    status: 400,
  },
  {
    name: 'oversized body (2 MB)',
    ...use({}),
    input: undefined,
    raw: `{"json":{"pad":"${'x'.repeat(2 * 1024 * 1024)}"}}`,
    status: 413,
  },
  { name: 'wrong content type', ...use({}), headers: { 'content-type': 'text/plain' }, status: 415 },
  { name: 'query on a mutation (GET)', path: '/trpc/credits.use', method: 'GET', as: 'user', status: 405 },
  {
    name: 'mutation on a query (POST)',
    path: '/trpc/credits.balance',
    method: 'POST',
    as: 'user',
    input: null,
    status: 405,
  },
  {
    name: 'unknown procedure',
    path: '/trpc/credits.mint',
    method: 'POST',
    as: 'user',
    input: { amount: 5 },
    status: 404,
  },
  // 1,000 names overflow the URL (431 from Node's parser); 101 fit and meet tRPC's maxBatchSize of 100.
  {
    name: 'a batch of 1,000 calls',
    path: `/trpc/${Array(1000).fill('credits.balance').join(',')}?batch=1`,
    method: 'GET',
    as: 'user',
  },
  {
    name: 'a batch of 101 calls',
    path: `/trpc/${Array(101).fill('credits.balance').join(',')}?batch=1`,
    method: 'GET',
    as: 'user',
    status: 400,
  },
  // cursors and limits
  {
    name: 'cursor tampered',
    path: `/trpc/credits.transactions?input=${encodeURIComponent(JSON.stringify({ json: { cursor: 'abc' } }))}`,
    method: 'GET',
    as: 'user',
    status: 400,
  },
  {
    name: "cursor of another user's row",
    path: `/trpc/credits.transactions?input=${encodeURIComponent(JSON.stringify({ json: { cursor: '00000000-0000-4000-8000-000000000001' } }))}`,
    method: 'GET',
    as: 'user',
    status: 400,
  },
  {
    name: 'limit -1',
    path: `/trpc/credits.transactions?input=${encodeURIComponent(JSON.stringify({ json: { limit: -1 } }))}`,
    method: 'GET',
    as: 'user',
    status: 400,
  },
  {
    name: 'limit 1e9',
    path: `/trpc/credits.transactions?input=${encodeURIComponent(JSON.stringify({ json: { limit: 1e9 } }))}`,
    method: 'GET',
    as: 'user',
    status: 400,
  },
  {
    name: 'input not JSON in the query',
    path: '/trpc/credits.transactions?input=%7Bnope',
    method: 'GET',
    as: 'user',
    status: 400,
  },
  // service keys
  { name: 'service key missing', ...internalUse({}), as: 'none', status: 401 },
  {
    name: 'service key wrong',
    ...internalUse({}),
    as: undefined,
    headers: { 'x-service-key': 'x'.repeat(SERVICE_KEY.length) },
    status: 401,
  },
  {
    name: 'service key: a prefix of the real one',
    ...internalUse({}),
    as: undefined,
    headers: { 'x-service-key': SERVICE_KEY.slice(0, -1) },
    status: 401,
  },
  {
    name: 'service key: wrong length',
    ...internalUse({}),
    as: undefined,
    headers: { 'x-service-key': `${SERVICE_KEY}${SERVICE_KEY}` },
    status: 401,
  },
  {
    name: 'service key in the query string',
    ...internalUse({}),
    as: 'none',
    path: `/trpc/internal.credits.use?x-service-key=${SERVICE_KEY}`,
    status: 401,
  },
  {
    name: 'service key as a bearer token',
    ...internalUse({}),
    as: undefined,
    headers: { authorization: `Bearer ${SERVICE_KEY}` },
    status: 401,
  },
  { name: 'user token on an internal procedure', ...internalUse({}), as: 'user', status: 401 },
];

async function send(c: BadRequest) {
  const headers: Record<string, string> = { ...(c.headers ?? {}) };
  if (c.as === 'user') headers.authorization = `Bearer ${victimToken}`;
  if (c.as === 'service') headers['x-service-key'] = SERVICE_KEY;
  const method = c.method ?? 'POST';
  let body: string | undefined;
  if (method !== 'GET') {
    body = c.raw ?? JSON.stringify({ json: c.input });
    headers['content-type'] ??= 'application/json';
  }
  const response = await fetch(`${server.url}${c.path}`, { method, headers, body });
  const text = await response.text();
  return { status: response.status, text };
}

async function fingerprint() {
  const { rows } = await sql<{ rows: number; total: number; balances: number }>`
    select (select count(*) from credits.transactions)::int8 as rows,
           (select coalesce(sum(amount), 0) from credits.transactions)::int8 as total,
           (select coalesce(sum(balance), 0) from credits.balances)::int8 as balances`.execute(
    server.deps.db,
  );
  return rows[0];
}

describe('bad-input catalogue', () => {
  it('has at least 60 cases across transports', async () => {
    expect(CASES.length + (await jwtCases()).length).toBeGreaterThanOrEqual(60);
  });

  it('every hostile request gets a 4xx with a reason and changes nothing', async () => {
    const before = await fingerprint();
    const failures: string[] = [];
    for (const c of [...CASES, ...(await jwtCases())]) {
      const { status, text } = await send(c);
      const expected = c.status ? status === c.status : status >= 400 && status < 500;
      if (!expected || status >= 500) failures.push(`${c.name}: got ${status} ${text.slice(0, 200)}`);
      if (/at .+\.(ts|js):\d+|node_modules|select |insert |update /i.test(text))
        failures.push(`${c.name}: leaks ${text.slice(0, 200)}`);
      if (c.reason && !text.includes(c.reason))
        failures.push(`${c.name}: reason ${c.reason} missing from ${text.slice(0, 200)}`);
    }
    expect(failures).toEqual([]);
    expect(await fingerprint()).toEqual(before);
    expect((await reconcile(server.deps.db)).ok).toBe(true);
    expect(({} as Record<string, unknown>).x).toBeUndefined();
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('the victim still has exactly what they had', async () => {
    const client = server.rawClient({ authorization: `Bearer ${victimToken}` });
    expect((await client.credits.balance.query()).balance).toBe(90);
    expect(victimUsage).toMatch(/^[0-9a-f-]{36}$/);
  });
});
