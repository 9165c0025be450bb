import { randomUUID } from 'node:crypto';
import http from 'node:http';
import { base64url } from 'jose';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reconcile } from '../src/domain/audit/reconcile.ts';
import { restCaller } from './helpers/rest.ts';
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
  /** The field the answer must name (a validation message says which field is wrong). */
  field?: string;
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
const reserve = (input: Record<string, unknown>): Omit<BadRequest, 'name'> => ({
  path: '/trpc/internal.credits.reserve',
  method: 'POST',
  as: 'service',
  input: { userId: victim.id, amount: 1, appId: 'app', description: 'd', idempotencyKey: 'r', ...input },
});
const createGift = (input: Record<string, unknown>): Omit<BadRequest, 'name'> => ({
  path: '/trpc/gifts.create',
  method: 'POST',
  as: 'user',
  input: { type: 'simple', totalCredits: 5, ...input },
});
/** A superjson body for credits.use whose metadata.x is revived as `type` from the JSON value `value`. */
const useWithRevived = (value: unknown, type: unknown, at = 'x'): Omit<BadRequest, 'name'> => ({
  ...use({}),
  input: undefined,
  raw: JSON.stringify({
    json: { amount: 1, appId: 'a', description: 'd', metadata: { [at.split('.')[0]!]: value } },
    meta: { values: { [`metadata.${at}`]: [type] } },
  }),
});
const LONE = '\ud800';
const LONE_LOW = 'a\udc00b';
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
    name: 'superjson meta: a reference through a path that does not exist',
    ...use({}),
    input: undefined,
    raw: '{"json":{"amount":1,"appId":"a","description":"d"},"meta":{"referentialEqualities":{"nope.x":["amount"]}}}',
    status: 400,
    reason: 'meta: not a superjson meta',
  },
  {
    name: 'superjson meta: values that are not a map of paths',
    ...use({}),
    input: undefined,
    raw: '{"json":{"amount":1,"appId":"a","description":"d"},"meta":{"values":["map"]}}',
    status: 400,
    reason: 'meta: not a superjson meta',
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
  // lone UTF-16 surrogates: not Unicode, so neither Postgres text nor jsonb can hold them
  { name: 'description: lone surrogate', ...use({ description: LONE }), status: 400, field: 'description' },
  { name: 'appId: lone surrogate', ...use({ appId: LONE_LOW }), status: 400, field: 'appId' },
  {
    name: 'idempotency key: lone surrogate',
    ...use({ idempotencyKey: LONE }),
    status: 400,
    field: 'idempotencyKey',
  },
  {
    name: 'metadata value: lone surrogate',
    ...use({ metadata: { a: LONE } }),
    status: 400,
    field: 'metadata',
  },
  {
    name: 'metadata key: lone surrogate',
    ...use({ metadata: { [LONE_LOW]: 1 } }),
    status: 400,
    field: 'metadata',
  },
  {
    name: 'metadata nested value: lone surrogate',
    ...use({ metadata: { a: [{ b: LONE }] } }),
    status: 400,
    field: 'metadata.a.0.b',
  },
  {
    name: 'internal use: description lone surrogate',
    ...internalUse({ description: LONE }),
    status: 400,
    field: 'description',
  },
  {
    name: 'internal use: metadata lone surrogate',
    ...internalUse({ metadata: { a: LONE } }),
    status: 400,
    field: 'metadata',
  },
  {
    name: 'internal use: userId lone surrogate',
    ...internalUse({ userId: LONE }),
    status: 400,
    field: 'userId',
  },
  {
    name: 'reserve: description lone surrogate',
    ...reserve({ description: LONE }),
    status: 400,
    field: 'description',
  },
  {
    name: 'reserve: metadata lone surrogate',
    ...reserve({ metadata: { [LONE]: 'x' } }),
    status: 400,
    field: 'metadata',
  },
  {
    name: 'reserve: idempotency key lone surrogate',
    ...reserve({ idempotencyKey: LONE_LOW }),
    status: 400,
    field: 'idempotencyKey',
  },
  {
    name: 'grant: reason lone surrogate',
    path: '/trpc/internal.credits.grant',
    method: 'POST',
    as: 'service',
    input: { userId: victim.id, amount: 1, reason: LONE, idempotencyKey: 'g-lone' },
    status: 400,
    field: 'reason',
  },
  { name: 'gift: message lone surrogate', ...createGift({ message: LONE }), status: 400, field: 'message' },
  {
    name: 'gift: riddle question lone surrogate',
    ...createGift({ type: 'riddle', riddleQuestion: LONE, riddleAnswer: 'a' }),
    status: 400,
    field: 'riddleQuestion',
  },
  {
    name: 'gift: riddle answer lone surrogate',
    ...createGift({ type: 'riddle', riddleQuestion: 'q?', riddleAnswer: LONE_LOW }),
    status: 400,
    field: 'riddleAnswer',
  },
  {
    name: 'gift: idempotency key lone surrogate',
    ...createGift({ idempotencyKey: LONE }),
    status: 400,
    field: 'idempotencyKey',
  },
  {
    name: 'redeem: riddle answer lone surrogate',
    path: '/trpc/gifts.redeem',
    method: 'POST',
    as: 'user',
    input: { code: 'ABCDE-FGHJK', riddleAnswer: LONE },
    status: 400,
    field: 'riddleAnswer',
  },
  {
    name: 'purchase: successUrl lone surrogate',
    path: '/trpc/credits.purchase',
    method: 'POST',
    as: 'user',
    input: {
      packageId: '00000000-0000-4000-8000-000000000000',
      mode: 'checkout',
      successUrl: `https://a.example/${LONE}`,
    },
    status: 400,
    field: 'successUrl',
  },
  {
    name: 'package: name lone surrogate',
    path: '/trpc/internal.packages.upsert',
    method: 'POST',
    as: 'service',
    input: { name: LONE, credits: 10, priceEuroCents: 100, active: false, sortOrder: 0 },
    status: 400,
    field: 'name',
  },
  // values JSON cannot carry, revived by superjson inside metadata
  { name: 'metadata: a BigInt', ...useWithRevived('5', 'bigint'), status: 400, field: 'metadata.x' },
  {
    name: 'metadata: a Date',
    ...useWithRevived('2020-01-01T00:00:00.000Z', 'Date'),
    status: 400,
    field: 'metadata.x',
  },
  { name: 'metadata: a Map', ...useWithRevived([['k', 1]], 'map'), status: 400, field: 'metadata.x' },
  { name: 'metadata: a Set', ...useWithRevived([1, 2], 'set'), status: 400, field: 'metadata.x' },
  { name: 'metadata: a RegExp', ...useWithRevived('/a/g', 'regexp'), status: 400, field: 'metadata.x' },
  { name: 'metadata: NaN', ...useWithRevived('NaN', 'number'), status: 400, field: 'metadata.x' },
  { name: 'metadata: Infinity', ...useWithRevived('Infinity', 'number'), status: 400, field: 'metadata.x' },
  { name: 'metadata: -Infinity', ...useWithRevived('-Infinity', 'number'), status: 400, field: 'metadata.x' },
  {
    name: 'metadata: undefined in an array',
    ...useWithRevived([1, null, 3], 'undefined', 'x.1'),
    status: 400,
    field: 'metadata.x.1',
  },
  {
    name: 'metadata: a BigInt on internal use',
    ...internalUse({}),
    input: undefined,
    raw: JSON.stringify({
      json: { userId: victim.id, amount: 1, appId: 'a', description: 'd', metadata: { n: '7' } },
      meta: { values: { 'metadata.n': ['bigint'] } },
    }),
    status: 400,
    field: 'metadata.n',
  },
  // Events out (issue 16)
  ...(
    [
      ['webhook: NUL in the url', { url: 'https://example.com/\u0000' }, 'url'],
      ['webhook: not http(s)', { url: 'file:///etc/passwd' }, 'url'],
      ['webhook: credentials in the url', { url: 'https://user:pw@example.com/' }, 'url'],
      [
        'webhook: description lone surrogate',
        { url: 'https://example.com/', description: LONE },
        'description',
      ],
      ['webhook: unknown event type', { url: 'https://example.com/', events: ['balance.lo'] }, 'events.0'],
      ['webhook: empty events', { url: 'https://example.com/', events: [] }, 'events'],
    ] as const
  ).map(([name, input, field]) => ({
    name,
    path: '/trpc/internal.webhooks.create',
    method: 'POST' as const,
    as: 'service' as const,
    input,
    status: 400,
    field,
  })),
  {
    name: 'setAlerts: negative threshold',
    path: '/trpc/credits.setAlerts',
    method: 'POST',
    as: 'user',
    input: { lowBalanceThreshold: -1 },
    status: 400,
    field: 'lowBalanceThreshold',
  },
  {
    name: 'setAlerts: fractional threshold',
    path: '/trpc/internal.credits.setAlerts',
    method: 'POST',
    as: 'service',
    input: { userId: 'someone', lowBalanceThreshold: 0.5 },
    status: 400,
    field: 'lowBalanceThreshold',
  },
  {
    name: 'replay: not a uuid',
    path: '/trpc/internal.webhooks.replay',
    method: 'POST',
    as: 'service',
    input: { eventId: "1' or '1'='1" },
    status: 400,
    field: 'eventId',
  },
  {
    name: 'REST events: NUL in the cursor',
    path: '/api/v1/internal/events?after=%00',
    method: 'GET',
    as: 'service',
    status: 400,
    field: 'after',
  },
  // NUL and friends in path and query parameters that reach SQL
  { name: 'gift page: NUL in the code', path: '/g/%00', method: 'GET', status: 404 },
  { name: 'gift page: NUL among letters', path: '/g/ABCDE%00FGHJK', method: 'GET', status: 404 },
  { name: 'gift page: encoded lone surrogate', path: '/g/%ED%A0%80', method: 'GET' },
  { name: 'gift page: control characters', path: '/g/%01%1F%7F', method: 'GET', status: 404 },
  {
    name: 'REST gift info: NUL in the code',
    path: '/api/v1/gifts/%00',
    method: 'GET',
    status: 404,
    reason: 'GIFT_NOT_FOUND',
  },
  {
    name: 'REST redeem: NUL in the code',
    path: '/api/v1/gifts/%00/redeem',
    method: 'POST',
    as: 'user',
    input: undefined,
    raw: '{}',
    status: 404,
    reason: 'GIFT_NOT_FOUND',
  },
  {
    name: 'REST cancel: NUL in the id',
    path: '/api/v1/gifts/%00',
    method: 'DELETE',
    as: 'user',
    status: 400,
    field: 'id',
  },
  {
    name: 'REST internal balance: NUL in the userId',
    path: '/api/v1/internal/credits/balance/%00',
    method: 'GET',
    as: 'service',
    status: 400,
    field: 'userId',
  },
  {
    name: 'REST guild balance: NUL in the guildId',
    path: '/api/v1/credits/guild/%00/balance',
    method: 'GET',
    as: 'user',
    status: 400,
    field: 'guildId',
  },
  {
    name: 'REST member limits: NUL in the userId',
    path: '/api/v1/credits/guild/g1/members/%00/limits',
    method: 'GET',
    as: 'user',
    status: 400,
    field: 'userId',
  },
  {
    name: 'REST purchase status: NUL in the id',
    path: '/api/v1/credits/purchase/%00',
    method: 'GET',
    as: 'user',
    status: 400,
    field: 'purchaseId',
  },
  {
    name: 'REST transactions: NUL in the cursor',
    path: '/api/v1/credits/transactions?cursor=%00',
    method: 'GET',
    as: 'user',
    status: 400,
    field: 'cursor',
  },
  {
    name: 'REST guild transactions: NUL in the cursor',
    path: '/api/v1/credits/guild/g1/transactions?cursor=%00',
    method: 'GET',
    as: 'user',
    status: 400,
    field: 'cursor',
  },
  {
    name: 'tRPC gift info: NUL in the code',
    path: `/trpc/gifts.info?input=${encodeURIComponent(JSON.stringify({ json: { code: '\u0000' } }))}`,
    method: 'GET',
    status: 404,
    reason: 'GIFT_NOT_FOUND',
  },
  {
    name: 'tRPC gift info: lone surrogate in the code',
    path: `/trpc/gifts.info?input=${encodeURIComponent(JSON.stringify({ json: { code: LONE } }))}`,
    method: 'GET',
    status: 404,
    reason: 'GIFT_NOT_FOUND',
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
  it('has at least 100 cases across transports', async () => {
    expect(CASES.length + (await jwtCases()).length).toBeGreaterThanOrEqual(100);
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
      if (
        c.field &&
        !(text.includes('VALIDATION') && (text.includes(`${c.field}:`) || text.includes(`${c.field}.`)))
      )
        failures.push(`${c.name}: no VALIDATION naming ${c.field} in ${text.slice(0, 300)}`);
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

describe('methods /trpc does not answer', () => {
  /** Over a raw socket: fetch refuses to send TRACE at all. */
  function request(method: string, path: string) {
    return new Promise<{ status: number; allow: unknown; body: string }>((resolve, reject) => {
      const url = new URL(path, server.url);
      const req = http.request(
        url,
        { method, headers: { authorization: `Bearer ${victimToken}` } },
        (res) => {
          let body = '';
          res.on('data', (chunk) => {
            body += chunk;
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, allow: res.headers.allow, body }));
        },
      );
      req.on('error', reject);
      req.end();
    });
  }

  it('TRACE, PUT, DELETE and PATCH answer 405 naming what is supported, never a 500', async () => {
    for (const method of ['TRACE', 'PUT', 'DELETE', 'PATCH']) {
      for (const path of ['/trpc/credits.balance', '/trpc/credits.balance,credits.use?batch=1']) {
        const answer = await request(method, path);
        expect(answer.status, `${method} ${path}`).toBe(405);
        expect(answer.allow).toBe('GET, HEAD, POST');
        expect(JSON.parse(answer.body).error.reason).toBe('METHOD_NOT_SUPPORTED');
      }
    }
    expect((await request('GET', '/trpc/credits.balance')).status).toBe(200);
  });
});

describe('useBatch: one bad item fails alone, always', () => {
  it('each malformed item gets VALIDATION naming its field; the good items are applied', async () => {
    const payer = await server.fundedUser(100);
    const before = await fingerprint();
    const good = (key: string, extra: Record<string, unknown> = {}) => ({
      userId: payer.id,
      amount: 1,
      appId: 'meter',
      description: 'call',
      idempotencyKey: key,
      ...extra,
    });
    const bad: [string, unknown, string][] = [
      ['lone surrogate in description', good('b1', { description: LONE }), 'description'],
      ['lone surrogate in appId', good('b2', { appId: LONE_LOW }), 'appId'],
      ['lone surrogate in userId', good('b3', { userId: `u${LONE}` }), 'userId'],
      ['lone surrogate in a metadata value', good('b4', { metadata: { a: LONE } }), 'metadata.a'],
      ['lone surrogate in a metadata key', good('b5', { metadata: { [LONE_LOW]: 1 } }), 'metadata'],
      ['a BigInt in metadata', good('b6', { metadata: { n: 5n } }), 'metadata.n'],
      ['a Date in metadata', good('b7', { metadata: { at: new Date(0) } }), 'metadata.at'],
      ['a Map in metadata', good('b8', { metadata: { m: new Map([['k', 1]]) } }), 'metadata.m'],
      ['a Set in metadata', good('b9', { metadata: { s: new Set([1]) } }), 'metadata.s'],
      ['NaN in metadata', good('b10', { metadata: { x: Number.NaN } }), 'metadata.x'],
      ['Infinity in metadata', good('b11', { metadata: { x: Number.POSITIVE_INFINITY } }), 'metadata.x'],
      [
        'undefined in a metadata array',
        good('b12', { metadata: { list: [1, undefined, 3] } }),
        'metadata.list.1',
      ],
      ['a Date as metadata', good('b13', { metadata: new Date(0) }), 'metadata'],
      ['a BigInt as the amount', good('b14', { amount: 5n }), 'amount'],
      ['a dot-segment guildId', good('b15', { guildId: '..' }), 'guildId'],
      ['an idempotency key with a lone surrogate', good(`k${LONE}`), 'idempotencyKey'],
      ['NUL in the description', good('b17', { description: 'a\u0000b' }), 'description'],
    ];
    const shapeless: unknown[] = [null, 42, 'item', [good('b18')], new Map([['userId', payer.id]])];
    const items = [
      good('ok-1'),
      ...bad.map(([, item]) => item),
      ...shapeless,
      good('ok-2', { metadata: { fine: ['x', 1, true, null, { deep: '😀' }] } }),
    ];

    const { results } = await server.internalClient().internal.credits.useBatch.mutate({ items });

    expect(results).toHaveLength(items.length);
    expect(results[0]).toMatchObject({ idempotencyKey: 'ok-1', ok: true, balance: 99 });
    bad.forEach(([name, , field], i) => {
      const result = results[i + 1]!;
      expect(result.ok, name).toBe(false);
      if (result.ok) return;
      expect(result.error.reason, name).toBe('VALIDATION');
      expect(result.error.message, name).toMatch(new RegExp(`(^|[ ;])${field.replace(/\./g, '\\.')}[:.]`));
    });
    for (let i = 0; i < shapeless.length; i++) {
      expect(results[bad.length + 1 + i]).toMatchObject({ ok: false, error: { reason: 'VALIDATION' } });
    }
    expect(results.at(-1)).toMatchObject({ idempotencyKey: 'ok-2', ok: true, balance: 98 });

    // Exactly the two good items moved credits.
    const after = await fingerprint();
    expect(after!.rows).toBe(before!.rows + 2);
    expect(after!.total).toBe(before!.total - 2);
    expect(await server.internalClient().internal.credits.balance.query({ userId: payer.id })).toMatchObject({
      balance: 98,
      totalSpent: 2,
    });
  });

  it('only a malformed envelope refuses the whole call', async () => {
    const internal = server.internalClient().internal.credits;
    const envelopes: unknown[] = [
      { items: 'nope' },
      { items: {} },
      { items: [] },
      { items: Array.from({ length: 1001 }, () => null) },
      { items: [null], extra: true },
      null,
    ];
    for (const input of envelopes) {
      // biome-ignore lint/suspicious/noExplicitAny: deliberately malformed input
      const error = await internal.useBatch.mutate(input as any).then(
        () => null,
        (e: { data?: { httpStatus?: number; reason?: string } }) => e,
      );
      expect(error?.data, JSON.stringify(input)?.slice(0, 80)).toMatchObject({
        httpStatus: 400,
        reason: 'VALIDATION',
      });
    }
  });
});

const MAX_SAFE = Number.MAX_SAFE_INTEGER;

describe('totals near 2^53 − 1', () => {
  let near: TestServer;
  beforeAll(async () => {
    near = await startTestServer({ MEMBERSHIP_CACHE_SECONDS: '0' });
  });
  afterAll(async () => {
    await near.close();
  });

  async function totalsOf(userId: string) {
    return near.deps.db
      .selectFrom('credits.balances')
      .select(['balance', 'total_earned', 'total_spent'])
      .where('user_id', '=', userId)
      .executeTakeFirstOrThrow();
  }

  it('a grant that would push a balance past 2^53 − 1 is refused with BALANCE_LIMIT_EXCEEDED', async () => {
    // A consistent account holding MAX − 10^6: one ledger row, its balance and its lot (what 9,007 large
    // grants make).
    const rich = newUser();
    const start = MAX_SAFE - 1_000_000;
    await sql`insert into credits.transactions (user_id, type, amount, balance_before, balance_after, available_after,
                description, idempotency_key)
              values (${rich.id}, 'grant', ${start}::int8, 0, ${start}::int8, ${start}::int8, 'planted', 'planted')`.execute(
      near.deps.db,
    );
    await sql`insert into credits.balances (user_id, balance, total_earned) values (${rich.id}, ${start}::int8, ${start}::int8)`.execute(
      near.deps.db,
    );
    await sql`insert into credits.lots (account_kind, account_id, source, category, priority, amount, remaining, opening)
              values ('user', ${rich.id}, 'grant', 'promotional', 10, ${start}::int8, ${start}::int8, true)`.execute(
      near.deps.db,
    );
    const internal = near.internalClient().internal.credits;
    for (const amount of [1_000_001, 1_000_000_000_000]) {
      const refused = await internal.grant
        .mutate({ userId: rich.id, amount, reason: 'more', idempotencyKey: `more-${amount}` })
        .then(
          () => null,
          (e: { data?: unknown; message: string }) => e,
        );
      expect(refused?.data).toMatchObject({ httpStatus: 412, reason: 'BALANCE_LIMIT_EXCEEDED' });
      expect(refused?.message).toContain(String(MAX_SAFE));
    }
    // Over REST too, with the documented status and body.
    const { call } = await restCaller(near);
    const rest = await call('POST /api/v1/internal/credits/grant', {
      serviceKey: SERVICE_KEY,
      body: { userId: rich.id, amount: 1_000_001, reason: 'more', idempotencyKey: 'more-rest' },
    });
    expect(rest.status).toBe(412);
    expect(rest.body.error.reason).toBe('BALANCE_LIMIT_EXCEEDED');
    expect(await totalsOf(rich.id)).toEqual({ balance: start, total_earned: start, total_spent: 0 });
    expect((await internal.balance.query({ userId: rich.id })).balance).toBe(start);
    expect((await reconcile(near.deps.db)).ok).toBe(true);
  });

  it('credits that would push total earned past 2^53 − 1 are refused: grants and gift redemptions', async () => {
    const internal = near.internalClient().internal.credits;
    const veteran = await near.fundedUser(100);
    // A long life of earning and spending: what the totals say, while balance = Σ ledger stays 100.
    await sql`update credits.balances set total_earned = ${MAX_SAFE - 5}::int8, total_spent = ${MAX_SAFE - 105}::int8
               where user_id = ${veteran.id}`.execute(near.deps.db);

    const refused = await internal.grant
      .mutate({ userId: veteran.id, amount: 6, reason: 'bonus', idempotencyKey: 'bonus-6' })
      .then(
        () => null,
        (e: { data?: unknown }) => e,
      );
    expect(refused?.data).toMatchObject({ httpStatus: 412, reason: 'BALANCE_LIMIT_EXCEEDED' });

    // A gift to them is refused the same way and stays claimable.
    const giver = await near.fundedUser(10);
    const gift = await (await near.userClient(giver)).gifts.create.mutate({
      type: 'simple',
      totalCredits: 10,
    });
    const redeem = await (await near.userClient(veteran)).gifts.redeem.mutate({ code: gift.code }).then(
      () => null,
      (e: { data?: unknown }) => e,
    );
    expect(redeem?.data).toMatchObject({ httpStatus: 412, reason: 'BALANCE_LIMIT_EXCEEDED' });
    expect(await totalsOf(veteran.id)).toEqual({
      balance: 100,
      total_earned: MAX_SAFE - 5,
      total_spent: MAX_SAFE - 105,
    });
    const other = await near.userClient();
    expect((await other.gifts.redeem.mutate({ code: gift.code })).creditsReceived).toBe(10);

    // Up to the limit exactly is fine, and the account stays readable.
    await internal.grant.mutate({
      userId: veteran.id,
      amount: 5,
      reason: 'bonus',
      idempotencyKey: 'bonus-5',
    });
    expect(await internal.balance.query({ userId: veteran.id })).toMatchObject({
      balance: 105,
      totalEarned: MAX_SAFE,
      totalSpent: MAX_SAFE - 105,
    });
    expect((await reconcile(near.deps.db)).ok).toBe(true);
  });

  it('funding that would push a pool total past 2^53 − 1 is refused with POOL_BALANCE_LIMIT', async () => {
    const guildId = `guild-${randomUUID()}`;
    await near.internalClient().internal.guildPool.init.mutate({ guildId });
    await sql`update credits.guild_pools set total_funded = ${MAX_SAFE - 5}::int8, total_spent = ${MAX_SAFE - 5}::int8
               where organization_id = ${guildId}`.execute(near.deps.db);
    const owner = await near.fundedUser(100);
    near.auth.setRole(guildId, owner.id, 'owner');
    const client = await near.userClient(owner);
    const refused = await client.guild.fund.mutate({ guildId, amount: 6 }).then(
      () => null,
      (e: { data?: unknown }) => e,
    );
    expect(refused?.data).toMatchObject({ httpStatus: 412, reason: 'POOL_BALANCE_LIMIT' });
    expect((await near.internalClient().internal.credits.balance.query({ userId: owner.id })).balance).toBe(
      100,
    );
    await client.guild.fund.mutate({ guildId, amount: 5 });
    expect(await client.guild.balance.query({ guildId })).toMatchObject({
      balance: 5,
      totalFunded: MAX_SAFE,
    });
    expect((await reconcile(near.deps.db)).ok).toBe(true);
  });
});
