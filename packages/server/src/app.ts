import { randomUUID } from 'node:crypto';
import { type FastifyTRPCPluginOptions, fastifyTRPCPlugin } from '@trpc/server/adapters/fastify';
import Fastify, { type FastifyInstance, type FastifyServerOptions, LogController } from 'fastify';
import { sql } from 'kysely';
import type { AppDeps } from './deps.ts';
import { ServiceUnavailableError } from './domain/errors.ts';
import { DatabaseUnavailableError, isConnectionFailure, OutcomeUnknownError } from './domain/outcome.ts';
import { adminConsole } from './http/admin/plugin.ts';
import { CATCH_ALL_METHODS, type CorsResponseHeaders, registerCors } from './http/cors.ts';
import { sendError } from './http/error-reply.ts';
import { registerGiftPage } from './http/gift-page.ts';
import { registerMetrics } from './http/metrics.ts';
import { restApi } from './http/rest/plugin.ts';
import { stripeWebhookRoutes } from './http/stripe-webhook.ts';
import { periodicJobs } from './jobs/index.ts';
import { registerScheduler } from './jobs/scheduler.ts';
import { createContextFactory } from './trpc/context.ts';
import { noteErrorRequestId, toTRPCError } from './trpc/init.ts';
import { type AppRouter, appRouter } from './trpc/routers/_app.ts';
import { appRouterWithBench } from './trpc/routers/bench.ts';

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** A caller's x-request-id is kept when it is sane; otherwise the request gets a fresh one. */
export function requestIdOf(header: string | string[] | undefined): string {
  return typeof header === 'string' && REQUEST_ID.test(header) ? header : randomUUID();
}

/**
 * TRUST_PROXY as Fastify takes it: a hop count becomes the function Fastify itself would build for a number
 * (its types omit numbers), and the frozen address list a mutable copy.
 */
function fastifyTrustProxy(
  trust: AppDeps['config']['trustProxy'],
): boolean | string[] | ((address: string, hop: number) => boolean) {
  if (typeof trust === 'number') return (_address, hop) => hop < trust;
  return typeof trust === 'boolean' ? trust : [...trust];
}

export interface BuildAppOptions {
  /** Close the database when the app closes (true when the app owns its deps, as in main.ts). */
  closeDepsOnClose?: boolean;
  logger?: FastifyServerOptions['logger'];
  /** Where the default logger writes (stdout when unset); tests read the log lines from here. */
  logStream?: { write(line: string): void };
}

/** Answered even while the app is not ready: probes and the scraper. */
const PROBE_ROUTES = new Set(['/health', '/ready', '/metrics']);
const MIGRATING_MESSAGE = 'The service is starting (migrations)';
/** What /trpc/:path answers: the methods of a catch-all route (cors.ts), and OPTIONS for CORS preflights. */
const TRPC_METHODS = new Set([...CATCH_ALL_METHODS, 'OPTIONS']);
/** tRPC batches put every procedure name in the path. */
const MAX_PARAM_LENGTH = 5000;

declare module 'fastify' {
  interface FastifyInstance {
    deps: AppDeps;
    /**
     * `accepting` is false while shutting down and `migrating` true while migrations run: either makes
     * /ready answer 503, so load balancers send no traffic.
     */
    readiness: { accepting: boolean; migrating: boolean };
  }
}

/** The whole HTTP app; never listens (main.ts does, tests use a port 0 or inject). */
export async function buildApp(deps: AppDeps, options: BuildAppOptions = {}): Promise<FastifyInstance> {
  // Set once CORS is registered (below); the router's own refusals (frameworkErrors) run before any hook.
  let corsHeadersOf: CorsResponseHeaders | undefined;
  const app = Fastify({
    logger: options.logger ?? {
      level: deps.config.logLevel,
      redact: {
        paths: [
          'req.headers.authorization',
          'req.headers["x-service-key"]',
          'req.headers["stripe-signature"]',
        ],
        censor: '[redacted]',
      },
      ...(options.logStream ? { stream: options.logStream } : {}),
    },
    // Log lines of a request carry the same requestId as its response header and error bodies.
    logController: new LogController({ requestIdLogLabel: 'requestId' }),
    genReqId: (req) => requestIdOf(req.headers['x-request-id']),
    requestIdHeader: false,
    bodyLimit: deps.config.bodyLimitBytes,
    // A URL the router cannot read (bad percent-encoding, a path parameter over maxParamLength) is refused
    // before any hook runs: answered here in the API's error shape, with the request id and CORS headers,
    // without echoing the URL.
    frameworkErrors: (error, request, reply) => {
      // No hook runs for these: what the hooks would add, added here.
      reply.header('x-request-id', request.id);
      corsHeadersOf?.(request, reply);
      if (!app.readiness.accepting) reply.header('connection', 'close');
      switch (error.code) {
        case 'FST_ERR_MAX_PARAM_LENGTH':
          return sendError(request, reply, 414, {
            message: `A path parameter is longer than ${MAX_PARAM_LENGTH} characters`,
            reason: 'URL_TOO_LONG',
          });
        case 'FST_ERR_BAD_URL':
          return sendError(request, reply, 400, {
            message: 'The URL is not valid (bad percent-encoding)',
            reason: 'BAD_URL',
          });
        default:
          request.log.error({ err: error }, 'request failed before routing');
          return sendError(request, reply, 500, { message: 'Internal server error', reason: 'INTERNAL' });
      }
    },
    // request.ip (the per-address gift-info limit) believes X-Forwarded-For only from the proxies configured.
    trustProxy: fastifyTrustProxy(deps.config.trustProxy),
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    forceCloseConnections: 'idle',
    // A request arriving on a kept-alive connection while the server closes is served (with Connection:
    // close) rather than refused with a 503: its client sent it before it could know.
    return503OnClosing: false,
  });

  app.decorate('deps', deps);
  app.decorate('readiness', { accepting: true, migrating: false });
  // First: its hooks run before every other (see registerCors), and it sees every route being added.
  corsHeadersOf = await registerCors(app, deps.config);

  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id);
    // tRPC's route takes every method, but a query is a GET and a mutation a POST; the fetch Request its
    // adapter builds cannot even carry some others (TRACE: a TypeError, which was a 500).
    if (request.routeOptions.url === '/trpc/:path' && !TRPC_METHODS.has(request.method)) {
      reply.header('allow', CATCH_ALL_METHODS.join(', '));
      return sendError(request, reply, 405, {
        message: `${request.method} is not supported here: queries are GET, mutations POST`,
        reason: 'METHOD_NOT_SUPPORTED',
      });
    }
    if (app.readiness.migrating && !PROBE_ROUTES.has(request.routeOptions.url ?? '')) {
      reply.header('retry-after', '5');
      // tRPC answers in its own error envelope (see createContext below), which its clients can parse.
      if (request.url.startsWith('/trpc/')) return;
      return sendError(request, reply, 503, { message: MIGRATING_MESSAGE, reason: 'MIGRATING' });
    }
  });

  // Shutting down: every response, also of a request that was in flight when it began, closes its
  // connection, so the client opens its next one elsewhere and the server's close is not held up by keep-alive.
  app.addHook('onSend', async (_request, reply) => {
    if (!app.readiness.accepting) reply.header('connection', 'close');
  });

  app.setNotFoundHandler((request, reply) => {
    sendError(request, reply, 404, {
      message: `Route ${request.method} ${request.url} not found`,
      reason: 'NOT_FOUND',
    });
  });

  // Fastify-level failures (bad JSON, body too large, …) keep their 4xx; a lost database is a retryable 503
  // (the Stripe webhook's retry is keyed by the event id); anything else says nothing internal.
  app.setErrorHandler((error: { statusCode?: number; code?: string; message: string }, request, reply) => {
    if (isConnectionFailure(error)) {
      request.log.warn({ err: error }, 'request failed: database unavailable');
      const unavailable = new DatabaseUnavailableError(error);
      return sendError(request, reply, 503, unavailable);
    }
    const status =
      error.statusCode && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 500;
    if (status >= 500) request.log.error({ err: error }, 'request failed');
    return sendError(request, reply, status, {
      message: status >= 500 ? 'Internal server error' : error.message,
      reason: status >= 500 ? 'INTERNAL' : (error.code ?? 'BAD_REQUEST'),
    });
  });

  app.get('/health', async () => ({ status: 'ok' }));
  app.get('/ready', async (_request, reply) => {
    if (!app.readiness.accepting) return reply.status(503).send({ status: 'shutting-down' });
    if (app.readiness.migrating) return reply.status(503).send({ status: 'migrating' });
    try {
      // Reachable is not enough: a standby (or a primary set read-only) refuses every write. With a multi-host
      // DATABASE_URL the pool reaches only a writable primary; behind a proxy this is where a standby shows.
      const { rows } = await sql<{ read_only: string }>`
        select current_setting('transaction_read_only') as read_only`.execute(deps.db);
      if (rows[0]?.read_only === 'on') return reply.status(503).send({ status: 'database-read-only' });
      return { status: 'ready' };
    } catch {
      return reply.status(503).send({ status: 'database-unreachable' });
    }
  });

  await app.register(stripeWebhookRoutes);
  registerMetrics(app, new Set(Object.keys(appRouter._def.procedures)));

  const createContext = createContextFactory(deps);
  await app.register(fastifyTRPCPlugin, {
    prefix: '/trpc',
    trpcOptions: {
      router: deps.config.benchNoop ? appRouterWithBench : appRouter,
      createContext: (options) => {
        if (app.readiness.migrating) {
          throw toTRPCError(new ServiceUnavailableError(MIGRATING_MESSAGE, 'MIGRATING'));
        }
        return createContext(options);
      },
      maxBatchSize: 100,
      onError({ error, ctx, path, req }) {
        if (!ctx) noteErrorRequestId(error, req.id);
        if (error.code === 'INTERNAL_SERVER_ERROR') {
          (ctx?.log ?? req.log).error({ err: error.cause ?? error, path }, 'procedure failed');
        } else if (error.cause instanceof OutcomeUnknownError) {
          // A lost connection is expected now and then; anything else that left the outcome unknown is a bug.
          const level = isConnectionFailure(error.cause.cause) ? 'warn' : 'error';
          (ctx?.log ?? req.log)[level]({ err: error.cause.cause, path }, 'procedure outcome unknown');
        }
      },
    } satisfies FastifyTRPCPluginOptions<AppRouter>['trpcOptions'],
  });

  await app.register(restApi, { deps });
  registerGiftPage(app);
  await app.register(adminConsole, { prefix: '/admin' });
  // All periodic work (expiry sweeps, pruning) runs on one scheduler: started when the app is ready, stopped
  // in preClose (a run in progress is awaited), before the database closes in onClose.
  const scheduler = registerScheduler(app);
  for (const job of periodicJobs(deps, app.log)) scheduler.register(job);

  if (options.closeDepsOnClose) {
    app.addHook('onClose', async () => {
      await deps.dbHandle.close();
    });
  }
  return app;
}
