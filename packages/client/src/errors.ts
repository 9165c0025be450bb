import type { AppRouter } from '@mana-credits/server/router';
import type { TRPCClientError } from '@trpc/client';

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

/** The error's data when it came from the credits service (read by shape, so two copies of @trpc/client work). */
function serviceErrorData(error: unknown): ErrorData | undefined {
  if (!(error instanceof Error)) return undefined;
  const data = (error as { data?: unknown }).data;
  return isRecord(data) && typeof data.reason === 'string' ? (data as ErrorData) : undefined;
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

/** Missing, expired or invalid credentials (bearer token or service key). */
export function isUnauthorized(error: unknown): error is UnauthorizedError {
  return serviceErrorData(error)?.code === 'UNAUTHORIZED';
}
