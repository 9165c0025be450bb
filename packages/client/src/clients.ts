import type { AppRouter } from '@mana-credits/server/router';
import {
  createTRPCClient,
  httpBatchLink,
  type OperationLink,
  type TRPCClient,
  TRPCClientError,
  type TRPCLink,
} from '@trpc/client';
import { observable, type Unsubscribable } from '@trpc/server/observable';
import { deserialize, serialize } from 'superjson';
import { abortedCall, idempotentRetryLink, type RetryOptions, snapshotInputLink } from './retry.ts';
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

/** The headers of a request and the account they act for (a user client: the token's subject). */
interface Credentials {
  account: string;
  headers: HeaderMap;
}

/** The signed-in account changed while a call made for the previous one waited to be retried. */
export class AccountChangedError extends Error {
  constructor() {
    super('The signed-in account changed before this call was sent; it was not sent for the new one');
    this.name = 'AccountChangedError';
  }
}

/** How many accounts keep a batch link of their own (a user client sees one, or a few across sign-ins). */
const ACCOUNTS_KEPT = 8;

/**
 * Pins each call to the account its credentials named when it was made: its retries are sent only for that
 * account (an idempotency key is scoped to its account, so a retry sent with another user's token would be
 * a new charge to them). Calls of one account are batched together, never with another's.
 */
function accountLinks(
  credentials: () => Promise<Credentials>,
  batchFor: (account: string) => TRPCLink<AppRouter>,
): { pin: TRPCLink<AppRouter>; send: TRPCLink<AppRouter> } {
  const pin: TRPCLink<AppRouter> =
    () =>
    ({ op, next }) =>
      observable((observer) => {
        let subscription: Unsubscribable | undefined;
        let cancelled = false;
        // An abort while the credentials are being asked for ends the call at once.
        const onAbort = () => {
          if (cancelled) return;
          cancelled = true;
          observer.error(abortedCall(op.signal));
        };
        if (op.signal?.aborted) onAbort();
        op.signal?.addEventListener('abort', onAbort, { once: true });
        credentials().then(
          ({ account }) => {
            op.signal?.removeEventListener('abort', onAbort);
            if (!cancelled)
              subscription = next({ ...op, context: { ...op.context, account } }).subscribe(observer);
          },
          (error: unknown) => {
            op.signal?.removeEventListener('abort', onAbort);
            if (!cancelled) observer.error(TRPCClientError.from(error as Error));
          },
        );
        return () => {
          cancelled = true;
          op.signal?.removeEventListener('abort', onAbort);
          subscription?.unsubscribe();
        };
      });
  const send: TRPCLink<AppRouter> = (runtime) => {
    const links = new Map<string, OperationLink<AppRouter>>();
    return ({ op, next }) => {
      const account = String((op.context as { account?: unknown }).account ?? '');
      let link = links.get(account);
      if (!link) {
        link = batchFor(account)(runtime);
        links.set(account, link);
        if (links.size > ACCOUNTS_KEPT) links.delete(links.keys().next().value as string);
      }
      return link({ op, next });
    };
  };
  return { pin, send };
}

/** One ask for the credentials serves every call made in the same tick (getToken may go to the network). */
function sharedPerTick(credentials: () => Promise<Credentials>): () => Promise<Credentials> {
  let pending: Promise<Credentials> | undefined;
  return () => {
    if (!pending) {
      pending = credentials();
      setTimeout(() => {
        pending = undefined;
      }, 0);
    }
    return pending;
  };
}

function createClient(
  options: CommonOptions,
  credentials: () => Promise<Credentials>,
): TRPCClient<AppRouter> {
  const fetch = transportFetch(options.fetch, 'json', options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  const { pin, send } = accountLinks(sharedPerTick(credentials), (account) =>
    httpBatchLink<AppRouter>({
      url: `${options.url.replace(/\/+$/, '')}/trpc`,
      // The named functions rather than the default export: the same under ESM and under require(esm).
      transformer: { serialize, deserialize },
      maxItems: MAX_BATCH_ITEMS,
      maxURLLength: MAX_URL_LENGTH,
      fetch,
      async headers() {
        const extra = typeof options.headers === 'function' ? await options.headers() : options.headers;
        const now = await credentials();
        if (now.account !== account) throw new AccountChangedError();
        return { ...extra, ...now.headers };
      },
    }),
  );
  return createTRPCClient<AppRouter>({
    links:
      options.retry === false
        ? [pin, send]
        : [snapshotInputLink(), pin, idempotentRetryLink(options.retry), send],
  });
}

/** The subject of a JWT, read without verifying it (the service verifies); the token itself when unreadable. */
function accountOfToken(token: string): string {
  try {
    const payload = token.split('.')[1] ?? '';
    const json = atob(payload.replace(/-/g, '+').replace(/_/g, '/'));
    const sub = (JSON.parse(json) as { sub?: unknown }).sub;
    return typeof sub === 'string' ? `user:${sub}` : `token:${token}`;
  } catch {
    return `token:${token}`;
  }
}

/** A client for user-facing apps: every request carries the user's bearer token. */
export function createCreditsClient(options: CreditsClientOptions): CreditsClient {
  return createClient(options, async (): Promise<Credentials> => {
    const token = await options.getToken();
    return token
      ? { account: accountOfToken(token), headers: { authorization: `Bearer ${token}` } }
      : { account: 'anonymous', headers: {} };
  });
}

/** A client for services: every request carries the service key and the calling app's id. */
export function createInternalCreditsClient(options: InternalCreditsClientOptions): InternalCreditsClient {
  const credentials = {
    account: 'service',
    headers: { 'x-service-key': options.serviceKey, 'x-app-id': options.appId },
  };
  return createClient(options, async () => credentials);
}
