import { Readable } from 'node:stream';
import { TRPCError } from '@trpc/server';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { InvalidRequestError } from '../../domain/errors.ts';
import { statementCsv } from '../../domain/history/csv.ts';
import type { StatementPageView } from '../../domain/history/statement.ts';
import { toTRPCError } from '../../trpc/init.ts';
import type { OpenApiDocument } from './openapi.ts';
import type { ProcedureCall } from './plugin.ts';
import type { ProcedurePath } from './routes.ts';

/**
 * GET …/statement.csv: the statement procedures (credits.statement, internal.credits.statement) rendered as
 * CSV and streamed. Every page is one call of the procedure (its validation, auth and error mapping), read by
 * keyset, so a year of entries never sits in memory. The first page is read before anything is sent: a bad
 * request, a refused caller or a lost database still gets its JSON error and status. Should a later page
 * fail, the response is cut off (no closing-balance line, an aborted chunked body), never silently short.
 */

/** Entries per page: one procedure call, one query. */
const PAGE_SIZE = 1000;

interface CsvRoute {
  path: `/api/v1/${string}`;
  procedure: ProcedurePath;
  auth: 'user' | 'service';
  /** Query parameters, in order; all required. */
  parameters: readonly string[];
  summary: string;
}

export const statementCsvRoutes: readonly CsvRoute[] = [
  {
    path: '/api/v1/credits/statement.csv',
    procedure: 'credits.statement',
    auth: 'user',
    parameters: ['from', 'to'],
    summary: 'Your statement of [from, to) as CSV: opening balance, every entry, closing balance',
  },
  {
    path: '/api/v1/internal/credits/statement.csv',
    procedure: 'internal.credits.statement',
    auth: 'service',
    parameters: ['userId', 'from', 'to'],
    summary: "A user's statement of [from, to) as CSV: opening balance, every entry, closing balance",
  },
];

const refuse = (field: string, message: string) =>
  toTRPCError(
    new InvalidRequestError(`Invalid input: ${field}: ${message}`, 'VALIDATION', {
      issues: [{ field, message }],
    }),
  );

/** The procedure's input from the query string: only the route's parameters, a page of PAGE_SIZE. */
function inputOf(route: CsvRoute, request: FastifyRequest): Record<string, unknown> {
  const query = request.query as Record<string, string | string[]>;
  for (const name of Object.keys(query)) {
    if (!route.parameters.includes(name)) throw refuse(name, 'is not a parameter of this route');
  }
  return { ...Object.fromEntries(route.parameters.map((name) => [name, query[name]])), limit: PAGE_SIZE };
}

const day = (instant: Date) => instant.toISOString().slice(0, 10);

export function registerStatementCsv(
  app: FastifyInstance,
  options: {
    call: ProcedureCall;
    sendError: (request: FastifyRequest, reply: FastifyReply, error: TRPCError) => FastifyReply;
  },
) {
  for (const route of statementCsvRoutes) {
    app.get(route.path, async (request, reply) => {
      let input: Record<string, unknown>;
      let first: StatementPageView;
      try {
        input = inputOf(route, request);
        first = (await options.call(request, reply, route.procedure, input)) as StatementPageView;
      } catch (error) {
        if (error instanceof TRPCError) return options.sendError(request, reply, error);
        throw error;
      }
      const nextPage = async (cursor: string) =>
        (await options.call(request, reply, route.procedure, { ...input, cursor })) as StatementPageView;
      const body = Readable.from(statementCsv(first, nextPage), { objectMode: false });
      body.on('error', (error) =>
        request.log.error({ err: error, path: route.procedure }, 'statement cut off'),
      );
      return reply
        .type('text/csv; charset=utf-8')
        .header(
          'content-disposition',
          `attachment; filename="statement-${day(first.from)}-${day(first.to)}.csv"`,
        )
        .header('cache-control', 'no-store')
        .header('x-content-type-options', 'nosniff')
        .send(body);
    });
  }
}

const ERROR = { content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } };

/** The document with the CSV routes added (their parameters are the statement procedures' fields). */
export function withStatementCsv(document: OpenApiDocument): OpenApiDocument {
  const describe: Record<string, Record<string, unknown>> = {
    userId: { type: 'string', description: 'The user whose statement this is' },
    from: {
      type: 'string',
      format: 'date-time',
      description: 'Start (inclusive), e.g. 2026-01-01T00:00:00Z',
    },
    to: { type: 'string', format: 'date-time', description: 'End (exclusive), after from' },
  };
  for (const route of statementCsvRoutes) {
    document.paths[route.path] = {
      get: {
        operationId: `${route.procedure}.csv`,
        summary: route.summary,
        description:
          `The pages of \`${route.procedure}\` as one CSV file (RFC 4180, CRLF, UTF-8), streamed. Columns: ` +
          'date, type, transaction_id, app_id, description, amount, balance_after, reference_transaction_id. ' +
          'The first line after the header is the opening balance (type opening_balance), the last the ' +
          'closing balance (closing_balance): a file without it was cut off. Text cells that start with = + - @, ' +
          'a tab or a CR are prefixed with a single quote; amounts and balances are plain integers.',
        tags: [route.procedure.split('.')[0]],
        security: route.auth === 'user' ? [{ bearerAuth: [] }] : [{ serviceKey: [] }],
        parameters: route.parameters.map((name) => ({
          name,
          in: 'query',
          required: true,
          schema: describe[name],
        })),
        responses: {
          200: {
            description: 'The statement',
            content: { 'text/csv': { schema: { type: 'string' } } },
          },
          400: { description: 'Invalid input: reason VALIDATION, details.issues names each field', ...ERROR },
          401: { description: 'Missing or invalid credentials', ...ERROR },
          503: { description: 'A dependency is unavailable; retry later', ...ERROR },
        },
      },
    };
  }
  return document;
}
