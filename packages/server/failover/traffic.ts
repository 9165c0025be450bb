import {
  type CallOptions,
  callWithRetries,
  newOperation,
  type Operation,
  Remembered,
  seededRandom,
  type TimedOperation,
} from '../chaos/protocol.ts';

/**
 * Money traffic for the failover run: `callers` concurrent loops in this process, each making one call at a
 * time — keyed debits (personal, by a user and by a service), batches, reserve/commit/release, guild fund and
 * use, gift create/redeem/cancel, grants and refunds — over the chaos protocol (../chaos/protocol.ts: 2xx ok,
 * 4xx refused, anything else unknown). An unknown outcome is retried a few times with the same input (the same
 * idempotency key, or the natural key of a commit, release, redemption or cancel); one still unknown stays in
 * the log and is settled after the run. Every call is logged with when it started and ended.
 */
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
  private readonly remembered = new Remembered({ spent: 200, gifts: 100 });

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
      const logged = await callWithRetries(operation, this.options, callRandom);
      this.operations.push(logged);
      this.remembered.remember(logged);
    }
  }

  private pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.random() * items.length)] as T;
  }

  private int(min: number, max: number): number {
    return min + Math.floor(this.random() * (max - min + 1));
  }

  private take<T>(items: T[]): T {
    return items.splice(Math.floor(this.random() * items.length), 1)[0]!;
  }

  private next(caller: number): Operation {
    const id = `c${caller}-${++this.sequence}`;
    const { users, guildId } = this.options;
    const { spent, holds, gifts } = this.remembered;
    const userId = this.pick(users);
    const roll = this.random();
    const usage = { appId: 'failover', description: 'failover use' };
    if (roll < 0.25) return newOperation.use(id, userId, this.int(1, 5), usage);
    if (roll < 0.35) return newOperation.userUse(id, userId, this.int(1, 5), usage);
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
      return newOperation.reserve(id, userId, this.int(1, 8), { ...usage, description: 'failover hold' }, 60);
    }
    if (roll < 0.6 && holds.length > 0) {
      const hold = this.take(holds);
      const release = this.random() < 0.25;
      return newOperation.settleHold(id, hold, release ? undefined : this.int(1, hold.amount));
    }
    if (roll < 0.64) return newOperation.guildFund(id, users[0]!, guildId, this.int(1, 10));
    if (roll < 0.72)
      return newOperation.guildUse(id, this.pick(users.slice(1)), guildId, this.int(1, 3), usage);
    if (roll < 0.77) return newOperation.giftCreate(id, userId);
    if (roll < 0.83 && gifts.length > 0) {
      const gift = this.pick(gifts);
      return newOperation.giftRedeem(id, gift, this.pick(users.filter((user) => user !== gift.creator)));
    }
    if (roll < 0.85 && gifts.length > 0) return newOperation.giftCancel(id, this.take(gifts));
    if (roll < 0.92 && spent.length > 0) return newOperation.refund(id, this.take(spent), 'failover refund');
    return newOperation.grant(id, userId, this.int(1, 20), 'failover grant');
  }
}
