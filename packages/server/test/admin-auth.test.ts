import type { LightMyRequestResponse } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, configFrom } from '../src/config.ts';
import { SESSION_COOKIE, sessionOf } from '../src/http/admin/auth.ts';
import { PUBLIC_ADMIN_ROUTES, safeNext } from '../src/http/admin/plugin.ts';
import { SessionSigner } from '../src/http/admin/session.ts';
import {
  ADMIN_ENV,
  ADMIN_SESSION_SECRET,
  ADMIN_TOKEN,
  adminPathOf,
  adminRoutesOf,
  cookieFrom,
  form,
  hiddenField,
} from './helpers/admin.ts';
import { newUser, startTestServer, type TestServer } from './helpers/server.ts';

const FORM = { 'content-type': 'application/x-www-form-urlencoded' };

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer({ ...ADMIN_ENV });
});
afterAll(async () => {
  await server?.close();
});

async function signIn(credential: string, name?: string) {
  const response = await server.app.inject({
    method: 'POST',
    url: '/admin/login',
    headers: FORM,
    payload: form({ credential, name, next: '/admin' }),
  });
  return { response, cookie: cookieFrom(response.headers['set-cookie'], SESSION_COOKIE) };
}

const withCookie = (cookie: string | undefined) => ({ cookie: `${SESSION_COOKIE}=${cookie ?? ''}` });

/** Refused without showing anything of the console: 401 (scripts) or a redirect to the sign-in page. */
function expectRefused(response: LightMyRequestResponse, label: string) {
  if (response.statusCode === 303) {
    expect(response.headers.location, label).toMatch(/^\/admin\/login\?next=/);
  } else {
    expect(response.statusCode, label).toBe(401);
    if (response.body) expect(response.json().error.reason, label).toBe('ADMIN_AUTH_REQUIRED');
  }
  expect(response.body, label).not.toMatch(/Find a user|ledger|uPlot/i);
}

describe('who may reach /admin', () => {
  it('every route of the console but the sign-in page and its stylesheet refuses a caller without credentials', async () => {
    const routes = adminRoutesOf(server.app);
    expect(routes.length).toBeGreaterThan(4);
    let checked = 0;
    for (const route of routes) {
      if (PUBLIC_ADMIN_ROUTES.has(route.url)) continue;
      for (const method of route.methods.filter((m) => m !== 'OPTIONS')) {
        const url = adminPathOf(route.url);
        const label = `${method} ${url}`;
        for (const headers of [
          {},
          { accept: 'text/html' },
          { authorization: 'Bearer wrong-token' },
          { authorization: `Basic ${Buffer.from(`admin:${ADMIN_TOKEN}`).toString('base64')}` },
          withCookie('forged.cookie'),
        ]) {
          const response = await server.app.inject({
            method: method as 'GET',
            url,
            headers: { ...headers, ...(method === 'POST' ? FORM : {}) },
            payload: method === 'POST' ? form({ reason: 'x', amount: 1 }) : undefined,
          });
          expectRefused(response, `${label} ${JSON.stringify(headers)}`);
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(20);
    // The public ones: the sign-in page and its stylesheet only.
    expect([...PUBLIC_ADMIN_ROUTES].sort()).toEqual(['/admin/assets/console.css', '/admin/login']);
  });

  it('a browser without a session is sent to the sign-in page and back where it was going', async () => {
    const response = await server.app.inject({
      method: 'GET',
      url: '/admin?tab=audit&page=2',
      headers: { accept: 'text/html' },
    });
    expect(response.statusCode).toBe(303);
    expect(response.headers.location).toBe(
      `/admin/login?next=${encodeURIComponent('/admin?tab=audit&page=2')}`,
    );
    const login = await server.app.inject({ method: 'GET', url: response.headers.location as string });
    expect(login.statusCode).toBe(200);
    expect(hiddenField(login.body, 'next')).toBe('/admin?tab=audit&page=2');
    expect(login.headers['content-security-policy']).toContain("script-src 'self'");
    // Only console paths are followed after sign-in.
    for (const evil of [
      'https://evil.example',
      '//evil.example',
      '/admin\\@evil',
      '/administrator',
      'javascript:x',
    ]) {
      expect(safeNext(evil)).toBe('/admin');
    }
  });

  it('ADMIN_TOKEN: sign-in sets an HttpOnly, SameSite=Strict session cookie scoped to /admin; the console opens', async () => {
    const { response, cookie } = await signIn(ADMIN_TOKEN, 'alice');
    expect(response.statusCode).toBe(303);
    expect(response.headers.location).toBe('/admin');
    const setCookie = String(response.headers['set-cookie']);
    expect(setCookie).toMatch(/HttpOnly/);
    expect(setCookie).toMatch(/SameSite=Strict/);
    expect(setCookie).toMatch(/Path=\/admin/);
    expect(setCookie).not.toMatch(/Secure/); // plain http here; https adds Secure (below)
    expect(setCookie).not.toContain(ADMIN_TOKEN);
    const page = await server.app.inject({ method: 'GET', url: '/admin', headers: withCookie(cookie) });
    expect(page.statusCode).toBe(200);
    expect(page.body).toContain('Find a user or guild');
    expect(page.body).toContain('alice (admin token)');
    expect(page.headers['content-security-policy']).toMatch(/default-src 'none'; script-src 'self'/);
    expect(page.headers['cache-control']).toBe('no-store');
  });

  it('a next path with characters a Location header cannot carry falls back to /admin, never a 500', async () => {
    for (const next of [
      '/admin/users/\u00e9',
      '/admin\r\nset-cookie: x=1',
      '/admin/\u0000',
      '/admin/\u{1F600}',
    ]) {
      const response = await fetch(`${server.url}/admin/login`, {
        method: 'POST',
        headers: FORM,
        body: form({ credential: ADMIN_TOKEN, name: 'alice', next }),
        redirect: 'manual',
      });
      expect(response.status, JSON.stringify(next)).toBe(303);
      expect(response.headers.get('location')).toBe('/admin');
      expect(safeNext(next)).toBe('/admin');
    }
    // Encoded, the same paths are followed.
    expect(safeNext('/admin/users/%C3%A9')).toBe('/admin/users/%C3%A9');
  });

  it('over https (X-Forwarded-Proto from a trusted proxy) the cookie is Secure', async () => {
    const https = await startTestServer({ ...ADMIN_ENV, TRUST_PROXY: 'true' });
    try {
      const response = await https.app.inject({
        method: 'POST',
        url: '/admin/login',
        headers: { ...FORM, 'x-forwarded-proto': 'https' },
        payload: form({ credential: ADMIN_TOKEN }),
      });
      expect(response.statusCode).toBe(303);
      expect(String(response.headers['set-cookie'])).toMatch(/; Secure/);
    } finally {
      await https.close();
    }
  });

  it('a wrong token or a JWT without the admin role is not accepted; a JWT with it is', async () => {
    for (const credential of ['', 'nope', `${ADMIN_TOKEN}x`, ADMIN_TOKEN.slice(0, -1)]) {
      const { response, cookie } = await signIn(credential);
      expect(response.statusCode, credential).toBe(401);
      expect(cookie).toBeUndefined();
    }
    const plain = await server.auth.sign(newUser());
    const refused = await signIn(plain);
    expect(refused.response.statusCode).toBe(401);
    expect(refused.response.body).toContain('does not carry the admin role');
    expect(refused.cookie).toBeUndefined();

    const forged = await server.auth.sign(newUser({ role: 'admin' }), { rogueKey: true });
    expect((await signIn(forged)).cookie).toBeUndefined();

    const operator = newUser({ role: 'admin', name: 'Olga Operator' });
    const { response, cookie } = await signIn(await server.auth.sign(operator));
    expect(response.statusCode).toBe(303);
    const page = await server.app.inject({ method: 'GET', url: '/admin', headers: withCookie(cookie) });
    expect(page.body).toContain('Olga Operator');
  });

  it('a JWT session ends when the token does', async () => {
    const token = await server.auth.sign(newUser({ role: 'admin' }), { expiresIn: '2m' });
    const { cookie } = await signIn(token);
    const setCookie = (await signIn(token)).response.headers['set-cookie'];
    const maxAge = Number(/Max-Age=(\d+)/.exec(String(setCookie))?.[1]);
    expect(maxAge).toBeGreaterThan(60);
    expect(maxAge).toBeLessThanOrEqual(120);
    const signer = new SessionSigner(ADMIN_SESSION_SECRET);
    const session = signer.open(cookie);
    expect(session?.operator.kind).toBe('jwt');
    expect(signer.open(cookie, Date.now() / 1000 + 121)).toBeUndefined();
  });

  it('Authorization: Bearer works for scripts: the admin token, an admin JWT; a user JWT is forbidden', async () => {
    const token = await server.app.inject({
      method: 'GET',
      url: '/admin',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'x-admin-operator': 'nightly-script' },
    });
    expect(token.statusCode).toBe(200);
    expect(token.body).toContain('nightly-script (admin token)');
    const jwt = await server.auth.sign(newUser({ role: 'admin' }));
    expect(
      (await server.app.inject({ method: 'GET', url: '/admin', headers: { authorization: `Bearer ${jwt}` } }))
        .statusCode,
    ).toBe(200);
    const user = await server.auth.sign(newUser({ role: 'user' }));
    const forbidden = await server.app.inject({
      method: 'GET',
      url: '/admin',
      headers: { authorization: `Bearer ${user}` },
    });
    expect(forbidden.statusCode).toBe(403);
    expect(forbidden.json().error.reason).toBe('ADMIN_ROLE_REQUIRED');
    // A bad bearer never falls back to a valid cookie.
    const { cookie } = await signIn(ADMIN_TOKEN);
    const mixed = await server.app.inject({
      method: 'GET',
      url: '/admin',
      headers: { ...withCookie(cookie), authorization: 'Bearer wrong' },
    });
    expect(mixed.statusCode).toBe(401);
  });

  it('a tampered, re-signed or expired cookie is refused', async () => {
    const { cookie } = await signIn(ADMIN_TOKEN);
    const [payload, mac] = cookie!.split('.');
    const data = JSON.parse(Buffer.from(payload!, 'base64url').toString());
    const tampered = Buffer.from(JSON.stringify({ ...data, i: 'mallory' })).toString('base64url');
    const otherKey = new SessionSigner('another-secret-another-secret-0123456789');
    for (const value of [
      `${tampered}.${mac}`,
      `${payload}.${mac!.slice(0, -2)}AA`,
      `${payload}`,
      otherKey.seal({ operator: { kind: 'token', id: 'x', label: 'x' }, expiresAt: 2e9, sid: 's' }),
      new SessionSigner(ADMIN_SESSION_SECRET).seal({
        operator: { kind: 'jwt', id: 'x', label: 'x' },
        expiresAt: Date.now() / 1000 - 1,
        sid: 's',
      }),
    ]) {
      const response = await server.app.inject({ method: 'GET', url: '/admin', headers: withCookie(value) });
      expect(response.statusCode, value).toBe(401);
    }
  });

  it('rotating ADMIN_TOKEN ends the sessions made with the old one', () => {
    const signer = new SessionSigner(ADMIN_SESSION_SECRET);
    const value = signer.seal({
      operator: { kind: 'token', id: 'alice', label: 'alice' },
      expiresAt: Date.now() / 1000 + 600,
      sid: 'sid',
      tokenFingerprint: signer.tokenFingerprint('old-token-old-token-old-token-0123'),
    });
    const request = { headers: { cookie: `${SESSION_COOKIE}=${value}` } } as never;
    const depsWith = (token: string | undefined) =>
      ({ config: { admin: { token } } }) as unknown as Parameters<typeof sessionOf>[1];
    expect(sessionOf(request, depsWith('old-token-old-token-old-token-0123'), signer)?.operator.id).toBe(
      'alice',
    );
    expect(sessionOf(request, depsWith('new-token-new-token-new-token-0123'), signer)).toBeUndefined();
    expect(sessionOf(request, depsWith(undefined), signer)).toBeUndefined();
  });

  it('a POST with the session cookie needs its CSRF token and this origin', async () => {
    const { cookie } = await signIn(ADMIN_TOKEN);
    const page = await server.app.inject({ method: 'GET', url: '/admin', headers: withCookie(cookie) });
    const csrf = hiddenField(page.body, '_csrf');
    const post = (fields: Record<string, string>, headers: Record<string, string> = {}) =>
      server.app.inject({
        method: 'POST',
        url: '/admin/logout',
        headers: { ...withCookie(cookie), ...FORM, ...headers },
        payload: form(fields),
      });
    expect((await post({})).statusCode).toBe(403);
    expect((await post({ _csrf: 'x' })).statusCode).toBe(403);
    expect((await post({ _csrf: csrf.slice(0, -1) })).statusCode).toBe(403);
    // Another session's token is not this one's.
    const other = await signIn(ADMIN_TOKEN);
    const otherPage = await server.app.inject({
      method: 'GET',
      url: '/admin',
      headers: withCookie(other.cookie),
    });
    expect((await post({ _csrf: hiddenField(otherPage.body, '_csrf') })).statusCode).toBe(403);
    // From another origin the cookie does not even count (401).
    expect((await post({ _csrf: csrf }, { origin: 'https://evil.example' })).statusCode).toBe(401);
    expect((await post({ _csrf: csrf }, { 'sec-fetch-site': 'cross-site' })).statusCode).toBe(401);
    const out = await post({ _csrf: csrf }, { 'sec-fetch-site': 'same-origin' });
    expect(out.statusCode).toBe(303);
    expect(String(out.headers['set-cookie'])).toMatch(/mana_admin=; .*Max-Age=0/);
  });

  it('signing out ends the session for a copy of its cookie too, and only that session', async () => {
    const { cookie } = await signIn(ADMIN_TOKEN);
    const other = await signIn(ADMIN_TOKEN);
    const page = await server.app.inject({ method: 'GET', url: '/admin', headers: withCookie(cookie) });
    expect(page.statusCode).toBe(200);
    const out = await server.app.inject({
      method: 'POST',
      url: '/admin/logout',
      headers: { ...withCookie(cookie), ...FORM },
      payload: form({ _csrf: hiddenField(page.body, '_csrf') }),
    });
    expect(out.statusCode).toBe(303);
    // The browser dropped the cookie; whoever copied it before still presents it: refused, page and form alike.
    expectRefused(
      await server.app.inject({ method: 'GET', url: '/admin', headers: withCookie(cookie) }),
      'GET after sign-out',
    );
    expectRefused(
      await server.app.inject({
        method: 'POST',
        url: '/admin/logout',
        headers: { ...withCookie(cookie), ...FORM },
        payload: form({ _csrf: hiddenField(page.body, '_csrf') }),
      }),
      'POST after sign-out',
    );
    // Recorded in the database (so every instance refuses it) until the session would have expired.
    const revoked = await server.db
      .selectFrom('credits.admin_session_revocations')
      .select(['sid', 'expires_at'])
      .execute();
    expect(revoked.length).toBeGreaterThanOrEqual(1);
    for (const row of revoked) expect(row.expires_at.getTime()).toBeGreaterThan(Date.now());
    // The other sign-in of the same operator goes on.
    const still = await server.app.inject({
      method: 'GET',
      url: '/admin',
      headers: withCookie(other.cookie),
    });
    expect(still.statusCode).toBe(200);
  });

  it('the cookie does not count for requests from another origin (a sibling app reading a console page)', async () => {
    const { cookie } = await signIn(ADMIN_TOKEN);
    const status = async (headers: Record<string, string>) =>
      (
        await server.app.inject({
          method: 'GET',
          url: '/admin',
          headers: { ...withCookie(cookie), ...headers },
        })
      ).statusCode;
    expect(await status({})).toBe(200);
    expect(await status({ 'sec-fetch-site': 'same-origin', 'sec-fetch-mode': 'cors' })).toBe(200);
    // fetch() from https://app.example.test (same site, another origin): with and without Fetch Metadata.
    expect(
      await status({
        origin: 'https://app.example.test',
        'sec-fetch-site': 'same-site',
        'sec-fetch-mode': 'cors',
      }),
    ).toBe(401);
    expect(await status({ origin: 'https://app.example.test' })).toBe(401);
    expect(await status({ 'sec-fetch-site': 'same-site', 'sec-fetch-mode': 'no-cors' })).toBe(401);
    // A person following a link from a sibling site opens the page (and reads it themselves).
    expect(await status({ 'sec-fetch-site': 'same-site', 'sec-fetch-mode': 'navigate' })).toBe(200);
  });

  it('sign-in from another origin is refused (login CSRF)', async () => {
    const response = await server.app.inject({
      method: 'POST',
      url: '/admin/login',
      headers: { ...FORM, origin: 'https://evil.example' },
      payload: form({ credential: ADMIN_TOKEN }),
    });
    expect(response.statusCode).toBe(403);
    expect(cookieFrom(response.headers['set-cookie'], SESSION_COOKIE)).toBeUndefined();
  });
});

describe('console configuration', () => {
  const production = {
    NODE_ENV: 'production',
    MANA_CORE_SERVICE_KEY: 'k'.repeat(40),
    MANA_CORE_AUTH_URL: 'https://auth.example',
    BASE_URL: 'https://credits.example',
  };

  it('in production the admin token and session secret must be long; neither has a default', () => {
    expect(() => configFrom({ ...production, ADMIN_TOKEN: 'short' })).toThrow(ConfigError);
    expect(() => configFrom({ ...production, ADMIN_SESSION_SECRET: 'short' })).toThrow(
      /ADMIN_SESSION_SECRET/,
    );
    const config = configFrom(production);
    expect(config.admin).toMatchObject({ token: undefined, sessionSecret: undefined, roleClaim: 'role' });
  });

  it('production without ADMIN_SESSION_SECRET: no browser sign-in, bearer calls still work', async () => {
    const prod = await startTestServer({ ...production, ADMIN_TOKEN, ADMIN_SESSION_SECRET: undefined });
    try {
      const login = await prod.app.inject({
        method: 'POST',
        url: '/admin/login',
        headers: FORM,
        payload: form({ credential: ADMIN_TOKEN }),
      });
      expect(login.statusCode).toBe(503);
      expect(login.headers['set-cookie']).toBeUndefined();
      expect((await prod.app.inject({ method: 'GET', url: '/admin/login' })).body).toContain(
        'ADMIN_SESSION_SECRET',
      );
      const bearer = await prod.app.inject({
        method: 'GET',
        url: '/admin',
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      expect(bearer.statusCode).toBe(200);
    } finally {
      await prod.close();
    }
  });

  it('the role claim and value are configurable; an array claim counts when it holds the value', async () => {
    const custom = await startTestServer({ ADMIN_ROLE_CLAIM: 'roles', ADMIN_ROLE_VALUE: 'credits-support' });
    try {
      const status = async (claims: Record<string, unknown>) => {
        const token = await custom.auth.sign(newUser({ role: 'admin' }), {}, claims);
        return (
          await custom.app.inject({
            method: 'GET',
            url: '/admin',
            headers: { authorization: `Bearer ${token}` },
          })
        ).statusCode;
      };
      expect(await status({ roles: ['viewer', 'credits-support'] })).toBe(200);
      expect(await status({ roles: 'credits-support' })).toBe(200);
      expect(await status({ roles: ['viewer'] })).toBe(403);
      expect(await status({})).toBe(403); // role: admin alone is not the configured claim
      // No ADMIN_TOKEN configured: no token is one.
      expect(
        (
          await custom.app.inject({
            method: 'GET',
            url: '/admin',
            headers: { authorization: 'Bearer undefined' },
          })
        ).statusCode,
      ).toBe(401);
    } finally {
      await custom.close();
    }
  });
});
