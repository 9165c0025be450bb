import type { AppRouter } from '@mana-credits/server/router';
import type { TRPCClientError } from '@trpc/client';
import { CreditsRequestError } from './request-error.ts';
import { CreditsTransportError } from './transport.ts';

/** What a failed call of either client throws. */
export type CreditsClientError = TRPCClientError<AppRouter>;

type ErrorData = NonNullable<CreditsClientError['data']>;

/** A CreditsClientError whose data carries a known reason and details. */
export type CreditsErrorWith<TReason extends string, TDetails> = CreditsClientError & {
  data: ErrorData & { reason: TReason; details: TDetails };
};

export interface InsufficientCreditsDetails {
  required: number;
  available: number;
}

export interface LimitExceededDetails {
  limit: number;
  spent: number;
  requested: number;
}

export type InsufficientCreditsError = CreditsErrorWith<string, InsufficientCreditsDetails>;
export type LimitExceededError = CreditsErrorWith<`${string}_LIMIT_EXCEEDED`, LimitExceededDetails>;
export type IdempotencyConflictError = CreditsErrorWith<'IDEMPOTENCY_CONFLICT', unknown>;
export type UnauthorizedError = CreditsErrorWith<string, unknown> & { data: { code: 'UNAUTHORIZED' } };

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null;

/**
 * The error's data when it came from the credits service (read by shape, so two copies of @trpc/client work);
 * for a refusal the service gave before tRPC saw the request (a CreditsRequestError), its reason, details,
 * status and request id.
 */
function serviceErrorData(error: unknown): ErrorData | undefined {
  if (!(error instanceof Error)) return undefined;
  const data = (error as { data?: unknown }).data;
  if (isRecord(data) && typeof data.reason === 'string') return data as ErrorData;
  const refusal = error instanceof CreditsRequestError ? error : error.cause;
  if (!(refusal instanceof CreditsRequestError)) return undefined;
  return {
    reason: refusal.reason,
    details: refusal.details,
    requestId: refusal.requestId,
    httpStatus: refusal.status,
  } as ErrorData;
}

/** The id of the request the service answered with this error (for its logs); undefined without one. */
export function creditsRequestId(error: unknown): string | undefined {
  const requestId = (serviceErrorData(error) as { requestId?: unknown } | undefined)?.requestId;
  return typeof requestId === 'string' ? requestId : undefined;
}

const numbers = (value: unknown, keys: readonly string[]) =>
  isRecord(value) && keys.every((key) => typeof value[key] === 'number');

/** The stable reason the service gave (INSUFFICIENT_CREDITS, VALIDATION, …); undefined for other errors. */
export function creditsErrorReason(error: unknown): string | undefined {
  return serviceErrorData(error)?.reason;
}

/**
 * Not enough credits (personal or pool); `error.data.details` says how many were required and available. With
 * an idempotency key the refusal is the key's result: sending the key again answers this refusal again, even
 * after a top-up. To try again once credits arrived, send a new key.
 */
export function isInsufficientCredits(error: unknown): error is InsufficientCreditsError {
  const data = serviceErrorData(error);
  return data?.code === 'PAYMENT_REQUIRED' && numbers(data.details, ['required', 'available']);
}

/**
 * A spending limit (e.g. DAILY_LIMIT_EXCEEDED in a guild); details: limit, spent so far, requested. Like a
 * refusal for credits it is the key's result: a new attempt (a raised limit, the next day) needs a new key.
 */
export function isLimitExceeded(error: unknown): error is LimitExceededError {
  const data = serviceErrorData(error);
  if (!data?.reason.endsWith('_LIMIT_EXCEEDED')) return false;
  return numbers(data.details, ['limit', 'spent', 'requested']);
}

/** The idempotency key was already used with a different request. */
export function isIdempotencyConflict(error: unknown): error is IdempotencyConflictError {
  return serviceErrorData(error)?.reason === 'IDEMPOTENCY_CONFLICT';
}

/**
 * The service lost its database connection and cannot say whether the call took effect (HTTP 503). A call
 * with an idempotency key is retried with the same key (the retry link does this), which answers the first
 * result if it was applied; a call without one must not be repeated blindly — check the balance or the
 * transactions first.
 */
export function isOutcomeUnknown(error: unknown): error is CreditsErrorWith<'OUTCOME_UNKNOWN', unknown> {
  return serviceErrorData(error)?.reason === 'OUTCOME_UNKNOWN';
}

/** Network errors that say the request never left: nothing can have happened. */
const NEVER_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ERR_INVALID_URL']);

function errorCodes(error: unknown): string[] {
  const codes: string[] = [];
  for (let cause = error, depth = 0; isRecord(cause) && depth < 8; depth++) {
    if (typeof cause.code === 'string') codes.push(cause.code);
    cause = cause.cause;
  }
  return codes;
}

/**
 * Whether a failed call may still have taken effect on the service: the test to apply before repeating a
 * money call that carries no idempotency key (with a key, repeat it with the same key: the retry link does).
 * True for OUTCOME_UNKNOWN, a connection lost or reset after the request was sent, a 502/504 or other
 * non-JSON answer from in between, an abort or timeout, and an internal error (500); false when the service
 * answered a refusal (4xx, 503 DATABASE_UNAVAILABLE…) or the request never reached it (connection refused,
 * unknown host). When true, read the balance or the transactions before trying again.
 */
export function mayHaveTakenEffect(error: unknown): boolean {
  if (isOutcomeUnknown(error)) return true;
  const data = serviceErrorData(error);
  if (data) return data.httpStatus !== undefined && data.httpStatus >= 500 && data.httpStatus !== 503;
  const transport = error instanceof CreditsTransportError ? error : (error as { cause?: unknown })?.cause;
  if (transport instanceof CreditsTransportError) {
    if (transport.status === undefined)
      return !errorCodes(transport.cause).some((code) => NEVER_SENT.has(code));
    return transport.status >= 500 || transport.status === 408;
  }
  // An abort, a timeout, or anything the client cannot classify: assume the worst.
  return true;
}

/** Missing, expired or invalid credentials (bearer token or service key). */
export function isUnauthorized(error: unknown): error is UnauthorizedError {
  return serviceErrorData(error)?.code === 'UNAUTHORIZED';
}
