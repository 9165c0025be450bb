/**
 * What the chaos and failover drivers send and log: plain tRPC-over-HTTP calls with explicit outcomes, the
 * operations both make, the retries of an unknown outcome and what later operations build on.
 */

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
  /** Unknown during the run, answered when retried with its key after it (settleUnknown). */
  settledLater?: boolean;
}

/** A logged operation with when it started and ended and how its attempts failed. */
export interface TimedOperation extends LoggedOperation {
  startedAt: number;
  endedAt: number;
  /** Attempts answered with an unknown outcome (5xx, reset, timeout), the last one included if it was. */
  failedAttempts: number;
  /** The first answer that was not ok/refused, for the report (e.g. `HTTP 503`). */
  firstFailure?: string;
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

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * One operation with up to `retries` retries of an unknown outcome (none for a keyless one), the first attempt
 * on `baseUrl` when given, the others on any instance.
 */
export async function callWithRetries(
  operation: Operation,
  options: { callOptions: CallOptions; retries: number },
  random: () => number,
  baseUrl?: string,
): Promise<TimedOperation> {
  const startedAt = Date.now();
  const urls = options.callOptions.baseUrls;
  const retries = operation.keyless ? 0 : options.retries;
  let attempts = 0;
  let failedAttempts = 0;
  let firstFailure: string | undefined;
  let answer: Awaited<ReturnType<typeof callOnce>> = { outcome: 'unknown' };
  while (attempts <= retries) {
    const url = attempts === 0 && baseUrl ? baseUrl : urls[Math.floor(random() * urls.length)]!;
    attempts++;
    answer = await callOnce(operation, options.callOptions, url);
    if (answer.outcome !== 'unknown') break;
    failedAttempts++;
    firstFailure ??= answer.reason;
    if (attempts <= retries) await sleep(100 + random() * 150);
  }
  return {
    ...operation,
    ...answer,
    attempts,
    failedAttempts,
    ...(firstFailure ? { firstFailure } : {}),
    startedAt,
    endedAt: Date.now(),
  };
}

/**
 * After a run: retries each operation whose outcome is still unknown with the same input (its key) on `url`,
 * up to `attempts` times, marking the ones that settle. Keyless ones are left unknown (checked with ≤
 * semantics). Returns how many were retried.
 */
export async function settleUnknown(
  operations: LoggedOperation[],
  callOptions: CallOptions,
  url: string,
  attempts: number,
): Promise<number> {
  const unknown = operations.filter((op) => op.outcome === 'unknown' && !op.keyless);
  for (const op of unknown) {
    for (let attempt = 0; attempt < attempts; attempt++) {
      const answer = await callOnce(op, { ...callOptions, timeoutMs: 10_000 }, url);
      if (answer.outcome !== 'unknown') {
        Object.assign(op, answer, { settledLater: true });
        break;
      }
      await sleep(500);
    }
  }
  return unknown.length;
}

/** Calls each operation once on `url`; any answer but ok stops the run (setting up accounts before it). */
export async function setUp(operations: Operation[], callOptions: CallOptions, url: string): Promise<void> {
  for (const operation of operations) {
    const answer = await callOnce(operation, callOptions, url);
    if (answer.outcome !== 'ok') throw new Error(`setup ${operation.id} failed: ${answer.reason}`);
  }
}

export interface SpentUsage {
  userId: string;
  transactionId: string;
}

export interface OpenHold {
  reservationId: string;
  userId: string;
  amount: number;
}

export interface CreatedGift {
  id: string;
  code: string;
  creator: string;
}

/**
 * What later operations build on, learnt from ok answers: spent usages (refunds), open holds (commit or
 * release) and created gifts (redeem or cancel); past `limits` the oldest usages and gifts are forgotten.
 */
export class Remembered {
  readonly spent: SpentUsage[] = [];
  readonly holds: OpenHold[] = [];
  readonly gifts: CreatedGift[] = [];

  constructor(private readonly limits: { spent: number; gifts: number }) {}

  remember(logged: LoggedOperation): void {
    if (logged.outcome !== 'ok' || !logged.result) return;
    if (logged.kind === 'use') {
      const userId = (logged.input.userId as string | undefined) ?? logged.actor;
      this.spent.push({ userId, transactionId: logged.result.transactionId as string });
      if (this.spent.length > this.limits.spent) this.spent.shift();
    } else if (logged.kind === 'reserve') {
      this.holds.push({
        reservationId: logged.result.reservationId as string,
        userId: logged.input.userId as string,
        amount: logged.input.amount as number,
      });
    } else if (logged.kind === 'gift.create') {
      this.gifts.push({
        id: logged.result.id as string,
        code: logged.result.code as string,
        creator: logged.actor,
      });
      if (this.gifts.length > this.limits.gifts) this.gifts.shift();
    }
  }
}

/** Where a debit or a hold says it comes from. */
export interface Usage {
  appId: string;
  description: string;
}

export interface BatchItem extends Usage {
  userId: string;
  amount: number;
  guildId?: string;
}

/**
 * The items of a logged useBatch call, each as the operation it stands for — `use` of the user, or `guild.use`
 * of the member — answered as its item was (a call refused or unknown as a whole: each item alike).
 */
export function itemsOfBatch(batch: LoggedOperation): LoggedOperation[] {
  const items = batch.input.items as (BatchItem & { idempotencyKey: string })[];
  const results = batch.result?.results as
    | ({ ok: true; transactionId: string } | { ok: false; error: { reason: string } })[]
    | undefined;
  return items.map(({ guildId, userId, ...item }, i) => {
    const answer = batch.outcome === 'ok' ? results?.[i] : undefined;
    const operation: Operation = guildId
      ? {
          id: item.idempotencyKey,
          kind: 'guild.use',
          path: 'guild.use',
          actor: userId,
          input: { guildId, ...item },
        }
      : {
          id: item.idempotencyKey,
          kind: 'use',
          path: 'internal.credits.use',
          actor: 'service',
          input: { userId, ...item },
        };
    if (batch.outcome !== 'ok') return { ...operation, outcome: batch.outcome, attempts: batch.attempts };
    if (!answer)
      return { ...operation, outcome: 'unknown', reason: 'no result for the item', attempts: batch.attempts };
    return answer.ok
      ? {
          ...operation,
          outcome: 'ok',
          result: { transactionId: answer.transactionId },
          attempts: batch.attempts,
        }
      : { ...operation, outcome: 'refused', reason: answer.error.reason, attempts: batch.attempts };
  });
}

/**
 * The operations both drivers make, by kind. `id` is the operation's and, where the procedure takes one, its
 * idempotency key; the others have a natural key (the hold, the gift and redeemer).
 */
export const newOperation = {
  use: (id: string, userId: string, amount: number, usage: Usage): Operation => ({
    id,
    kind: 'use',
    path: 'internal.credits.use',
    actor: 'service',
    input: { userId, amount, ...usage, idempotencyKey: id },
  }),
  /**
   * internal.credits.useBatch: personal debits and pool spends (`guildId` set: of member `userId`) in one call,
   * item i keyed `${id}.${i}`. Checked item by item (itemsOfBatch).
   */
  useBatch: (id: string, items: BatchItem[]): Operation => ({
    id,
    kind: 'use.batch',
    path: 'internal.credits.useBatch',
    actor: 'service',
    input: { items: items.map((item, i) => ({ ...item, idempotencyKey: `${id}.${i}` })) },
  }),
  /** The user's own debit, with their token. */
  userUse: (id: string, userId: string, amount: number, usage: Usage): Operation => ({
    id,
    kind: 'use',
    path: 'credits.use',
    actor: userId,
    input: { amount, ...usage, idempotencyKey: id },
  }),
  /** `lot`: expiry, priority and category of the granted lot (default: promotional, never expires). */
  grant: (
    id: string,
    userId: string,
    amount: number,
    reason: string,
    lot: { expiresAt?: string; priority?: number; category?: 'paid' | 'promotional' } = {},
  ): Operation => ({
    id,
    kind: 'grant',
    path: 'internal.credits.grant',
    actor: 'service',
    input: { userId, amount, reason, idempotencyKey: id, ...lot },
  }),
  refund: (id: string, usage: SpentUsage, description: string): Operation => ({
    id,
    kind: 'refund',
    path: 'internal.credits.refund',
    actor: 'service',
    input: {
      userId: usage.userId,
      transactionId: usage.transactionId,
      amount: 1,
      description,
      idempotencyKey: id,
    },
  }),
  reserve: (id: string, userId: string, amount: number, usage: Usage, ttlSeconds: number): Operation => ({
    id,
    kind: 'reserve',
    path: 'internal.credits.reserve',
    actor: 'service',
    input: { userId, amount, ...usage, ttlSeconds, idempotencyKey: id },
  }),
  /** Commits `amount` of the hold, or releases it when `amount` is undefined. */
  settleHold: (id: string, hold: OpenHold, amount: number | undefined): Operation => ({
    id,
    kind: amount === undefined ? 'release' : 'commit',
    path: amount === undefined ? 'internal.credits.release' : 'internal.credits.commit',
    actor: 'service',
    account: hold.userId,
    input:
      amount === undefined
        ? { reservationId: hold.reservationId }
        : { reservationId: hold.reservationId, amount },
  }),
  poolInit: (guildId: string): Operation => ({
    id: 'pool',
    kind: 'init',
    path: 'internal.guildPool.init',
    actor: 'service',
    input: { guildId },
  }),
  guildFund: (id: string, owner: string, guildId: string, amount: number): Operation => ({
    id,
    kind: 'guild.fund',
    path: 'guild.fund',
    actor: owner,
    input: { guildId, amount, idempotencyKey: id },
  }),
  guildUse: (id: string, member: string, guildId: string, amount: number, usage: Usage): Operation => ({
    id,
    kind: 'guild.use',
    path: 'guild.use',
    actor: member,
    input: { guildId, amount, ...usage, idempotencyKey: id },
  }),
  /** A split gift of 10 credits in 5 portions. */
  giftCreate: (id: string, creator: string): Operation => ({
    id,
    kind: 'gift.create',
    path: 'gifts.create',
    actor: creator,
    input: { type: 'split', totalCredits: 10, totalPortions: 5, idempotencyKey: id },
  }),
  giftRedeem: (id: string, gift: CreatedGift, redeemer: string): Operation => ({
    id,
    kind: 'gift.redeem',
    path: 'gifts.redeem',
    actor: redeemer,
    input: { code: gift.code },
  }),
  giftCancel: (id: string, gift: CreatedGift): Operation => ({
    id,
    kind: 'gift.cancel',
    path: 'gifts.cancel',
    actor: gift.creator,
    input: { id: gift.id },
  }),
};
