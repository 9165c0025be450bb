import type { AppRouter } from '@mana-credits/server/router';
import { retryLink, TRPCClientError, type TRPCLink } from '@trpc/client';
import { observable } from '@trpc/server/observable';
import { deserialize, serialize } from 'superjson';
import { CreditsRequestError } from './request-error.ts';
import { CreditsTransportError, retryAfterMsOf } from './transport.ts';

export interface RetryOptions {
  /** Retries after the first attempt, 0–10. Default 3. */
  retries?: number;
  /** Delay before the first retry, doubled for each further one (with jitter). Default 250 ms. */
  baseDelayMs?: number;
  /** Longest backoff delay. Default 5000 ms. */
  maxDelayMs?: number;
  /**
   * The longest Retry-After the client waits for (a 503 while the service migrates says 5 s); an answer asking
   * for longer is not retried. Default 30000 ms.
   */
  maxRetryAfterMs?: number;
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

/** The Retry-After of a failed call's answer, in milliseconds, when it had one. */
function retryAfterMsOfError(error: TRPCClientError<AppRouter>): number | undefined {
  const cause = error.cause;
  if (cause instanceof CreditsTransportError || cause instanceof CreditsRequestError)
    return cause.retryAfterMs;
  const response = error.meta?.response as { headers?: { get(name: string): string | null } } | undefined;
  return retryAfterMsOf(response?.headers?.get('retry-after'));
}

function statusOf(error: TRPCClientError<AppRouter>): number | undefined {
  const cause = error.cause;
  if (cause instanceof CreditsTransportError || cause instanceof CreditsRequestError) return cause.status;
  return error.data?.httpStatus ?? (error.meta?.response as { status?: number } | undefined)?.status;
}

/**
 * Network failures and 502/503/504 (from a proxy, or the service's own 503: SERVICE_UNAVAILABLE,
 * DATABASE_UNAVAILABLE, MIGRATING, OUTCOME_UNKNOWN), and a 429 that says when to come back (Retry-After).
 * Only consulted for queries and for mutations that carry a key: after a 503 OUTCOME_UNKNOWN a mutation may
 * have taken effect, which only a key makes safe to repeat.
 */
export function isTransientFailure(error: TRPCClientError<AppRouter>): boolean {
  const cause = error.cause;
  if (cause instanceof CreditsTransportError && cause.status === undefined) return true;
  const status = statusOf(error);
  if (status === 429) return retryAfterMsOfError(error) !== undefined;
  return status !== undefined && RETRYABLE_STATUSES.has(status);
}

/** Exponential backoff with jitter: half the delay is fixed, half random, so clients do not retry in step. */
export function retryDelayMs(attempt: number, options: Required<RetryOptions>): number {
  const ceiling = Math.min(options.maxDelayMs, options.baseDelayMs * 2 ** (attempt - 1));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

const clamp = (value: number | undefined, fallback: number, min: number, max: number) =>
  Number.isFinite(value) ? Math.min(max, Math.max(min, value as number)) : fallback;

/**
 * Retries mutations that carry an idempotency key, with the same input (so the same key), when they failed
 * in transit; the server answers a repeat with the first result, never a second debit. Queries (reads) are
 * retried the same way. Mutations without a key are never retried here. An answer the server gave — a success or a refusal such as
 * INSUFFICIENT_CREDITS — is never retried: the refusal is recorded under the key, so the same key would
 * answer it again; a new attempt (after a top-up) is the caller's, with a new key.
 *
 * The wait is the backoff, or the answer's Retry-After when longer (up to maxRetryAfterMs). The calls of one
 * failed batch request share one wait and one timer, which sends them on in the same tick, so that they are
 * batched again into one request instead of scattering (a timer each, as tRPC's retryLink keeps them, fire
 * in separate timer phases when the process is late by a millisecond between creating them).
 */
export function idempotentRetryLink(options: RetryOptions = {}): TRPCLink<AppRouter> {
  const settings: Required<RetryOptions> = {
    retries: Math.floor(clamp(options.retries, 3, 0, 10)),
    baseDelayMs: clamp(options.baseDelayMs, 250, 0, 60_000),
    maxDelayMs: clamp(options.maxDelayMs, 5000, 0, 60_000),
    maxRetryAfterMs: clamp(options.maxRetryAfterMs, 30_000, 0, 600_000),
  };
  // The shared wait of each failed request, keyed by what its calls' errors share: the response (a gateway's
  // JSON that is not tRPC's gives each call an error cause of its own, but one response), else the cause (a
  // fetch that failed). One per request, whatever attempt each of its calls was at (a new call may have
  // joined a retry in one batch): a request fails only once.
  const gates = new WeakMap<object, RetryGate>();
  // The gate an operation waits at before its next attempt: set by `retry`, taken by the gate link below,
  // which retryLink calls right away (its own delay is 0).
  const waitingAt = new Map<number, RetryGate>();
  const retrying = retryLink<AppRouter>({
    retry: ({ op, error, attempts }) => {
      if (
        attempts > settings.retries ||
        op.signal?.aborted ||
        !isRepeatable(op) ||
        !isTransientFailure(error)
      ) {
        return false;
      }
      const retryAfter = retryAfterMsOfError(error);
      if (retryAfter !== undefined && retryAfter > settings.maxRetryAfterMs) return false;
      const request = (error.meta?.response ?? error.cause ?? error) as object;
      let gate = gates.get(request);
      if (!gate) {
        gate = new RetryGate(Math.max(retryDelayMs(attempts, settings), retryAfter ?? 0), waitingAt);
        gates.set(request, gate);
      }
      gate.expect(op.id);
      return true;
    },
    retryDelayMs: () => 0,
  });
  const waiting: TRPCLink<AppRouter> =
    () =>
    ({ op, next }) => {
      const gate = waitingAt.get(op.id);
      if (!gate) return next(op);
      waitingAt.delete(op.id);
      // A call aborted while it waits is not sent again (a batch goes out unless all its calls were aborted,
      // so the signal alone would not stop it): it fails with the abort, as a fetch would.
      const signal = op.signal;
      return observable((observer) => {
        let subscription: { unsubscribe(): void } | undefined;
        let leave = () => {};
        const onAbort = () => {
          leave();
          observer.error(abortedCall(signal));
        };
        // Listening before joining: a wait already over starts the call at once, and removes the listener.
        signal?.addEventListener('abort', onAbort, { once: true });
        leave = gate.wait(() => {
          signal?.removeEventListener('abort', onAbort);
          if (signal?.aborted) observer.error(abortedCall(signal));
          else subscription = next(op).subscribe(observer);
        });
        return () => {
          signal?.removeEventListener('abort', onAbort);
          leave();
          subscription?.unsubscribe();
        };
      });
    };
  return (runtime) => {
    const retry = retrying(runtime);
    const wait = waiting(runtime);
    return ({ op, next }) => retry({ op, next: (attempt) => wait({ op: attempt, next }) });
  };
}

/** The error of a call its caller aborted: the signal's reason when it is an Error, as fetch does. */
export function abortedCall(signal: AbortSignal | null | undefined): TRPCClientError<AppRouter> {
  return TRPCClientError.from(
    signal?.reason instanceof Error ? signal.reason : new DOMException('The call was aborted', 'AbortError'),
  );
}

/**
 * One timer for the retries of one failed request: it starts them all in one callback. It runs from the first
 * failure decided, and keeps a Node process alive only while a call waits on it (a caller that gave up does
 * not hold the process open for the rest of the wait).
 */
class RetryGate {
  private readonly starts = new Set<() => void>();
  private readonly expected = new Set<number>();
  private readonly timer: ReturnType<typeof setTimeout>;
  private fired = false;

  constructor(
    delayMs: number,
    private readonly waitingAt: Map<number, RetryGate>,
  ) {
    this.timer = setTimeout(() => this.fire(), delayMs);
    this.hold(false);
  }

  /** An operation that will wait here (retryLink sends it on as soon as `retry` has answered). */
  expect(opId: number): void {
    this.expected.add(opId);
    this.waitingAt.set(opId, this);
  }

  /** Runs `start` when the wait is over (at once if it already is); the returned function leaves the queue. */
  wait(start: () => void): () => void {
    if (this.fired) {
      start();
      return () => {};
    }
    this.starts.add(start);
    this.hold(true);
    return () => {
      this.starts.delete(start);
      if (this.starts.size === 0) this.hold(false);
    };
  }

  /** Node only (a browser's timer is a number): whether the timer keeps the process alive. */
  private hold(alive: boolean): void {
    const timer = this.timer as { ref?: () => void; unref?: () => void };
    if (alive) timer.ref?.();
    else timer.unref?.();
  }

  private fire(): void {
    this.fired = true;
    // Operations that were expected but never came (their caller gave up in between) are forgotten.
    for (const opId of this.expected) if (this.waitingAt.get(opId) === this) this.waitingAt.delete(opId);
    const starts = [...this.starts];
    this.starts.clear();
    for (const start of starts) start();
  }
}

/** Marks, in a call's context, a mutation whose input carried an idempotency key when the call was made. */
const KEYED = 'manaCreditsKeyed';

/**
 * A query only reads, so sending it again changes nothing; a mutation only when it carried a key — decided
 * once, when the call was made (snapshotInputLink), never from an input that may have changed since.
 */
function isRepeatable(op: { type: string; context: unknown }): boolean {
  if (op.type === 'query') return true;
  return op.type === 'mutation' && (op.context as { [KEYED]?: unknown })[KEYED] === true;
}

/**
 * Takes a copy of every mutation's input when the call is made — the form that is sent, through superjson —
 * so that its retries send exactly that (same key, same payload) even if the caller changes the object
 * meanwhile, and decides then, once, whether the call carries a key (only such calls are retried). An input
 * that cannot be copied fails the call rather than being sent as a live object.
 */
export function snapshotInputLink(): TRPCLink<AppRouter> {
  return () =>
    ({ op, next }) => {
      if (op.type !== 'mutation') return next(op);
      let input: unknown;
      try {
        input = deserialize(JSON.parse(JSON.stringify(serialize(op.input))));
      } catch (error) {
        return observable((observer) => {
          observer.error(TRPCClientError.from(error as Error));
        });
      }
      return next({ ...op, input, context: { ...op.context, [KEYED]: carriesIdempotencyKey(input) } });
    };
}
