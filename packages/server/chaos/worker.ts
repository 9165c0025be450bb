import { appendFileSync } from 'node:fs';
import {
  type CallOptions,
  callWithRetries,
  type LoggedOperation,
  newOperation,
  type Operation,
  Remembered,
  seededRandom,
} from './protocol.ts';

/**
 * A chaos client process: drives mixed traffic against the servers until its deadline, retrying an unknown
 * outcome a few times with the same idempotency key, and logs every operation (one JSON line each).
 */
interface WorkerConfig extends CallOptions {
  worker: number;
  seed: number;
  deadline: number;
  users: string[];
  logFile: string;
  retries: number;
}

const config = JSON.parse(process.env.CHAOS_WORKER ?? '{}') as WorkerConfig;
const random = seededRandom(config.seed);
/** Retries draw from their own stream, so outcomes do not shift the seeded schedule of operations. */
const callRandom = seededRandom(config.seed ^ 0x5eed);
const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
const takeAny = <T>(items: T[]): T => items.splice(Math.floor(random() * items.length), 1)[0]!;
let sequence = 0;
const remembered = new Remembered({ spent: 50, gifts: Number.POSITIVE_INFINITY });
const GUILD = 'chaos-guild';

function nextOperation(): Operation {
  const id = `w${config.worker}-${++sequence}`;
  const userId = pick(config.users);
  const { spent, gifts, holds } = remembered;
  const roll = random();
  if (roll < 0.1 && spent.length > 0) return newOperation.refund(id, takeAny(spent), 'chaos refund');
  if (roll < 0.2) return newOperation.giftCreate(id, userId);
  if (roll < 0.3 && gifts.length > 0) {
    const gift = pick(gifts);
    return newOperation.giftRedeem(id, gift, pick(config.users.filter((user) => user !== gift.creator)));
  }
  if (roll < 0.33 && gifts.length > 0) return newOperation.giftCancel(id, takeAny(gifts));
  if (roll < 0.36) return newOperation.guildFund(id, config.users[0]!, GUILD, 1 + Math.floor(random() * 10));
  if (roll < 0.45) {
    const member = pick(config.users.slice(1));
    const amount = 1 + Math.floor(random() * 3);
    return newOperation.guildUse(id, member, GUILD, amount, { appId: 'chaos', description: 'pool' });
  }
  if (roll < 0.5) {
    const amount = 1 + Math.floor(random() * 20);
    if (random() < 0.4) return newOperation.grant(id, userId, amount, 'chaos grant');
    // A lot that expires 2–8 s from now, during the faults: spends, holds, gifts and pool funding take from
    // it (priority 0–19 against the seed's 10, so often first in the burn order) while it lapses. expiresAt
    // is fixed here, once per operation: every retry with this key sends the same payload (a replay after
    // the time has passed is answered with the first grant).
    return newOperation.grant(id, userId, amount, 'chaos expiring grant', {
      expiresAt: new Date(Date.now() + 2000 + Math.floor(random() * 6000)).toISOString(),
      priority: Math.floor(random() * 20),
      ...(random() < 0.3 ? { category: 'paid' } : {}),
    });
  }
  const amount = 1 + Math.floor(random() * 5);
  if (roll < 0.55) {
    const held = 1 + Math.floor(random() * 8);
    return newOperation.reserve(id, userId, held, { appId: 'chaos', description: 'hold' }, 5);
  }
  if (roll < 0.62 && holds.length > 0) {
    const hold = takeAny(holds);
    const release = random() < 0.3;
    return newOperation.settleHold(id, hold, release ? undefined : 1 + Math.floor(random() * hold.amount));
  }
  if (roll < 0.7)
    return newOperation.userUse(id, userId, amount, { appId: 'chaos', description: 'chaos use (user)' });
  if (roll < 0.76) {
    // 2–6 items, about a third of them pool spends of members
    const items = Array.from({ length: 2 + Math.floor(random() * 5) }, () =>
      random() < 0.35
        ? {
            userId: pick(config.users.slice(1)),
            guildId: GUILD,
            amount: 1 + Math.floor(random() * 3),
            appId: 'chaos',
            description: 'chaos batch (pool)',
          }
        : {
            userId: pick(config.users),
            amount: 1 + Math.floor(random() * 5),
            appId: 'chaos',
            description: 'chaos batch',
          },
    );
    return newOperation.useBatch(id, items);
  }
  return newOperation.use(id, userId, amount, { appId: 'chaos', description: 'chaos use' });
}

/**
 * A hot account: several debits of one user at once on one instance, so they coalesce into one
 * `debit_many` batch. Half carry no idempotency key (named only by their metadata): a keyless debit is
 * never retried, and must be charged at most once whatever happens to its batch.
 */
function burst(): { operations: Operation[]; baseUrl: string } {
  const userId = pick(config.users);
  const baseUrl = pick(config.baseUrls);
  const size = 4 + Math.floor(random() * 7);
  const operations = Array.from({ length: size }, (): Operation => {
    const id = `w${config.worker}-${++sequence}`;
    const keyless = random() < 0.5;
    const amount = 1 + Math.floor(random() * 3);
    return {
      id,
      kind: 'use',
      path: 'internal.credits.use',
      actor: 'service',
      input: {
        userId,
        amount,
        appId: 'chaos',
        description: 'chaos burst',
        metadata: { chaosOp: id },
        ...(keyless ? {} : { idempotencyKey: id }),
      },
      ...(keyless ? { keyless: true } : {}),
    };
  });
  return { operations, baseUrl };
}

const retrying = { callOptions: config, retries: config.retries };
const run = (operation: Operation, baseUrl?: string) =>
  callWithRetries(operation, retrying, callRandom, baseUrl);

async function next(): Promise<LoggedOperation[]> {
  if (random() < 0.05) {
    const { operations, baseUrl } = burst();
    return Promise.all(operations.map((operation) => run(operation, baseUrl)));
  }
  return [await run(nextOperation())];
}

function record(logged: LoggedOperation) {
  remembered.remember(logged);
  appendFileSync(config.logFile, `${JSON.stringify(logged)}\n`);
}

while (Date.now() < config.deadline) {
  for (const logged of await next()) record(logged);
}
