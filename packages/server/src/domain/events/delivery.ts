import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { assertPublicHost, BlockedAddressError, checkedLookup } from './address-policy.ts';

/**
 * How one attempt ended. Only `delivered` (a 2xx answer) ends the retries. `aborted`: cut short by this
 * process stopping — says nothing about the endpoint, and is not an attempt of its (worker.ts gives the claim back).
 */
export type AttemptOutcome = 'delivered' | 'rejected' | 'timeout' | 'unreachable' | 'blocked' | 'aborted';

export interface AttemptResult {
  outcome: AttemptOutcome;
  /** The HTTP status, when there was an answer. */
  status: number | null;
  /** What went wrong, for the deliveries listing; null when delivered. */
  error: string | null;
}

export interface SendOptions {
  timeoutMs: number;
  allowPrivate: boolean;
  /** Aborts the send early (the scheduler stopping): the outcome is `aborted`. */
  signal?: AbortSignal | undefined;
}

const USER_AGENT = 'mana-credits-webhooks/1';

/**
 * POSTs one signed body to an endpoint and says how it went. The whole attempt — lookup, connect, request
 * and the status line — is bounded by `timeoutMs`; redirects are not followed (a 3xx is a failure). The host
 * is checked against the address policy here, on the addresses actually connected to.
 */
export async function sendDelivery(
  url: string,
  body: string,
  headers: Record<string, string>,
  options: SendOptions,
): Promise<AttemptResult> {
  let target: URL;
  try {
    target = new URL(url);
  } catch {
    return { outcome: 'unreachable', status: null, error: 'invalid URL' };
  }
  const timeout = AbortSignal.timeout(options.timeoutMs);
  const signal = options.signal ? AbortSignal.any([timeout, options.signal]) : timeout;
  try {
    await assertPublicHost(target, options.allowPrivate);
    const status = await post(target, body, headers, signal, options.allowPrivate);
    if (status >= 200 && status < 300) return { outcome: 'delivered', status, error: null };
    return { outcome: 'rejected', status, error: `answered ${status}` };
  } catch (error) {
    if (error instanceof BlockedAddressError)
      return { outcome: 'blocked', status: null, error: error.message };
    if (options.signal?.aborted && !timeout.aborted) {
      return { outcome: 'aborted', status: null, error: 'cut short: this instance is stopping' };
    }
    if (signal.aborted) {
      return { outcome: 'timeout', status: null, error: `no answer within ${options.timeoutMs} ms` };
    }
    const code = (error as { code?: string }).code;
    const message = error instanceof Error ? error.message : String(error);
    return { outcome: 'unreachable', status: null, error: code ? `${code}: ${message}` : message };
  }
}

function post(
  target: URL,
  body: string,
  headers: Record<string, string>,
  signal: AbortSignal,
  allowPrivate: boolean,
): Promise<number> {
  const request = target.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise<number>((resolve, reject) => {
    const outgoing = request(
      target,
      {
        method: 'POST',
        headers: {
          ...headers,
          'content-type': 'application/json',
          'content-length': String(Buffer.byteLength(body)),
          'user-agent': USER_AGENT,
        },
        lookup: checkedLookup(allowPrivate),
        signal,
        // One connection per attempt: no pooled socket outlives the check of its address.
        agent: false,
      },
      (response) => {
        const status = response.statusCode ?? 0;
        // The answer's body is not read: the status decides.
        response.resume();
        response.on('error', () => {});
        resolve(status);
        response.destroy();
      },
    );
    outgoing.on('error', reject);
    outgoing.end(body);
  });
}

/**
 * The wait before the next attempt after attempt number `attempt` (1 = the first) failed: the schedule's entry,
 * ±20 % jitter (so endpoints that fail together are not retried in lockstep); null when the schedule is used up
 * (attempts = schedule length + 1).
 */
export function retryDelayMs(
  attempt: number,
  scheduleMs: readonly number[],
  random: () => number = Math.random,
): number | null {
  const base = scheduleMs[attempt - 1];
  if (base === undefined) return null;
  return Math.max(0, Math.round(base * (0.8 + 0.4 * random())));
}
