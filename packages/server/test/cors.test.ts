import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.ts';
import { type Config, ConfigError, configFrom } from '../src/config.ts';
import { restRoutes } from '../src/http/rest/routes.ts';
import { startTestServer, type TestServer } from './helpers/server.ts';

const APP = 'https://app.example.test';
const OTHER_APP = 'http://localhost:5173';
const EVIL = 'https://evil.example.test';
/** What the typed client and a REST caller send. */
const REQUEST_HEADERS = 'authorization,content-type,x-request-id';

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer({ CORS_ORIGINS: `${APP}, ${OTHER_APP}` });
});
afterAll(async () => {
  await server?.close();
});

interface AppRoute {
  /** Fastify syntax, e.g. /api/v1/gifts/:id */
  url: string;
  methods: string[];
}

/**
 * Every route of the app, read from its own route tree (printRoutes), so a route added tomorrow is covered
 * without touching this file. A node's line carries the path from its parent and its methods:
 * `│   ├── /:purchaseId (GET, HEAD)`; `:code|:id` are two parameter names at the same place.
 */
function routesOf(app: FastifyInstance): AppRoute[] {
  const routes: AppRoute[] = [];
  const stack: string[] = [];
  for (const line of app.printRoutes({ commonPrefix: false }).split('\n')) {
    const node = /^((?:│ {3}| {4})*)[├└]── (\S+)(?: \(([^)]*)\))?$/.exec(line);
    if (!node) continue;
    const depth = node[1]!.length / 4;
    const url = (stack[depth - 1] ?? '') + node[2]!.split('|')[0];
    stack[depth] = url;
    stack.length = depth + 1;
    if (node[3]) routes.push({ url, methods: node[3].split(', ') });
  }
  return routes;
}

/** A concrete path for a route: each parameter filled in. */
function pathOf(url: string): string {
  if (url === '/trpc/:path') return '/trpc/credits.balance,credits.use?batch=1';
  return url.replace(/:[A-Za-z]+/g, (name) => `${name.slice(1)}-1`);
}

/** The methods a browser may ask to use on a route: tRPC's catch-all route means GET and POST. */
function browserMethodsOf(app: FastifyInstance, route: AppRoute): string[] {
  if (app.supportedMethods.every((method) => route.methods.includes(method))) return ['GET', 'HEAD', 'POST'];
  return route.methods.filter((method) => method !== 'OPTIONS');
}

function preflight(app: FastifyInstance, url: string, method: string, origin: string | undefined) {
  return app.inject({
    method: 'OPTIONS',
    url,
    headers: {
      ...(origin ? { origin } : {}),
      'access-control-request-method': method,
      'access-control-request-headers': REQUEST_HEADERS,
    },
  });
}

/** A comma-separated header as a list. */
const list = (header: string | string[] | number | undefined) => String(header ?? '').split(/,\s*/);

const corsHeaders = (response: LightMyRequestResponse) =>
  Object.keys(response.headers).filter((name) => name.startsWith('access-control-'));

function expectAllowedPreflight(response: LightMyRequestResponse, origin: string, method: string) {
  expect(response.statusCode, `${method} ${response.raw.req.url}`).toBe(204);
  expect(response.headers['access-control-allow-origin']).toBe(origin);
  expect(list(response.headers['access-control-allow-methods'])).toContain(method);
  expect(list(response.headers['access-control-allow-headers'])).toEqual(
    expect.arrayContaining(REQUEST_HEADERS.split(',')),
  );
  expect(response.headers['access-control-max-age']).toBe('7200');
  expect(response.headers['access-control-expose-headers']).toBe('x-request-id, retry-after');
  expect(response.headers['access-control-allow-credentials']).toBeUndefined();
  expect(response.headers.vary).toContain('Origin');
}

function expectRefusedPreflight(response: LightMyRequestResponse) {
  expect(response.statusCode, `${response.raw.req.url}`).toBe(403);
  expect(corsHeaders(response)).toEqual([]);
  expect(response.json().error.reason).toBe('CORS_ORIGIN_NOT_ALLOWED');
}

describe('CORS preflights', () => {
  it('the route list read from the app holds every REST route and /trpc', () => {
    const routes = routesOf(server.app);
    const pattern = (url: string) => url.replace(/:[A-Za-z]+/g, ':');
    const listed = new Set(routes.flatMap((route) => route.methods.map((m) => `${m} ${pattern(route.url)}`)));
    for (const route of restRoutes) expect(listed).toContain(`${route.method} ${pattern(route.path)}`);
    expect(listed).toContain('POST /trpc/:');
    expect(listed).toContain('GET /trpc/:');
    expect(routes.length).toBeGreaterThan(restRoutes.length);
  });

  it('every method of every route is allowed for a configured origin, and nothing more', async () => {
    const routes = routesOf(server.app).filter((route) => route.url !== '*');
    const answered = new Set(routes.flatMap((route) => browserMethodsOf(server.app, route)));
    let checked = 0;
    for (const route of routes) {
      for (const method of browserMethodsOf(server.app, route)) {
        for (const origin of [APP, OTHER_APP]) {
          const response = await preflight(server.app, pathOf(route.url), method, origin);
          expectAllowedPreflight(response, origin, method);
          expect(list(response.headers['access-control-allow-methods']).sort()).toEqual([...answered].sort());
          checked++;
        }
      }
    }
    expect([...answered].sort()).toEqual(['DELETE', 'GET', 'HEAD', 'POST', 'PUT']);
    expect(checked).toBeGreaterThan(2 * restRoutes.length);
  });

  it('a preflight from any other origin, or none, is refused with no CORS header', async () => {
    for (const route of routesOf(server.app).filter((candidate) => candidate.url !== '*')) {
      for (const method of browserMethodsOf(server.app, route)) {
        expectRefusedPreflight(await preflight(server.app, pathOf(route.url), method, EVIL));
      }
    }
    // Near misses: scheme, port, trailing slash, case, the string "null" of sandboxed frames.
    for (const origin of [
      'http://app.example.test',
      'https://app.example.test:8443',
      `${APP}/`,
      APP.toUpperCase(),
      'null',
      undefined,
    ]) {
      expectRefusedPreflight(await preflight(server.app, '/api/v1/gifts/x', 'DELETE', origin));
    }
  });

  it('the issue #21 preflights: cancel a gift, set a member limit', async () => {
    const cancel = await preflight(
      server.app,
      '/api/v1/gifts/8e0f2c7e-0000-4000-8000-000000000000',
      'DELETE',
      APP,
    );
    expectAllowedPreflight(cancel, APP, 'DELETE');
    const limits = await preflight(server.app, '/api/v1/credits/guild/g1/members/u1/limits', 'PUT', APP);
    expectAllowedPreflight(limits, APP, 'PUT');
  });

  it('tRPC batches: GET and POST with the headers the typed client sends', async () => {
    for (const method of ['GET', 'POST']) {
      const response = await server.app.inject({
        method: 'OPTIONS',
        url: '/trpc/credits.balance,credits.transactions?batch=1&input=%7B%7D',
        headers: {
          origin: APP,
          'access-control-request-method': method,
          'access-control-request-headers': 'authorization,content-type,trpc-accept',
        },
      });
      expectAllowedPreflight(response, APP, method);
      expect(String(response.headers['access-control-allow-headers'])).toContain('trpc-accept');
    }
  });

  it('the service key is not a header a browser may send', async () => {
    const response = await server.app.inject({
      method: 'OPTIONS',
      url: '/api/v1/internal/credits/use',
      headers: {
        origin: APP,
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'content-type,x-service-key,x-app-id',
      },
    });
    const allowed = list(response.headers['access-control-allow-headers']);
    expect(allowed).not.toContain('x-service-key');
    expect(allowed).not.toContain('x-app-id');
  });

  it('a preflight without Access-Control-Request-Method (or an empty one) is not a preflight: 400 saying so', async () => {
    for (const method of [undefined, '']) {
      const response = await server.app.inject({
        method: 'OPTIONS',
        url: '/api/v1/credits/balance',
        headers: {
          origin: APP,
          'x-request-id': 'req-preflight',
          ...(method === undefined ? {} : { 'access-control-request-method': method }),
        },
      });
      expect(response.statusCode).toBe(400);
      expect(response.json().error).toMatchObject({
        reason: 'INVALID_PREFLIGHT',
        requestId: 'req-preflight',
      });
      expect(response.headers['x-request-id']).toBe('req-preflight');
      expect(response.headers['access-control-allow-origin']).toBe(APP);
    }
  });
});

describe('CORS on responses', () => {
  async function get(url: string, origin: string | undefined, headers: Record<string, string> = {}) {
    return server.app.inject({ method: 'GET', url, headers: { ...(origin ? { origin } : {}), ...headers } });
  }

  it('an allowed origin can read answers, errors and X-Request-Id; others get no CORS header', async () => {
    const cases = [
      { url: '/api/v1/credits/packages', status: 200 },
      { url: '/api/v1/credits/balance', status: 401 },
      { url: '/api/v1/no-such-route', status: 404 },
      { url: '/nowhere', status: 404 },
      { url: '/trpc/credits.packages', status: 200 },
      { url: '/trpc/credits.balance', status: 401 },
    ];
    for (const { url, status } of cases) {
      const allowed = await get(url, APP, { 'x-request-id': 'req-cors-1' });
      expect(allowed.statusCode, url).toBe(status);
      expect(allowed.headers['access-control-allow-origin'], url).toBe(APP);
      expect(allowed.headers['access-control-expose-headers'], url).toBe('x-request-id, retry-after');
      expect(allowed.headers['x-request-id'], url).toBe('req-cors-1');
      expect(allowed.headers['access-control-allow-credentials'], url).toBeUndefined();
      expect(allowed.headers.vary, url).toContain('Origin');

      for (const origin of [EVIL, undefined]) {
        const other = await get(url, origin);
        expect(other.statusCode, url).toBe(status);
        expect(corsHeaders(other), url).toEqual([]);
      }
    }
  });

  it('bad JSON (a Fastify error) still carries the CORS headers', async () => {
    const response = await server.app.inject({
      method: 'POST',
      url: '/api/v1/credits/use',
      headers: { origin: APP, 'content-type': 'application/json' },
      payload: '{"amount":',
    });
    expect(response.statusCode).toBe(400);
    expect(response.headers['access-control-allow-origin']).toBe(APP);
  });

  it('a URL the router cannot read (bad percent-encoding, a 10 kB parameter): the API error shape, readable, not echoed', async () => {
    const long = 'x'.repeat(10_000);
    const cases = [
      { url: '/admin/users/%ZZ', status: 400, reason: 'BAD_URL' },
      { url: '/api/v1/gifts/a%ff', status: 400, reason: 'BAD_URL' },
      { url: '/g/%C0%80', status: 400, reason: 'BAD_URL' },
      { url: `/g/${long}`, status: 414, reason: 'URL_TOO_LONG' },
      { url: `/api/v1/gifts/${long}`, status: 414, reason: 'URL_TOO_LONG' },
    ];
    for (const { url, status, reason } of cases) {
      const response = await get(url, APP, { 'x-request-id': 'req-bad-url' });
      expect(response.statusCode, url.slice(0, 40)).toBe(status);
      expect(response.json().error).toMatchObject({ reason, requestId: 'req-bad-url' });
      expect(response.headers['x-request-id']).toBe('req-bad-url');
      expect(response.headers['access-control-allow-origin']).toBe(APP);
      expect(response.body.length).toBeLessThan(300);
      expect(corsHeaders(await get(url, EVIL))).toEqual([]);
    }
    // The OpenAPI document says so for the routes that take a path parameter.
    const document = (await get('/api/v1/openapi.json', undefined)).json();
    expect(Object.keys(document.paths['/api/v1/gifts/{code}'].get.responses)).toEqual(
      expect.arrayContaining(['400', '414']),
    );
    expect(document.paths['/api/v1/credits/balance'].get.responses['414']).toBeUndefined();
  });

  it('while migrations run, preflights pass and the 503 is readable (Retry-After exposed)', async () => {
    server.app.readiness.migrating = true;
    try {
      expectAllowedPreflight(await preflight(server.app, '/api/v1/gifts/x', 'DELETE', APP), APP, 'DELETE');
      const response = await get('/api/v1/credits/balance', APP);
      expect(response.statusCode).toBe(503);
      expect(response.headers['access-control-allow-origin']).toBe(APP);
      expect(response.headers['retry-after']).toBe('5');
    } finally {
      server.app.readiness.migrating = false;
    }
  });
});

describe('CORS settings', () => {
  /** The same database, another configuration: an app that is only injected into, never listening. */
  async function appWith(cors: Pick<Config, 'corsOrigins'> & Partial<Config>) {
    return buildApp({ ...server.deps, config: { ...server.deps.config, ...cors } }, { logger: false });
  }

  it('CORS_CREDENTIALS=true allows credentials; CORS_MAX_AGE_SECONDS sets the preflight cache', async () => {
    const app = await appWith({ corsOrigins: [APP], corsCredentials: true, corsMaxAgeSeconds: 60 });
    try {
      const response = await preflight(app, '/api/v1/gifts/x', 'DELETE', APP);
      expect(response.statusCode).toBe(204);
      expect(response.headers['access-control-allow-credentials']).toBe('true');
      expect(response.headers['access-control-max-age']).toBe('60');
      const actual = await app.inject({ method: 'GET', url: '/health', headers: { origin: APP } });
      expect(actual.headers['access-control-allow-credentials']).toBe('true');
      const other = await app.inject({ method: 'GET', url: '/health', headers: { origin: EVIL } });
      expect(corsHeaders(other)).toEqual([]);
    } finally {
      await app.close();
    }
  });

  it('CORS_ORIGINS=* allows any origin without credentials; unset allows none', async () => {
    const any = await appWith({ corsOrigins: ['*'] });
    const none = await appWith({ corsOrigins: [] });
    try {
      const response = await preflight(any, '/api/v1/credits/guild/g/members/u/limits', 'PUT', EVIL);
      expect(response.statusCode).toBe(204);
      expect(response.headers['access-control-allow-origin']).toBe('*');
      expect(response.headers['access-control-allow-credentials']).toBeUndefined();
      expectRefusedPreflight(await preflight(none, '/api/v1/gifts/x', 'DELETE', APP));
      const actual = await none.inject({ method: 'GET', url: '/health', headers: { origin: APP } });
      expect(corsHeaders(actual)).toEqual([]);
    } finally {
      await any.close();
      await none.close();
    }
  });

  it('defaults: no credentials, a two-hour preflight cache', () => {
    const config = configFrom({ CORS_ORIGINS: APP });
    expect(config.corsCredentials).toBe(false);
    expect(config.corsMaxAgeSeconds).toBe(7200);
  });

  it('refuses origins a browser never sends, and credentials with *', () => {
    const problems = (env: Record<string, string>) => {
      try {
        configFrom(env);
      } catch (error) {
        if (error instanceof ConfigError) return error.problems;
        throw error;
      }
      return [];
    };
    expect(problems({ CORS_ORIGINS: 'https://app.example/' })).toEqual([
      'CORS_ORIGINS: "https://app.example/" is not an origin (http(s)://host[:port], lower case, no path); did you mean "https://app.example"?',
    ]);
    expect(problems({ CORS_ORIGINS: 'https://App.example:443, app.example, ftp://x.example' })).toEqual([
      'CORS_ORIGINS: "https://App.example:443" is not an origin (http(s)://host[:port], lower case, no path); did you mean "https://app.example"?',
      'CORS_ORIGINS: "app.example" is not an origin (http(s)://host[:port], lower case, no path)',
      'CORS_ORIGINS: "ftp://x.example" is not an origin (http(s)://host[:port], lower case, no path)',
    ]);
    expect(problems({ CORS_ORIGINS: '*', CORS_CREDENTIALS: 'true' })).toEqual([
      'CORS_CREDENTIALS: cannot be true with CORS_ORIGINS=* (browsers refuse it); list the origins',
    ]);
    expect(
      problems({ CORS_ORIGINS: 'http://localhost:5173,https://app.example', CORS_CREDENTIALS: 'true' }),
    ).toEqual([]);
    expect(problems({ CORS_MAX_AGE_SECONDS: '86401' })).toHaveLength(1);
  });
});
