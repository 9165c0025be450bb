import type { AnyTRPCProcedure, AnyTRPCRouter, inferProcedureOutput, TRPCRouterRecord } from '@trpc/server';
import { z } from 'zod';
import type { AppRouter } from '../../trpc/routers/_app.ts';
import { balanceView, initResult, movementResult, packageView, transactionPage } from './views.ts';

/** Dotted paths of every procedure in a router record, e.g. 'internal.credits.use'. */
type ProcedurePaths<TRecord, TPrefix extends string = ''> = {
  [K in keyof TRecord & string]: TRecord[K] extends AnyTRPCProcedure
    ? `${TPrefix}${K}`
    : TRecord[K] extends AnyTRPCRouter
      ? ProcedurePaths<TRecord[K]['_def']['record'], `${TPrefix}${K}.`>
      : TRecord[K] extends TRPCRouterRecord
        ? ProcedurePaths<TRecord[K], `${TPrefix}${K}.`>
        : never;
}[keyof TRecord & string];

type Member<TNode, K extends string> = TNode extends AnyTRPCRouter
  ? TNode['_def']['record'][K]
  : K extends keyof TNode
    ? TNode[K]
    : never;

type ProcedureAt<TNode, TPath extends string> = TPath extends `${infer Head}.${infer Rest}`
  ? ProcedureAt<Member<TNode, Head>, Rest>
  : Member<TNode, TPath>;

export type ProcedurePath = ProcedurePaths<AppRouter['_def']['record']>;

type SameType<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;

export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'DELETE';

export interface RestRoute {
  method: HttpMethod;
  /** Fastify syntax; a path parameter is named after the input field it fills (`:userId` → input.userId). */
  path: `/api/v1/${string}`;
  /** The procedure that answers: its input schema validates the request, its logic is the behaviour. */
  procedure: ProcedurePath;
  auth: 'user' | 'service' | 'public';
  summary: string;
  /** The response body; checked against the procedure's output type at compile time. */
  output: z.ZodType;
  /** Statuses this route answers besides 200, 400 (invalid input) and 401 (auth). */
  errors?: readonly (402 | 403 | 404 | 409 | 412 | 429 | 503)[];
}

/** One REST route; refuses to compile when `output` does not describe what the procedure returns. */
function route<P extends ProcedurePath, S extends z.ZodType>(
  spec: RestRoute & { procedure: P; output: S } & (SameType<
      z.output<S>,
      inferProcedureOutput<ProcedureAt<AppRouter, P>>
    > extends true
      ? unknown
      : { output: 'does not describe the procedure output' }),
): RestRoute {
  return spec;
}

/**
 * The REST surface: the seed's paths and methods, each answered by the procedure named here. Adding a
 * route is one entry (and, for a new response shape, one schema in views.ts).
 */
export const restRoutes: readonly RestRoute[] = [
  route({
    method: 'GET',
    path: '/api/v1/credits/balance',
    procedure: 'credits.balance',
    auth: 'user',
    summary: 'Your balance',
    output: balanceView,
  }),
  route({
    method: 'POST',
    path: '/api/v1/credits/use',
    procedure: 'credits.use',
    auth: 'user',
    summary: 'Spend your credits (idempotent with idempotencyKey)',
    output: movementResult,
    errors: [402, 409],
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/transactions',
    procedure: 'credits.transactions',
    auth: 'user',
    summary: 'Your ledger entries, newest first',
    output: transactionPage,
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/packages',
    procedure: 'credits.packages',
    auth: 'public',
    summary: 'Credit packages on sale',
    output: z.array(packageView),
  }),
  route({
    method: 'GET',
    path: '/api/v1/internal/credits/balance/:userId',
    procedure: 'internal.credits.balance',
    auth: 'service',
    summary: "A user's balance",
    output: balanceView,
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/credits/use',
    procedure: 'internal.credits.use',
    auth: 'service',
    summary: "Spend a user's credits (idempotent with idempotencyKey)",
    output: movementResult,
    errors: [402, 409],
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/credits/refund',
    procedure: 'internal.credits.refund',
    auth: 'service',
    summary: 'Refund all or part of a usage entry',
    output: movementResult,
    errors: [404, 409],
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/credits/init',
    procedure: 'internal.credits.init',
    auth: 'service',
    summary: "Create a user's balance if missing",
    output: initResult,
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/credits/grant',
    procedure: 'internal.credits.grant',
    auth: 'service',
    summary: 'Grant promotional or support credits',
    output: movementResult,
    errors: [409],
  }),
];
