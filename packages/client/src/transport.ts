import { getFetch } from '@trpc/client';
import { CreditsRequestError } from './request-error.ts';

/** A fetch implementation, typed as tRPC types it (the global fetch fits). */
export type CustomFetch = ReturnType<typeof getFetch>;

/**
 * A request that got no answer from the credits service: the network failed (`status` undefined), or
 * something in between (a proxy, a load balancer) answered with a non-JSON response.
 */
export class CreditsTransportError extends Error {
  /** The answer's Retry-After in milliseconds, when it had one. */
  readonly retryAfterMs: number | undefined;

  constructor(
    message: string,
    readonly status: number | undefined,
    options?: { cause?: unknown; retryAfterMs?: number | undefined },
  ) {
    super(message, options);
    this.name = 'CreditsTransportError';
    this.retryAfterMs = options?.retryAfterMs;
  }
}

/** A Retry-After header (seconds, or an HTTP date) in milliseconds from now; undefined when absent or unreadable. */
export function retryAfterMsOf(value: string | null | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const at = Date.parse(trimmed);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** Statuses whose responses have no body (a Response cannot be built with one). */
const NULL_BODY_STATUSES = new Set([101, 204, 205, 304]);

interface HttpResponse {
  status?: number;
  headers?: { get(name: string): string | null };
  clone?: () => { json(): Promise<unknown> };
}

/** The service's REST error body ({ error: { message, reason, … } }) as a CreditsRequestError, else undefined. */
async function restRefusalOf(response: unknown, status: number): Promise<CreditsRequestError | undefined> {
  const { clone, headers } = response as HttpResponse;
  if (typeof clone !== 'function') return undefined;
  let body: unknown;
  try {
    body = await clone.call(response).json();
  } catch {
    return undefined;
  }
  const error = (body as { error?: Record<string, unknown> } | null)?.error;
  if (typeof error !== 'object' || error === null || typeof error.reason !== 'string') return undefined;
  return new CreditsRequestError(
    typeof error.message === 'string' ? error.message : `HTTP ${status}`,
    status,
    error.reason,
    error.details,
    typeof error.requestId === 'string' ? error.requestId : (headers?.get('x-request-id') ?? undefined),
    retryAfterMsOf(headers?.get('retry-after')),
  );
}

/**
 * fetch, with failures that tRPC cannot read turned into a CreditsTransportError: the service always
 * answers JSON, so an HTML 502 from a proxy says "HTTP 502" rather than "Unexpected token <", and carries
 * the status the retry policy needs.
 */
export function transportFetch(
  custom: CustomFetch | undefined,
  /** What a successful answer is: JSON (tRPC, read whole here), or anything (the statement CSV, streamed). */
  success: 'json' | 'any' = 'json',
  /** How long one request may take, its answer included; 0 = no limit. */
  timeoutMs = 0,
): CustomFetch {
  const fetchImpl = getFetch(custom);
  const limit =
    Number.isFinite(timeoutMs) && timeoutMs >= 1 ? Math.min(Math.floor(timeoutMs), 2 ** 31 - 1) : 0;
  return async (input, init) => {
    // One controller for the caller's abort and the timeout (AbortSignal.any is missing in older browsers).
    const controller = new AbortController();
    const callerSignal = init?.signal ?? undefined;
    const forwardAbort = () => controller.abort(callerSignal?.reason);
    if (callerSignal?.aborted) forwardAbort();
    callerSignal?.addEventListener('abort', forwardAbort, { once: true });
    let timedOut = false;
    const timer =
      limit > 0
        ? setTimeout(() => {
            timedOut = true;
            controller.abort();
          }, limit)
        : undefined;
    const inTransit = (error: unknown) => {
      if (callerSignal?.aborted) return error;
      return new CreditsTransportError(
        timedOut
          ? `No answer from the credits service within ${limit} ms`
          : 'The credits service could not be reached',
        undefined,
        { cause: error },
      );
    };
    let response: Awaited<ReturnType<CustomFetch>>;
    try {
      response = await fetchImpl(input, { ...init, signal: controller.signal });
      const raw = response as unknown as Response;
      if (success === 'json' && typeof raw.text === 'function') {
        // Read whole here, so that a connection lost or timed out while the answer arrives is a failure in
        // transit too (tRPC would read it after this returns and report a bare error).
        const text = await raw.text();
        response = new Response(NULL_BODY_STATUSES.has(raw.status) ? null : text, {
          status: raw.status,
          statusText: raw.statusText,
          headers: raw.headers,
        }) as unknown as Awaited<ReturnType<CustomFetch>>;
      }
    } catch (error) {
      throw inTransit(error);
    } finally {
      if (timer !== undefined) clearTimeout(timer);
      callerSignal?.removeEventListener('abort', forwardAbort);
    }
    const { status, headers } = response as HttpResponse;
    const contentType = headers?.get('content-type') ?? '';
    if (status !== undefined && !contentType.includes('json') && (success === 'json' || status >= 400)) {
      throw new CreditsTransportError(
        `HTTP ${status} from between the client and the credits service`,
        status,
        { retryAfterMs: retryAfterMsOf(headers?.get('retry-after')) },
      );
    }
    if (status !== undefined && status >= 400) {
      // The service answers a few refusals before tRPC sees the request (a body over the limit, a URL it
      // cannot read, a route that does not exist) in its REST error shape, which tRPC cannot read: keep
      // their reason and request id.
      const refusal = await restRefusalOf(response, status);
      if (refusal) throw refusal;
    }
    return response;
  };
}
