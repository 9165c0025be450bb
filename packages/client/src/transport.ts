import { getFetch } from '@trpc/client';

/** A fetch implementation, typed as tRPC types it (the global fetch fits). */
export type CustomFetch = ReturnType<typeof getFetch>;

/**
 * A request that got no answer from the credits service: the network failed (`status` undefined), or
 * something in between (a proxy, a load balancer) answered with a non-JSON response.
 */
export class CreditsTransportError extends Error {
  constructor(
    message: string,
    readonly status: number | undefined,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'CreditsTransportError';
  }
}

interface HttpResponse {
  status?: number;
  headers?: { get(name: string): string | null };
}

/**
 * fetch, with failures that tRPC cannot read turned into a CreditsTransportError: the service always
 * answers JSON, so an HTML 502 from a proxy says "HTTP 502" rather than "Unexpected token <", and carries
 * the status the retry policy needs.
 */
export function transportFetch(custom: CustomFetch | undefined): CustomFetch {
  const fetchImpl = getFetch(custom);
  return async (input, init) => {
    let response: Awaited<ReturnType<CustomFetch>>;
    try {
      response = await fetchImpl(input, init);
    } catch (error) {
      if (init?.signal?.aborted) throw error;
      throw new CreditsTransportError('The credits service could not be reached', undefined, {
        cause: error,
      });
    }
    const { status, headers } = response as HttpResponse;
    const contentType = headers?.get('content-type') ?? '';
    if (status !== undefined && !contentType.includes('json')) {
      throw new CreditsTransportError(
        `HTTP ${status} from between the client and the credits service`,
        status,
      );
    }
    return response;
  };
}
