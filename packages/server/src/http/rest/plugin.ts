import { TRPCError } from '@trpc/server';
import { getHTTPStatusCodeFromError } from '@trpc/server/http';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { AppDeps } from '../../deps.ts';
import { InvalidRequestError } from '../../domain/errors.ts';
import { isConnectionFailure, OutcomeUnknownError } from '../../domain/outcome.ts';
import { createContextFactory } from '../../trpc/context.ts';
import { createCallerFactory, describeError, toTRPCError } from '../../trpc/init.ts';
import { appRouter } from '../../trpc/routers/_app.ts';
import { sendError } from '../error-reply.ts';
import { registerDocsViewer } from './docs-viewer.ts';
import { coerceQueryValue, type RouteInput, routeInput } from './input.ts';
import { buildOpenApiDocument, type OpenApiDocument } from './openapi.ts';
import { type ProcedurePath, type RestRoute, restRoutes } from './routes.ts';
import { registerStatementCsv, withStatementCsv } from './statement-csv.ts';

const OPENAPI_PATH = '/api/v1/openapi.json';

const createCaller = createCallerFactory(appRouter);
type Caller = ReturnType<typeof createCaller>;

function sendTRPCError(request: FastifyRequest, reply: FastifyReply, error: TRPCError) {
  return sendError(request, reply, getHTTPStatusCodeFromError(error), describeError(error));
}

const invalid = (field: string, message: string) =>
  toTRPCError(
    new InvalidRequestError(`Invalid input: ${field}: ${message}`, 'VALIDATION', {
      issues: [{ field, message }],
    }),
  );

/** The procedure's input from the request: query (GET, DELETE) or JSON body, plus the path parameters. */
function inputOf(route: RestRoute, input: RouteInput, request: FastifyRequest): unknown {
  if (!input.schema) {
    // A procedure without input: what a caller sends anyway is refused as on the routes with input (strict
    // schemas), not silently ignored.
    const [unexpected] = Object.keys((request.query ?? {}) as Record<string, unknown>);
    if (unexpected !== undefined) throw invalid(unexpected, 'is not a parameter of this route');
    const body = request.body;
    if (body !== undefined && body !== null) {
      if (typeof body !== 'object' || Array.isArray(body)) throw invalid('(body)', 'must be empty');
      const [field] = Object.keys(body);
      if (field !== undefined) throw invalid(field, 'is not a parameter of this route');
    }
    return undefined;
  }
  const params = request.params as Record<string, string>;
  const fromPath = Object.fromEntries(input.pathParams.map((name) => [name, params[name]]));
  if (route.method === 'GET' || route.method === 'DELETE') {
    const query = request.query as Record<string, string | string[]>;
    const fields = Object.fromEntries(
      Object.entries(query).map(([name, value]) => [
        name,
        coerceQueryValue(input.jsonSchema?.properties?.[name], value),
      ]),
    );
    return { ...fields, ...fromPath };
  }
  const body = request.body;
  if (input.pathParams.length === 0) return body;
  if (body === undefined || body === null) return fromPath;
  if (typeof body !== 'object' || Array.isArray(body)) throw invalid('(body)', 'must be a JSON object');
  for (const name of input.pathParams) {
    if (name in body) throw invalid(name, 'belongs in the path, not in the body');
  }
  return { ...body, ...fromPath };
}

export type ProcedureCall = (
  request: FastifyRequest,
  reply: FastifyReply,
  procedure: ProcedurePath,
  input: unknown,
) => Promise<unknown>;

/** caller['internal']['credits']['use'] for 'internal.credits.use'. */
function procedureOf(caller: Caller, path: string) {
  return path.split('.').reduce<unknown>((node, key) => (node as Record<string, unknown>)[key], caller) as (
    input: unknown,
  ) => Promise<unknown>;
}

/**
 * The REST surface: every route calls its procedure through a server-side caller, so input validation,
 * auth, domain logic and error mapping are the procedure's own; only the transport differs (plain JSON, the
 * error's HTTP status, the body { error: { … } }). Also serves the OpenAPI document and its viewer (/docs).
 */
export async function restApi(
  app: FastifyInstance,
  options: { deps: AppDeps; routes?: readonly RestRoute[] },
) {
  const { deps, routes = restRoutes } = options;
  const createContext = createContextFactory(deps);
  /** Calls a procedure as the request's caller: its own validation, auth, logic and error mapping. */
  const callProcedure: ProcedureCall = (request, reply, procedure, input) => {
    const caller = createCaller(createContext({ req: request, res: reply }), {
      onError({ error }) {
        if (error.code === 'INTERNAL_SERVER_ERROR') {
          request.log.error({ err: error.cause ?? error, path: procedure }, 'procedure failed');
        } else if (error.cause instanceof OutcomeUnknownError) {
          const level = isConnectionFailure(error.cause.cause) ? 'warn' : 'error';
          request.log[level]({ err: error.cause.cause, path: procedure }, 'procedure outcome unknown');
        }
      },
    });
    return procedureOf(caller, procedure)(input);
  };
  for (const route of routes) {
    const input = routeInput(route);
    app.route({
      method: route.method,
      url: route.path,
      handler: async (request, reply) => {
        try {
          return await callProcedure(request, reply, route.procedure, inputOf(route, input, request));
        } catch (error) {
          if (error instanceof TRPCError) return sendTRPCError(request, reply, error);
          throw error;
        }
      },
    });
  }
  registerStatementCsv(app, { call: callProcedure, sendError: sendTRPCError });

  // Built on first request rather than at start-up, then served from memory.
  let document: OpenApiDocument | undefined;
  const openApiDocument = () => {
    document ??= withStatementCsv(buildOpenApiDocument(routes, deps.config.baseUrl));
    return document;
  };
  app.get(OPENAPI_PATH, async () => openApiDocument());
  await registerDocsViewer(app, openApiDocument);

  await app.register(
    async (api) => {
      api.setNotFoundHandler((request, reply) =>
        sendTRPCError(request, reply, new TRPCError({ code: 'NOT_FOUND', message: 'No such route' })),
      );
    },
    { prefix: '/api/v1' },
  );
}
