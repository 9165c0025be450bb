import { randomUUID } from 'node:crypto';
import cors from '@fastify/cors';
import { type FastifyTRPCPluginOptions, fastifyTRPCPlugin } from '@trpc/server/adapters/fastify';
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { sql } from 'kysely';
import type { AppDeps } from './deps.ts';
import { createContextFactory } from './trpc/context.ts';
import { type AppRouter, appRouter } from './trpc/routers/_app.ts';
import { appRouterWithBench } from './trpc/routers/bench.ts';

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** A caller's x-request-id is kept when it is sane; otherwise the request gets a fresh one. */
export function requestIdOf(header: string | string[] | undefined): string {
  return typeof header === 'string' && REQUEST_ID.test(header) ? header : randomUUID();
}

export interface BuildAppOptions {
  /** Close the database when the app closes (true when the app owns its deps, as in main.ts). */
  closeDepsOnClose?: boolean;
  logger?: FastifyServerOptions['logger'];
}

declare module 'fastify' {
  interface FastifyInstance {
    deps: AppDeps;
    /** False while shutting down, so load balancers stop sending traffic. */
    readiness: { accepting: boolean };
  }
}

/** The whole HTTP app; never listens (main.ts does, tests use a port 0 or inject). */
export async function buildApp(deps: AppDeps, options: BuildAppOptions = {}): Promise<FastifyInstance> {
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
    },
    genReqId: (req) => requestIdOf(req.headers['x-request-id']),
    requestIdHeader: false,
    bodyLimit: deps.config.bodyLimitBytes,
    // tRPC batches put every procedure name in the path.
    routerOptions: { maxParamLength: 5000 },
    forceCloseConnections: 'idle',
  });

  app.decorate('deps', deps);
  app.decorate('readiness', { accepting: true });

  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id);
  });

  // Fastify-level failures (bad JSON, body too large, …) keep their 4xx; anything else says nothing internal.
  app.setErrorHandler((error: { statusCode?: number; code?: string; message: string }, request, reply) => {
    const status =
      error.statusCode && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 500;
    if (status >= 500) request.log.error({ err: error }, 'request failed');
    reply.status(status).send({
      error: {
        message: status >= 500 ? 'Internal server error' : error.message,
        reason: status >= 500 ? 'INTERNAL' : (error.code ?? 'BAD_REQUEST'),
        requestId: request.id,
      },
    });
  });

  await app.register(cors, {
    origin: deps.config.corsOrigins.length > 0 ? [...deps.config.corsOrigins] : false,
    credentials: true,
    exposedHeaders: ['x-request-id'],
  });

  app.get('/health', async () => ({ status: 'ok' }));
  app.get('/ready', async (_request, reply) => {
    if (!app.readiness.accepting) return reply.status(503).send({ status: 'shutting-down' });
    try {
      await sql`select 1`.execute(deps.db);
      return { status: 'ready' };
    } catch {
      return reply.status(503).send({ status: 'database-unreachable' });
    }
  });

  await app.register(fastifyTRPCPlugin, {
    prefix: '/trpc',
    trpcOptions: {
      router: deps.config.benchNoop ? appRouterWithBench : appRouter,
      createContext: createContextFactory(deps),
      maxBatchSize: 100,
      onError({ error, ctx, path }) {
        if (error.code === 'INTERNAL_SERVER_ERROR') {
          ctx?.log?.error({ err: error.cause ?? error, path }, 'procedure failed');
        }
      },
    } satisfies FastifyTRPCPluginOptions<AppRouter>['trpcOptions'],
  });

  if (options.closeDepsOnClose) {
    app.addHook('onClose', async () => {
      await deps.dbHandle.close();
    });
  }
  return app;
}
