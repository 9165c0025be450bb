import {
  type CallOptions,
  callOnce,
  type LoggedOperation,
  type Operation,
  seededRandom,
} from '../chaos/protocol.ts';

/**
 * Money traffic for the failover run: `callers` concurrent loops in this process, each making one call at a
 * time — keyed debits (personal, by a user and by a service), batches, reserve/commit/release, guild fund and
 * use, gift create/redeem/cancel, grants and refunds — over the chaos protocol (../chaos/protocol.ts: 2xx ok,
 * 4xx refused, anything else unknown). An unknown outcome is retried a few times with the same input (the same
 * idempotency key, or the natural key of a commit, release, redemption or cancel); one still unknown stays in
 * the log and is settled after the run. Every call is logged with when it started and ended.
 */
export interface TimedOperation extends LoggedOperation {
  startedAt: number;
  endedAt: number;
  /** Attempts answered with an unknown outcome (5xx, reset, timeout), the last one included if it was. */
  failedAttempts: number;
  /** The first answer that was not ok/refused, for the report (e.g. `HTTP 503`). */
  firstFailure?: string;
  settledLater?: boolean;
}

export interface TrafficOptions {
  callOptions: CallOptions;
  users: string[];
  guildId: string;
  callers: number;
  seed: number;
  /** Retries of an unknown outcome inside the run (0: every failure is left to the settling phase). */
  retries: number;
}

export class Traffic {
  readonly operations: TimedOperation[] = [];
  private stopping = false;
  private loops: Promise<void>[] = [];
  private sequence = 0;
  private readonly random: () => number;
  private readonly spent: { userId: string; transactionId: string }[] = [];
  private readonly holds: { reservationId: string; userId: string; amount: number }[] = [];
  private readonly gifts: { id: string; code: string; creator: string }[] = [];

  constructor(private readonly options: TrafficOptions) {
    this.random = seededRandom(options.seed);
  }

  start(): void {
    this.loops = Array.from({ length: this.options.callers }, (_, caller) => this.loop(caller));
  }

  /** Lets every caller finish the call it is in, then returns. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.loops);
  }

  private async loop(caller: number): Promise<void> {
    const callRandom = seededRandom(this.options.seed * 31 + caller);
    while (!this.stopping) {
      const operation = this.next(caller);
      const logged = await runWithRetries(operation, this.options, callRandom);
      this.operations.push(logged);
      this.remember(logged);
    }
  }

  private pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.random() * items.length)] as T;
  }

  private int(min: number, max: number): number {
    return min + Math.floor(this.random() * (max - min + 1));
  }

  private next(caller: number): Operation {
    const id = `c${caller}-${++this.sequence}`;
    const users = this.options.users;
    const userId = this.pick(users);
    const roll = this.random();
    const use = { appId: 'failover', description: 'failover use', idempotencyKey: id };
    if (roll < 0.25) {
      return {
        id,
        kind: 'use',
        path: 'internal.credits.use',
        actor: 'service',
        input: { userId, amount: this.int(1, 5), ...use },
      };
    }
    if (roll < 0.35) {
      return {
        id,
        kind: 'use',
        path: 'credits.use',
        actor: userId,
        input: { amount: this.int(1, 5), ...use },
      };
    }
    if (roll < 0.43) {
      const items = Array.from({ length: this.int(2, 6) }, (_, j) => ({
        userId: this.pick(users),
        amount: this.int(1, 4),
        appId: 'failover',
        description: 'failover batch item',
        idempotencyKey: `${id}-${j}`,
      }));
      return { id, kind: 'batch', path: 'internal.credits.useBatch', actor: 'service', input: { items } };
    }
    if (roll < 0.51) {
      return {
        id,
        kind: 'reserve',
        path: 'internal.credits.reserve',
        actor: 'service',
        input: { userId, amount: this.int(1, 8), ...use, description: 'failover hold', ttlSeconds: 60 },
      };
    }
    if (roll < 0.6 && this.holds.length > 0) {
      const hold = this.holds.splice(Math.floor(this.random() * this.holds.length), 1)[0]!;
      const release = this.random() < 0.25;
      return {
        id,
        kind: release ? 'release' : 'commit',
        path: release ? 'internal.credits.release' : 'internal.credits.commit',
        actor: 'service',
        account: hold.userId,
        input: release
          ? { reservationId: hold.reservationId }
          : { reservationId: hold.reservationId, amount: this.int(1, hold.amount) },
      };
    }
    if (roll < 0.64) {
      return {
        id,
        kind: 'guild.fund',
        path: 'guild.fund',
        actor: users[0]!,
        input: { guildId: this.options.guildId, amount: this.int(1, 10), idempotencyKey: id },
      };
    }
    if (roll < 0.72) {
      return {
        id,
        kind: 'guild.use',
        path: 'guild.use',
        actor: this.pick(users.slice(1)),
        input: { guildId: this.options.guildId, amount: this.int(1, 3), ...use },
      };
    }
    if (roll < 0.77) {
      return {
        id,
        kind: 'gift.create',
        path: 'gifts.create',
        actor: userId,
        input: { type: 'split', totalCredits: 10, totalPortions: 5, idempotencyKey: id },
      };
    }
    if (roll < 0.83 && this.gifts.length > 0) {
      const gift = this.pick(this.gifts);
      const redeemer = this.pick(users.filter((user) => user !== gift.creator));
      return { id, kind: 'gift.redeem', path: 'gifts.redeem', actor: redeemer, input: { code: gift.code } };
    }
    if (roll < 0.85 && this.gifts.length > 0) {
      const gift = this.gifts.splice(Math.floor(this.random() * this.gifts.length), 1)[0]!;
      return { id, kind: 'gift.cancel', path: 'gifts.cancel', actor: gift.creator, input: { id: gift.id } };
    }
    if (roll < 0.92 && this.spent.length > 0) {
      const usage = this.spent.splice(Math.floor(this.random() * this.spent.length), 1)[0]!;
      return {
        id,
        kind: 'refund',
        path: 'internal.credits.refund',
        actor: 'service',
        input: { ...usage, amount: 1, description: 'failover refund', idempotencyKey: id },
      };
    }
    return {
      id,
      kind: 'grant',
      path: 'internal.credits.grant',
      actor: 'service',
      input: { userId, amount: this.int(1, 20), reason: 'failover grant', idempotencyKey: id },
    };
  }

  /** What later calls build on: spent usages (refunds), holds (commit/release), gifts (redeem/cancel). */
  private remember(logged: TimedOperation): void {
    if (logged.outcome !== 'ok' || !logged.result) return;
    if (logged.kind === 'use') {
      const userId = (logged.input.userId as string | undefined) ?? logged.actor;
      this.spent.push({ userId, transactionId: logged.result.transactionId as string });
      if (this.spent.length > 200) this.spent.shift();
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
      if (this.gifts.length > 100) this.gifts.shift();
    }
  }
}

/** One operation with up to `retries` retries of an unknown outcome, on any instance. */
export async function runWithRetries(
  operation: Operation,
  options: { callOptions: CallOptions; retries: number },
  random: () => number,
  baseUrl?: string,
): Promise<TimedOperation> {
  const startedAt = Date.now();
  const urls = options.callOptions.baseUrls;
  let attempts = 0;
  let failedAttempts = 0;
  let firstFailure: string | undefined;
  let answer: Awaited<ReturnType<typeof callOnce>> = { outcome: 'unknown' };
  while (attempts <= options.retries) {
    const url = attempts === 0 && baseUrl ? baseUrl : urls[Math.floor(random() * urls.length)]!;
    attempts++;
    answer = await callOnce(operation, options.callOptions, url);
    if (answer.outcome !== 'unknown') break;
    failedAttempts++;
    firstFailure ??= answer.reason;
    if (attempts <= options.retries) await new Promise((r) => setTimeout(r, 100 + random() * 150));
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
