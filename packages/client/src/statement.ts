import type { CreditsClientOptions, InternalCreditsClientOptions } from './clients.ts';
import { CreditsTransportError } from './transport.ts';

/**
 * The statement as CSV (GET /api/v1/credits/statement.csv and its internal twin): plain HTTP, since the
 * service streams it rather than answering a tRPC call. The JSON pages of the same statement are the
 * procedures `credits.statement` and `internal.credits.statement` of the clients.
 */

export interface StatementRange {
  /** Start, inclusive: a Date or an ISO 8601 date-time with a zone. */
  from: Date | string;
  /** End, exclusive. */
  to: Date | string;
}

/** A refusal of the service (4xx/5xx with its JSON error body): the same reason as over tRPC. */
export class CreditsRequestError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly reason: string,
    readonly details: unknown,
    readonly requestId: string | undefined,
  ) {
    super(message);
    this.name = 'CreditsRequestError';
  }
}

const iso = (value: Date | string) => (value instanceof Date ? value.toISOString() : value);

type Options = Pick<CreditsClientOptions, 'url' | 'fetch' | 'headers'>;

async function fetchCsv(
  options: Options,
  path: string,
  query: Record<string, string>,
  credentials: Record<string, string>,
) {
  const url = `${options.url.replace(/\/+$/, '')}${path}?${new URLSearchParams(query)}`;
  const extra = typeof options.headers === 'function' ? await options.headers() : options.headers;
  const fetchImpl = (options.fetch ?? fetch) as typeof fetch;
  let response: Response;
  try {
    response = await fetchImpl(url, { headers: { ...extra, ...credentials, accept: 'text/csv' } });
  } catch (error) {
    throw new CreditsTransportError('The credits service could not be reached', undefined, { cause: error });
  }
  if (response.ok) return response;
  const type = response.headers.get('content-type') ?? '';
  if (!type.includes('json')) {
    await response.body?.cancel();
    throw new CreditsTransportError(
      `HTTP ${response.status} from between the client and the credits service`,
      response.status,
    );
  }
  const body = (await response.json()) as {
    error?: { message?: string; reason?: string; details?: unknown; requestId?: string };
  };
  throw new CreditsRequestError(
    body.error?.message ?? `HTTP ${response.status}`,
    response.status,
    body.error?.reason ?? 'UNKNOWN',
    body.error?.details,
    body.error?.requestId,
  );
}

/**
 * The user's statement of [from, to) as CSV. Resolves to the Response once the service has started
 * answering (its `body` streams the file: read it with `text()` or as a stream); refusals throw a
 * CreditsRequestError. The last line is the closing balance: a file without it was cut off.
 */
export async function fetchStatementCsv(
  options: CreditsClientOptions,
  range: StatementRange,
): Promise<Response> {
  const token = await options.getToken();
  return fetchCsv(
    options,
    '/api/v1/credits/statement.csv',
    { from: iso(range.from), to: iso(range.to) },
    token ? { authorization: `Bearer ${token}` } : {},
  );
}

/** A user's statement of [from, to) as CSV, for services (X-Service-Key). */
export async function fetchInternalStatementCsv(
  options: InternalCreditsClientOptions,
  request: StatementRange & { userId: string },
): Promise<Response> {
  return fetchCsv(
    options,
    '/api/v1/internal/credits/statement.csv',
    { userId: request.userId, from: iso(request.from), to: iso(request.to) },
    { 'x-service-key': options.serviceKey, 'x-app-id': options.appId },
  );
}
