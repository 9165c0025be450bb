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
  /** What a successful answer is: JSON (tRPC), or anything (the statement CSV). */
  success: 'json' | 'any' = 'json',
  /** How long one request may take, its answer included; 0 = no limit. */
  timeoutMs = 0,
): CustomFetch {
  const fetchImpl = getFetch(custom);
  return async (input, init) => {
    let response: Awaited<ReturnType<CustomFetch>>;
    const timeout = timeoutMs > 0 ? AbortSignal.timeout(timeoutMs) : undefined;
    const signal =
      timeout && init?.signal ? AbortSignal.any([init.signal, timeout]) : (timeout ?? init?.signal);
    try {
      response = await fetchImpl(input, { ...init, ...(signal ? { signal } : {}) });
    } catch (error) {
      if (init?.signal?.aborted) throw error;
      if (timeout?.aborted) {
        // Sent, perhaps acted on, never answered: a failure in transit whose outcome is unknown.
        throw new CreditsTransportError(
          `No answer from the credits service within ${timeoutMs} ms`,
          undefined,
          {
            cause: error,
          },
        );
      }
      throw new CreditsTransportError('The credits service could not be reached', undefined, {
        cause: error,
      });
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
