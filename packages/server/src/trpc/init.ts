import { initTRPC, TRPCError } from '@trpc/server';
import type { TRPC_ERROR_CODE_KEY } from '@trpc/server/rpc';
import { ZodError } from 'zod';
import { InvalidTokenError, KeySetUnavailableError } from '../auth/jwt.ts';
import { DomainError, type DomainErrorKind } from '../domain/errors.ts';
import {
  certainlyNotCommitted,
  DatabaseUnavailableError,
  isConnectionFailure,
  OutcomeUnknownError,
} from '../domain/outcome.ts';
import { type Context, serviceAppIdOf } from './context.ts';
import { recordProcedureCall } from './metrics.ts';
import { transformer } from './transformer.ts';

const CODE_OF_KIND: Record<DomainErrorKind, TRPC_ERROR_CODE_KEY> = {
  bad_request: 'BAD_REQUEST',
  unauthorized: 'UNAUTHORIZED',
  forbidden: 'FORBIDDEN',
  not_found: 'NOT_FOUND',
  conflict: 'CONFLICT',
  payment_required: 'PAYMENT_REQUIRED',
  precondition_failed: 'PRECONDITION_FAILED',
  too_many_requests: 'TOO_MANY_REQUESTS',
  unavailable: 'SERVICE_UNAVAILABLE',
};

/** A reason for errors raised by tRPC itself or by our auth checks, where no DomainError says one. */
const DEFAULT_REASON: Partial<Record<TRPC_ERROR_CODE_KEY, string>> = {
  BAD_REQUEST: 'VALIDATION',
  PARSE_ERROR: 'PARSE_ERROR',
  UNAUTHORIZED: 'UNAUTHORIZED',
  FORBIDDEN: 'FORBIDDEN',
  NOT_FOUND: 'NOT_FOUND',
  METHOD_NOT_SUPPORTED: 'METHOD_NOT_SUPPORTED',
  PAYLOAD_TOO_LARGE: 'PAYLOAD_TOO_LARGE',
  UNSUPPORTED_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  TOO_MANY_REQUESTS: 'TOO_MANY_REQUESTS',
  SERVICE_UNAVAILABLE: 'SERVICE_UNAVAILABLE',
  INTERNAL_SERVER_ERROR: 'INTERNAL',
};

export interface ValidationIssue {
  field: string;
  message: string;
}

export function validationIssues(error: ZodError): ValidationIssue[] {
  return error.issues.map((issue) => ({
    field: issue.path.length > 0 ? issue.path.map(String).join('.') : '(input)',
    message: issue.message,
  }));
}

export function describeValidation(issues: ValidationIssue[]): string {
  return `Invalid input: ${issues.map((issue) => `${issue.field}: ${issue.message}`).join('; ')}`;
}

export interface ErrorDescription {
  message: string;
  reason: string;
  details?: unknown;
}

/** What a caller learns about a failed call: the same over tRPC (error.data) and REST (the error body). */
export function describeError(error: TRPCError): ErrorDescription {
  const cause = error.cause;
  const message = error.code === 'INTERNAL_SERVER_ERROR' ? 'Internal server error' : error.message;
  if (cause instanceof DomainError) return { message, reason: cause.reason, details: cause.details };
  if (cause instanceof ZodError) {
    const issues = validationIssues(cause);
    return { message: describeValidation(issues), reason: 'VALIDATION', details: { issues } };
  }
  return { message, reason: DEFAULT_REASON[error.code] ?? error.code };
}

export function toTRPCError(error: DomainError): TRPCError {
  return new TRPCError({ code: CODE_OF_KIND[error.kind], message: error.message, cause: error });
}

const requestIdOfError = new WeakMap<object, string>();

/**
 * Errors raised before tRPC made a context (e.g. a batch over the size limit) have no ctx.requestId: the
 * adapter's onError, which sees the HTTP request, notes its id here for the error formatter.
 */
export function noteErrorRequestId(error: object, requestId: string) {
  requestIdOfError.set(error, requestId);
}

const t = initTRPC.context<Context>().create({
  transformer,
  isDev: false,
  errorFormatter({ shape, error, ctx }) {
    const { message, reason, details } = describeError(error);
    return {
      message,
      code: shape.code,
      data: {
        code: shape.data.code,
        httpStatus: shape.data.httpStatus,
        path: shape.data.path,
        reason,
        ...(details === undefined ? {} : { details }),
        requestId: ctx?.requestId ?? requestIdOfError.get(error),
      },
    };
  },
});

export const router = t.router;
export const mergeRouters = t.mergeRouters;
export const middleware = t.middleware;
export const createCallerFactory = t.createCallerFactory;

/**
 * Domain errors become tRPC errors with the right code; the DomainError stays as `cause`. A lost or
 * unreachable database is retryable (503), never an opaque 500: for a mutation the outcome is unknown unless
 * Postgres itself refused the statement (OUTCOME_UNKNOWN: retry with the same idempotency key), for a query
 * nothing was written (DATABASE_UNAVAILABLE). Other errors stay 500 (logged, message hidden).
 */
const mapErrors = t.middleware(async ({ type, next }) => {
  const result = await next();
  if (result.ok) return result;
  const cause = result.error.cause;
  if (cause instanceof DomainError) throw toTRPCError(cause);
  if (isConnectionFailure(cause)) {
    throw toTRPCError(
      type === 'mutation' && !certainlyNotCommitted(cause)
        ? new OutcomeUnknownError(cause)
        : new DatabaseUnavailableError(cause),
    );
  }
  return result;
});

/** Every call is timed and counted; money procedures are counted by the table in metrics.ts. */
const observe = t.middleware(async ({ ctx, path, type, getRawInput, next }) => {
  const started = performance.now();
  const result = await next();
  await recordProcedureCall(ctx, {
    path,
    type,
    seconds: (performance.now() - started) / 1000,
    getRawInput,
    outcome: result.ok ? { ok: true, data: result.data } : { ok: false, error: result.error },
  });
  return result;
});

export const publicProcedure = t.procedure.use(observe).use(mapErrors);

export const authedProcedure = publicProcedure.use(async ({ ctx, next }) => {
  if (ctx.user) return next({ ctx: { user: ctx.user } });
  if (!ctx.bearerToken) throw new TRPCError({ code: 'UNAUTHORIZED', message: 'A bearer token is required' });
  try {
    const user = await ctx.deps.verifyUserToken(ctx.bearerToken);
    return next({ ctx: { user } });
  } catch (error) {
    if (error instanceof InvalidTokenError) {
      throw new TRPCError({ code: 'UNAUTHORIZED', message: error.message, cause: error });
    }
    if (error instanceof KeySetUnavailableError) {
      throw new TRPCError({
        code: 'SERVICE_UNAVAILABLE',
        message: 'Authentication is temporarily unavailable',
        cause: error,
      });
    }
    throw error;
  }
});

export const internalProcedure = publicProcedure.use(async ({ ctx, next }) => {
  if (ctx.service) return next({ ctx: { service: ctx.service } });
  if (!ctx.deps.verifyServiceKey(ctx.serviceKey)) {
    throw new TRPCError({ code: 'UNAUTHORIZED', message: 'A valid X-Service-Key is required' });
  }
  return next({ ctx: { service: { appId: serviceAppIdOf(ctx.appId) } } });
});
