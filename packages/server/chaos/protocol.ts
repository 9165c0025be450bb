/** What chaos workers send and log: plain tRPC-over-HTTP calls with explicit outcomes. */

export type Outcome = 'ok' | 'refused' | 'unknown';

export interface Operation {
  /** Unique per run: `${worker}-${sequence}`. */
  id: string;
  kind: string;
  /** tRPC procedure path. */
  path: string;
  /** 'service' (X-Service-Key) or a user id whose token the worker holds. */
  actor: string;
  input: Record<string, unknown>;
  /** The account an operation moves when its input does not name it (e.g. a commit names a reservation). */
  account?: string;
  /**
   * No idempotency key and no natural one (a purchase starts a new one on every call): an unknown outcome is
   * never retried, it stays `unknown` and is checked with ≤ semantics (it may or may not have happened).
   */
  keyless?: boolean;
}

export interface LoggedOperation extends Operation {
  outcome: Outcome;
  result?: Record<string, unknown>;
  reason?: string;
  attempts: number;
}

export interface CallOptions {
  baseUrls: string[];
  serviceKey: string;
  tokens: Record<string, string>;
  timeoutMs: number;
}

/**
 * One attempt: 2xx → ok, 4xx → refused (a definite answer), anything else (5xx, timeout, reset, refused
 * connection) → unknown, which the caller may retry with the same idempotency key.
 */
export async function callOnce(
  operation: Operation,
  options: CallOptions,
  baseUrl: string,
): Promise<{ outcome: Outcome; result?: Record<string, unknown>; reason?: string }> {
  const headers: Record<string, string> = { 'content-type': 'application/json', 'x-app-id': 'chaos' };
  if (operation.actor === 'service') headers['x-service-key'] = options.serviceKey;
  else headers.authorization = `Bearer ${options.tokens[operation.actor]}`;
  try {
    const response = await fetch(`${baseUrl}/trpc/${operation.path}`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ json: operation.input }),
      signal: AbortSignal.timeout(options.timeoutMs),
    });
    const text = await response.text();
    if (response.status >= 200 && response.status < 300) {
      const body = JSON.parse(text) as { result: { data: { json: Record<string, unknown> } } };
      return { outcome: 'ok', result: body.result.data.json };
    }
    if (response.status >= 400 && response.status < 500) {
      let reason = `HTTP ${response.status}`;
      try {
        reason = (JSON.parse(text) as { error: { json: { data: { reason: string } } } }).error.json.data
          .reason;
      } catch {}
      return { outcome: 'refused', reason };
    }
    return { outcome: 'unknown', reason: `HTTP ${response.status}` };
  } catch (error) {
    return { outcome: 'unknown', reason: error instanceof Error ? error.name : 'error' };
  }
}

/** Small seeded PRNG (mulberry32): the same seed gives the same schedule. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
