import type { AppRouter } from '@mana-credits/server/router';
import { createTRPCClient, httpBatchLink, type TRPCClient } from '@trpc/client';
import { deserialize, serialize } from 'superjson';
import { idempotentRetryLink, type RetryOptions, snapshotInputLink } from './retry.ts';
import { type CustomFetch, transportFetch } from './transport.ts';

/** The server refuses batches of more than 100 calls. */
const MAX_BATCH_ITEMS = 100;
/**
 * Batched queries travel as GET with their inputs in the URL: a longer batch is split, below the 8 KB many
 * proxies accept in a request line (and Node's 16 KB header limit, where the service answers 431).
 */
const MAX_URL_LENGTH = 6000;
/** A request still unanswered after this long is given up (a hung connection would otherwise wait forever). */
const DEFAULT_TIMEOUT_MS = 30_000;

type HeaderMap = Record<string, string>;

interface CommonOptions {
  /** Base URL of the credits service, e.g. `https://credits.example.com`; tRPC is at `${url}/trpc`. */
  url: string;
  /** A fetch implementation; default: the global fetch. */
  fetch?: CustomFetch;
  /** Extra headers for every request (a function is called per request). */
  headers?: HeaderMap | (() => HeaderMap | Promise<HeaderMap>);
  /**
   * Retry of mutations that carry an idempotencyKey after network errors, 502/503/504 and a 429 with
   * Retry-After, with the same key. Default: 3 retries, 250 ms doubling to at most 5 s, jittered, or the
   * answer's Retry-After when longer (up to 30 s). `false` turns it off.
   */
  retry?: RetryOptions | false;
  /**
   * How long one request may take, its answer included, in ms (each retry gets as long again); then it fails
   * as a failure in transit (retried when keyed, `mayHaveTakenEffect` true). Default 30000; 0 = no limit.
   */
  timeoutMs?: number;
}

export interface CreditsClientOptions extends CommonOptions {
  /** The user's JWT, asked for before every request (may be async); no Authorization header when empty. */
  getToken: () => string | null | undefined | Promise<string | null | undefined>;
}

export interface InternalCreditsClientOptions extends CommonOptions {
  /** Sent as X-Service-Key. */
  serviceKey: string;
  /** Sent as X-App-Id: names the calling service on ledger entries. */
  appId: string;
}

/** The procedures a user app may call (everything but `internal`). */
export type CreditsClient = Omit<TRPCClient<AppRouter>, 'internal'>;
/** The service-to-service procedures (`internal.*`). */
export type InternalCreditsClient = Pick<TRPCClient<AppRouter>, 'internal'>;

function createClient(options: CommonOptions, credentials: () => Promise<HeaderMap>): TRPCClient<AppRouter> {
  const batch = httpBatchLink<AppRouter>({
    url: `${options.url.replace(/\/+$/, '')}/trpc`,
    // The named functions rather than the default export: the same under ESM and under require(esm).
    transformer: { serialize, deserialize },
    maxItems: MAX_BATCH_ITEMS,
    maxURLLength: MAX_URL_LENGTH,
    fetch: transportFetch(options.fetch, 'json', options.timeoutMs ?? DEFAULT_TIMEOUT_MS),
    async headers() {
      const extra = typeof options.headers === 'function' ? await options.headers() : options.headers;
      return { ...extra, ...(await credentials()) };
    },
  });
  return createTRPCClient<AppRouter>({
    links:
      options.retry === false ? [batch] : [snapshotInputLink(), idempotentRetryLink(options.retry), batch],
  });
}

/** A client for user-facing apps: every request carries the user's bearer token. */
export function createCreditsClient(options: CreditsClientOptions): CreditsClient {
  return createClient(options, async (): Promise<HeaderMap> => {
    const token = await options.getToken();
    return token ? { authorization: `Bearer ${token}` } : {};
  });
}

/** A client for services: every request carries the service key and the calling app's id. */
export function createInternalCreditsClient(options: InternalCreditsClientOptions): InternalCreditsClient {
  const credentials = { 'x-service-key': options.serviceKey, 'x-app-id': options.appId };
  return createClient(options, async () => credentials);
}
