import type { FastifyInstance, FastifyRequest } from 'fastify';
import { createServiceKeyVerifier } from '../auth/service-key.ts';
import { reportingEffectsTo } from '../domain/effects.ts';
import { bearerTokenOf } from '../trpc/context.ts';
import { sendError } from './error-reply.ts';

const TRPC_ROUTE = '/trpc/:path';

/**
 * The route label of a request: the route pattern Fastify matched (never the raw URL, which callers
 * choose), and for tRPC the procedure when it is one known procedure.
 */
export function routeLabel(request: FastifyRequest, procedures: ReadonlySet<string>): string {
  const route = request.routeOptions.url;
  if (!route) return '(unmatched)';
  if (route !== TRPC_ROUTE) return route;
  const path = (request.params as { path?: string } | undefined)?.path ?? '';
  if (procedures.has(path)) return `/trpc/${path}`;
  return path.includes(',') ? '/trpc/(batch)' : '/trpc/(unknown)';
}

/**
 * Times every response, counts side effects of requests, and serves GET /metrics (Prometheus text). With METRICS_TOKEN set the scraper must
 * present it as a bearer token (compared in constant time); unset, /metrics is open to whoever reaches the port.
 */
export function registerMetrics(app: FastifyInstance, procedures: ReadonlySet<string>) {
  const { metrics, config } = app.deps;
  const tokenMatches = createServiceKeyVerifier(config.metricsToken ? [config.metricsToken] : []);

  // Whatever a request moves besides its own work (expired holds and gifts it comes across) is reported
  // into this app's metrics (see domain/effects.ts). Entered after the body is read, right before the handler.
  app.addHook('preHandler', (_request, _reply, done) => reportingEffectsTo(metrics.effects, done));

  app.addHook('onResponse', async (request, reply) => {
    metrics.httpRequestDuration.observe(
      {
        method: request.method,
        route: routeLabel(request, procedures),
        status_class: `${Math.floor(reply.statusCode / 100)}xx`,
      },
      reply.elapsedTime / 1000,
    );
  });

  app.get('/metrics', async (request, reply) => {
    if (config.metricsToken) {
      const authorization = request.headers.authorization;
      if (!tokenMatches(bearerTokenOf(typeof authorization === 'string' ? authorization : undefined))) {
        reply.header('www-authenticate', 'Bearer realm="metrics"');
        return sendError(request, reply, 401, {
          message: 'A valid metrics bearer token is required',
          reason: 'UNAUTHORIZED',
        });
      }
    }
    const { contentType, body } = await metrics.render();
    return reply.header('content-type', contentType).header('cache-control', 'no-store').send(body);
  });
}
