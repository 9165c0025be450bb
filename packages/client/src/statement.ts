import type { CreditsClientOptions, InternalCreditsClientOptions } from './clients.ts';
import { CreditsRequestError } from './request-error.ts';
import { type CustomFetch, transportFetch } from './transport.ts';

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
  // Network failures, a non-JSON answer from in between, and the service's JSON refusals become the same
  // errors as over tRPC (transportFetch).
  const response = (await transportFetch(options.fetch as CustomFetch | undefined, 'any')(url, {
    headers: { ...extra, ...credentials, accept: 'text/csv' },
  })) as unknown as Response;
  if (response.ok) return response;
  await response.body?.cancel();
  throw new CreditsRequestError(`HTTP ${response.status}`, response.status, 'UNKNOWN', undefined, undefined);
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
