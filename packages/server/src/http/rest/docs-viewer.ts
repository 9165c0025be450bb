import fastifySwagger from '@fastify/swagger';
import fastifySwaggerUi from '@fastify/swagger-ui';
import type { FastifyInstance } from 'fastify';
import type { OpenApiDocument } from './openapi.ts';

/** Where the interactive API documentation lives (Swagger UI: /docs, its assets under /docs/static). */
export const DOCS_PATH = '/docs';

/**
 * The page's own origin and nothing else: its scripts, styles and images are served from this server
 * (swagger-ui-dist, inside @fastify/swagger-ui; no CDN), and "Try it out" may call only this server.
 * Swagger UI sets inline styles, hence 'unsafe-inline' for styles only.
 */
const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "font-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/**
 * Interactive API documentation: Swagger UI (@fastify/swagger-ui, maintained by the Fastify team) over the
 * OpenAPI document of the REST routes, with "Try it out" against this server — the viewer's copy of the
 * document names the server by a relative URL, so requests go to the origin the page came from, whatever
 * BASE_URL says. The document is still built on first use: @fastify/swagger (which the UI plugin requires)
 * holds a placeholder and every read of it is answered by `viewerDocument`.
 */
export async function registerDocsViewer(app: FastifyInstance, document: () => OpenApiDocument) {
  let viewerDocument: OpenApiDocument | undefined;
  const forViewer = () => {
    viewerDocument ??= { ...document(), servers: [{ url: '/', description: 'This server' }] };
    return viewerDocument;
  };
  await app.register(async (scope) => {
    await scope.register(fastifySwagger, {
      mode: 'static',
      specification: {
        document: { openapi: '3.1.0', info: { title: 'mana-credits', version: '1.0.0' }, paths: {} },
      },
    });
    await scope.register(fastifySwaggerUi, {
      routePrefix: DOCS_PATH,
      staticCSP: CONTENT_SECURITY_POLICY,
      transformSpecification: () => forViewer(),
      transformSpecificationClone: false,
      validatorUrl: false,
      uiConfig: {
        deepLinking: true,
        displayOperationId: true,
        displayRequestDuration: true,
        docExpansion: 'list',
        defaultModelsExpandDepth: 0,
        filter: true,
      },
      theme: { title: 'mana-credits API' },
    });
  });
}
