import type { AppRouter } from '@mana-credits/server/router';
import { retryLink, type TRPCClientError, type TRPCLink } from '@trpc/client';
import { CreditsTransportError } from './transport.ts';

export interface RetryOptions {
  /** Retries after the first attempt. Default 3. */
  retries?: number;
  /** Delay before the first retry, doubled for each further one (with jitter). Default 250 ms. */
  baseDelayMs?: number;
  /** Longest single delay. Default 5000 ms. */
  maxDelayMs?: number;
}

const RETRYABLE_STATUSES = new Set([502, 503, 504]);

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null;

const isKey = (value: unknown) => typeof value === 'string' && value.length > 0;

/**
 * A mutation may be sent again only when the server will recognise the repeat: its input carries an
 * idempotencyKey, or it is a batch whose every item carries one.
 */
export function carriesIdempotencyKey(input: unknown): boolean {
  if (!isRecord(input)) return false;
  if (isKey(input.idempotencyKey)) return true;
  const items = input.items;
  return (
    Array.isArray(items) &&
    items.length > 0 &&
    items.every((item) => isRecord(item) && isKey(item.idempotencyKey))
  );
}

/**
 * Network failures and 502/503/504 (from a proxy, or the service's own 503: SERVICE_UNAVAILABLE,
 * DATABASE_UNAVAILABLE, OUTCOME_UNKNOWN). Only consulted for mutations that carry a key: after a 503
 * OUTCOME_UNKNOWN the call may have taken effect, which only a key makes safe to repeat.
 */
export function isTransientFailure(error: TRPCClientError<AppRouter>): boolean {
  const cause = error.cause;
  if (cause instanceof CreditsTransportError) {
    return cause.status === undefined || RETRYABLE_STATUSES.has(cause.status);
  }
  const status = error.data?.httpStatus ?? (error.meta?.response as { status?: number } | undefined)?.status;
  return status !== undefined && RETRYABLE_STATUSES.has(status);
}

/** Exponential backoff with jitter: half the delay is fixed, half random, so clients do not retry in step. */
export function retryDelayMs(attempt: number, options: Required<RetryOptions>): number {
  const ceiling = Math.min(options.maxDelayMs, options.baseDelayMs * 2 ** (attempt - 1));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/**
 * Retries mutations that carry an idempotency key, with the same input (so the same key), when they failed
 * in transit; the server answers a repeat with the first result, never a second debit. Queries and
 * mutations without a key are never retried here. An answer the server gave — a success or a refusal such as
 * INSUFFICIENT_CREDITS — is never retried: the refusal is recorded under the key, so the same key would
 * answer it again; a new attempt (after a top-up) is the caller's, with a new key.
 */
export function idempotentRetryLink(options: RetryOptions = {}): TRPCLink<AppRouter> {
  const settings: Required<RetryOptions> = {
    retries: options.retries ?? 3,
    baseDelayMs: options.baseDelayMs ?? 250,
    maxDelayMs: options.maxDelayMs ?? 5000,
  };
  return retryLink<AppRouter>({
    retry: ({ op, error, attempts }) =>
      attempts <= settings.retries &&
      op.type === 'mutation' &&
      !op.signal?.aborted &&
      carriesIdempotencyKey(op.input) &&
      isTransientFailure(error),
    retryDelayMs: (attempt) => retryDelayMs(attempt, settings),
  });
}
