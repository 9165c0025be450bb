import cors, { type FastifyCorsOptions } from '@fastify/cors';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Config } from '../config.ts';
import { sendError } from './error-reply.ts';

/**
 * Request headers a browser app may send: the user's token, a JSON body, its own request id, and tRPC's
 * `trpc-accept` (streaming links). Not X-Service-Key / X-App-Id: a service key has no place in a browser.
 */
export const CORS_ALLOWED_HEADERS: readonly string[] = Object.freeze([
  'authorization',
  'content-type',
  'x-request-id',
  'trpc-accept',
]);

/** Response headers a browser app may read besides the safelisted ones. */
export const CORS_EXPOSED_HEADERS: readonly string[] = Object.freeze(['x-request-id', 'retry-after']);

/**
 * What a route registered for every method (`app.all`) really answers: tRPC's `/trpc/:path` is one, and it
 * answers GET (queries; so HEAD, as Fastify adds to every GET route) and POST (mutations), every other
 * method but OPTIONS with 405 (app.ts).
 */
export const CATCH_ALL_METHODS: readonly string[] = ['GET', 'HEAD', 'POST'];

/** A Vary value that includes Origin, or undefined when the value already does (or is `*`). */
function varyWithOrigin(value: unknown): string | undefined {
  const names = [value ?? '']
    .flat()
    .flatMap((item) => String(item).split(','))
    .map((name) => name.trim())
    .filter(Boolean);
  if (names.some((name) => name === '*' || name.toLowerCase() === 'origin')) return undefined;
  return [...names, 'Origin'].join(', ');
}

export type CorsConfig = Pick<Config, 'corsOrigins' | 'corsCredentials' | 'corsMaxAgeSeconds'>;

/** Puts the CORS headers of a (non-preflight) response on a reply no hook runs for. */
export type CorsResponseHeaders = (request: FastifyRequest, reply: FastifyReply) => void;

/**
 * CORS for the origins of CORS_ORIGINS (`*`: any origin), on every route: REST, /trpc and the rest.
 *
 * - A preflight from an allowed origin is answered 204 with every method some route answers (collected from
 *   the routes as they are added, so a new route's method is allowed without touching this file; nothing
 *   else), the allowed request headers, and `Access-Control-Max-Age: CORS_MAX_AGE_SECONDS`.
 * - A response to an allowed origin carries `Access-Control-Allow-Origin` and exposes `X-Request-Id` and
 *   `Retry-After`; `Access-Control-Allow-Credentials` only when CORS_CREDENTIALS is true (the API is called
 *   with bearer tokens; cookies are not needed).
 * - Any other origin gets no CORS header at all, and its preflight a 403.
 *
 * Called first in buildApp, so its hook runs before every other: preflights are answered even while
 * migrations run, and every response (503, 404, errors) carries the headers a browser needs to read it.
 */
export async function registerCors(app: FastifyInstance, config: CorsConfig): Promise<CorsResponseHeaders> {
  const methods = new Set<string>();
  app.addHook('onRoute', (route) => {
    const answered = [route.method].flat();
    const catchAll = app.supportedMethods.every((method) => answered.includes(method));
    for (const method of catchAll ? CATCH_ALL_METHODS : answered)
      if (method !== 'OPTIONS') methods.add(method);
  });
  let allowMethods: string | undefined;
  app.addHook('onReady', async () => {
    allowMethods = [...methods].sort().join(', ');
  });

  const anyOrigin = config.corsOrigins.includes('*');
  const origins = new Set(config.corsOrigins);
  const allowedOrigin = (origin: string | undefined): string | false => {
    if (origin === undefined) return false;
    if (anyOrigin) return '*';
    return origins.has(origin) ? origin : false;
  };
  const base = {
    allowedHeaders: [...CORS_ALLOWED_HEADERS],
    exposedHeaders: [...CORS_EXPOSED_HEADERS],
    credentials: config.corsCredentials,
    maxAge: config.corsMaxAgeSeconds,
    strictPreflight: true,
  } satisfies FastifyCorsOptions;

  const responseHeaders: CorsResponseHeaders = (request, reply) => {
    reply.header('vary', 'Origin');
    const origin = allowedOrigin(request.headers.origin);
    if (origin === false) return;
    reply.header('access-control-allow-origin', origin);
    reply.header('access-control-expose-headers', CORS_EXPOSED_HEADERS.join(', '));
    if (config.corsCredentials) reply.header('access-control-allow-credentials', 'true');
  };

  // @fastify/cors answers an OPTIONS from an allowed origin that names no method in plain text: the same
  // refusal in the API's error shape, with its request id, says what is missing.
  app.addHook('onRequest', async (request, reply) => {
    if (
      request.method !== 'OPTIONS' ||
      request.headers['access-control-request-method'] ||
      allowedOrigin(request.headers.origin) === false
    ) {
      return;
    }
    reply.header('x-request-id', request.id);
    responseHeaders(request, reply);
    return sendError(request, reply, 400, {
      message: 'A CORS preflight needs an Access-Control-Request-Method header',
      reason: 'INVALID_PREFLIGHT',
    });
  });

  await app.register(cors, {
    hideOptionsRoute: true,
    delegator: (request, callback) => {
      callback(null, {
        ...base,
        origin: allowedOrigin(request.headers.origin),
        methods: allowMethods ?? [...methods].sort().join(', '),
      });
    },
  });

  // Every response depends on the Origin it was sent to (caches must keep them apart). tRPC answers with a
  // fetch Response whose `Vary: trpc-accept, accept` Fastify copies over the plugin's after onSend: add
  // Origin to the Response's own headers then (mutable, as tRPC built it).
  app.addHook('onSend', async (_request, reply, payload) => {
    if (payload instanceof Response) {
      const vary = varyWithOrigin(payload.headers.get('vary'));
      if (vary) payload.headers.set('vary', vary);
    }
    const vary = varyWithOrigin(reply.getHeader('vary'));
    if (vary) reply.header('vary', vary);
    return payload;
  });

  // The plugin leaves a preflight from another origin to its OPTIONS route, which answers not-found: a 403
  // that says why is clearer to whoever debugs it with curl (the browser only sees a failed preflight).
  app.addHook('onRequest', async (request, reply) => {
    if (
      request.method !== 'OPTIONS' ||
      request.headers['access-control-request-method'] === undefined ||
      allowedOrigin(request.headers.origin) !== false
    ) {
      return;
    }
    reply.header('x-request-id', request.id);
    return sendError(request, reply, 403, {
      message: `Origin ${request.headers.origin ?? '(none)'} is not allowed (CORS_ORIGINS)`,
      reason: 'CORS_ORIGIN_NOT_ALLOWED',
    });
  });

  return responseHeaders;
}
