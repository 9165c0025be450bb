import { base64url } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createJwtVerifier, InvalidTokenError, KeySetUnavailableError } from '../src/auth/jwt.ts';
import { createServiceKeyVerifier } from '../src/auth/service-key.ts';
import { ADMIN_ENV } from './helpers/admin.ts';
import { FlakyJwks, TestAuthServer } from './helpers/auth-server.ts';
import { newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer({
    MANA_CORE_SERVICE_KEY: `old-key-that-is-being-rotated-out-000,${SERVICE_KEY}`,
  });
});
afterAll(async () => {
  await server.close();
});

async function statusWithToken(token: string | undefined) {
  const response = await fetch(`${server.url}/trpc/credits.balance`, {
    headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
  });
  const body = (await response.json()) as { error?: { json: { data: { reason: string } } } };
  return { status: response.status, reason: body.error?.json.data.reason };
}

describe('user tokens', () => {
  const user = newUser();

  it('accepts a valid EdDSA, ES256 and RS256 token', async () => {
    for (const alg of ['EdDSA', 'ES256', 'RS256'] as const) {
      expect((await statusWithToken(await server.auth.sign(user, { alg }))).status).toBe(200);
    }
  });

  it('refuses a missing token', async () => {
    expect(await statusWithToken(undefined)).toEqual({ status: 401, reason: 'UNAUTHORIZED' });
  });

  it('refuses an expired token', async () => {
    const token = await server.auth.sign(user, { expiresIn: Math.floor(Date.now() / 1000) - 120 });
    expect((await statusWithToken(token)).status).toBe(401);
  });

  it('refuses a token without exp', async () => {
    expect((await statusWithToken(await server.auth.sign(user, { noExp: true }))).status).toBe(401);
  });

  it('refuses a token that is not valid yet', async () => {
    const token = await server.auth.sign(user, { notBefore: Math.floor(Date.now() / 1000) + 3600 });
    expect((await statusWithToken(token)).status).toBe(401);
  });

  it('refuses the wrong audience and the wrong issuer', async () => {
    expect((await statusWithToken(await server.auth.sign(user, { audience: 'other-app' }))).status).toBe(401);
    expect(
      (await statusWithToken(await server.auth.sign(user, { issuer: 'https://evil.test' }))).status,
    ).toBe(401);
  });

  it('refuses alg none', async () => {
    const header = base64url.encode(JSON.stringify({ alg: 'none', typ: 'JWT' }));
    const now = Math.floor(Date.now() / 1000);
    const payload = base64url.encode(
      JSON.stringify({ sub: user.id, iss: server.auth.issuer, aud: 'manacore', exp: now + 600, iat: now }),
    );
    expect((await statusWithToken(`${header}.${payload}.`)).status).toBe(401);
  });

  it('refuses an unknown kid', async () => {
    expect((await statusWithToken(await server.auth.sign(user, { kid: 'no-such-key' }))).status).toBe(401);
  });

  it('refuses a token signed by another key under a known kid', async () => {
    expect((await statusWithToken(await server.auth.sign(user, { rogueKey: true }))).status).toBe(401);
  });

  it('refuses garbage and a token with a tampered payload', async () => {
    expect((await statusWithToken('not.a.jwt')).status).toBe(401);
    const [h, , s] = (await server.auth.sign(user)).split('.');
    const forged = base64url.encode(JSON.stringify({ sub: 'someone-else', exp: 9999999999 }));
    expect((await statusWithToken(`${h}.${forged}.${s}`)).status).toBe(401);
  });

  it('refuses a subject that is no usable id (NUL, control characters, a lone surrogate) with 401', async () => {
    for (const id of ['a\u0000b', 'a\nb', 'x\ud800', 'x'.repeat(201)]) {
      const token = await server.auth.sign({ ...user, id });
      expect(await statusWithToken(token), JSON.stringify(id)).toEqual({
        status: 401,
        reason: 'UNAUTHORIZED',
      });
    }
  });

  it('a name or email claim that cannot be stored counts as absent, never a 500', async () => {
    const creator = await server.fundedUser(10);
    const token = await server.auth.sign(
      creator,
      {},
      { name: 'Bad\u0000Name', email: 'x\ud800@example.com' },
    );
    const client = server.rawClient({ authorization: `Bearer ${token}` });
    const gift = await client.gifts.create.mutate({ type: 'simple', totalCredits: 10 });
    expect((await client.gifts.info.query({ code: gift.code })).creatorName).toBeNull();
  });

  it('a user token does not open internal procedures', async () => {
    const token = await server.auth.sign(user);
    const client = server.rawClient({ authorization: `Bearer ${token}` });
    await expect(client.internal.credits.balance.query({ userId: user.id })).rejects.toMatchObject({
      data: { code: 'UNAUTHORIZED' },
    });
  });
});

describe('service keys', () => {
  const call = (headers: Record<string, string>) =>
    server.rawClient(headers).internal.credits.balance.query({ userId: 'u-1' });

  it('accepts every configured key (rotation)', async () => {
    await expect(call({ 'x-service-key': SERVICE_KEY })).resolves.toMatchObject({ balance: 0 });
    await expect(call({ 'x-service-key': 'old-key-that-is-being-rotated-out-000' })).resolves.toMatchObject({
      balance: 0,
    });
  });

  it.each([
    ['missing', {}],
    ['wrong', { 'x-service-key': 'wrong-key-wrong-key-wrong-key-wrong' }],
    ['a prefix of the real one', { 'x-service-key': SERVICE_KEY.slice(0, 10) }],
    ['the real one plus a character', { 'x-service-key': `${SERVICE_KEY}x` }],
    ['sent as a bearer token', { authorization: `Bearer ${SERVICE_KEY}` }],
  ])('refuses a key that is %s', async (_label, headers) => {
    await expect(call(headers as Record<string, string>)).rejects.toMatchObject({
      data: { code: 'UNAUTHORIZED', httpStatus: 401 },
    });
  });

  it('refuses a key in the query string', async () => {
    const input = encodeURIComponent(JSON.stringify({ json: { userId: 'u-1' } }));
    const response = await fetch(
      `${server.url}/trpc/internal.credits.balance?input=${input}&x-service-key=${SERVICE_KEY}`,
    );
    expect(response.status).toBe(401);
  });

  it('the verifier compares against all keys and refuses empty input', () => {
    const verify = createServiceKeyVerifier(['a'.repeat(32), 'b'.repeat(32)]);
    expect(verify('b'.repeat(32))).toBe(true);
    expect(verify('')).toBe(false);
    expect(verify(undefined)).toBe(false);
    expect(createServiceKeyVerifier([])('anything')).toBe(false);
  });
});

describe('errors and request ids', () => {
  it('echoes a sane x-request-id and puts it in error data', async () => {
    const response = await fetch(`${server.url}/trpc/credits.balance`, {
      headers: { 'x-request-id': 'req-abc.123' },
    });
    expect(response.headers.get('x-request-id')).toBe('req-abc.123');
    const body = (await response.json()) as { error: { json: { data: { requestId: string } } } };
    expect(body.error.json.data.requestId).toBe('req-abc.123');
  });

  it('replaces an unsafe x-request-id', async () => {
    const response = await fetch(`${server.url}/health`, {
      headers: { 'x-request-id': 'bad id\twith spaces' },
    });
    expect(response.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('invalid JSON is a 400 without internals', async () => {
    const response = await fetch(`${server.url}/trpc/internal.credits.use`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-service-key': SERVICE_KEY },
      body: '{"json": {',
    });
    expect(response.status).toBe(400);
    expect(await response.text()).not.toMatch(/at .*\.(ts|js):\d+/);
  });

  it('a body over the limit is a 413', async () => {
    const response = await fetch(`${server.url}/trpc/credits.use`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ json: { pad: 'x'.repeat(2 * 1024 * 1024) } }),
    });
    expect(response.status).toBe(413);
  });

  it('health and readiness answer', async () => {
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
    const ready = await fetch(`${server.url}/ready`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ status: 'ready' });
  });
});

describe('a key-set server that answers but fails is an outage (503), not a bad token (401)', () => {
  // Found by a security review: jose reports a key set it could not use (non-200, redirect, not JSON, not a key
  // set) as a JOSEError, which was mapped to 401 "Invalid or expired token": clients sign users out on a 401.
  let auth: TestAuthServer;
  let jwks: FlakyJwks;
  let server: TestServer;
  const user = newUser({ role: 'admin' });

  beforeAll(async () => {
    auth = await TestAuthServer.start();
    jwks = await FlakyJwks.start(auth);
    server = await startTestServer({ ...ADMIN_ENV, JWKS_URL: jwks.url, JWT_ISSUER: auth.issuer });
  });
  afterAll(async () => {
    await server?.close();
    await jwks?.close();
    await auth?.close();
  });

  it('verifier: a 5xx, a redirect or a non-JSON/non-key-set body from the JWKS URL is KeySetUnavailableError', async () => {
    const token = await auth.sign(user);
    const outcomes: Record<string, string> = {};
    for (const mode of ['500', '502-html', 'garbage', 'redirect', 'not-a-key-set'] as const) {
      jwks.mode = mode;
      // A fresh verifier per mode: nothing cached, as right after a start or once the 10-minute cache ran out.
      const verify = createJwtVerifier({ jwksUrl: jwks.url, issuer: auth.issuer, audience: auth.audience });
      try {
        await verify(token);
        outcomes[mode] = 'accepted';
      } catch (error) {
        outcomes[mode] =
          error instanceof KeySetUnavailableError
            ? 'unavailable'
            : error instanceof InvalidTokenError
              ? 'invalid-token'
              : String(error);
      }
    }
    jwks.mode = 'ok';
    // Control: a key set that cannot be reached at all (connection refused) is already mapped right.
    const refused = createJwtVerifier({
      jwksUrl: 'http://127.0.0.1:1/jwks',
      issuer: auth.issuer,
      audience: auth.audience,
    });
    outcomes.refused = await refused(token).then(
      () => 'accepted',
      (error) => (error instanceof KeySetUnavailableError ? 'unavailable' : 'invalid-token'),
    );
    expect(outcomes).toEqual({
      refused: 'unavailable',
      '500': 'unavailable',
      '502-html': 'unavailable',
      garbage: 'unavailable',
      redirect: 'unavailable',
      'not-a-key-set': 'unavailable',
    });
  });

  it('tRPC and REST: a valid token while the JWKS answers 502 gets 503 SERVICE_UNAVAILABLE, not 401', async () => {
    const token = await auth.sign(user);
    jwks.mode = '502-html';
    try {
      // A fresh server: its verifier has no key set cached yet (a restart during the auth service's outage).
      const trpc = await fetch(`${server.url}/trpc/credits.balance`, {
        headers: { authorization: `Bearer ${token}` },
      });
      const trpcBody = (await trpc.json()) as {
        error: { json: { message: string; data: { reason: string } } };
      };
      const rest = await fetch(`${server.url}/api/v1/credits/balance`, {
        headers: { authorization: `Bearer ${token}` },
      });
      const restBody = (await rest.json()) as { error: { reason: string; message: string } };
      expect({ trpc: trpc.status, rest: rest.status }).toEqual({ trpc: 503, rest: 503 });
      expect(trpcBody.error.json.data.reason).toBe('SERVICE_UNAVAILABLE');
      expect(restBody.error.reason).toBe('SERVICE_UNAVAILABLE');
    } finally {
      jwks.mode = 'ok';
    }
  });

  it('console: an admin JWT while the JWKS answers 500 is a 503 (try again), not 401 "Not accepted"', async () => {
    const token = await auth.sign(user);
    jwks.mode = '500';
    try {
      const call = () =>
        server.app.inject({ method: 'GET', url: '/admin/', headers: { authorization: `Bearer ${token}` } });
      const failing = await call();
      jwks.mode = 'ok';
      // Control: the same token, once the key set answers, opens the console.
      const healthy = await call();
      expect({
        failing: [failing.statusCode, failing.json().error?.reason],
        healthy: healthy.statusCode,
      }).toEqual({ failing: [503, 'KEY_SET_UNAVAILABLE'], healthy: 200 });
    } finally {
      jwks.mode = 'ok';
    }
  });
});
