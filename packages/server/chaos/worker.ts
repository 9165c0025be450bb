import { appendFileSync } from 'node:fs';
import {
  type CallOptions,
  callOnce,
  type LoggedOperation,
  type Operation,
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
let sequence = 0;
const spentUsages: { userId: string; transactionId: string; amount: number }[] = [];
const gifts: { id: string; code: string; creator: string }[] = [];
const holds: { reservationId: string; userId: string; amount: number }[] = [];

function nextOperation(): Operation {
  const id = `w${config.worker}-${++sequence}`;
  const userId = pick(config.users);
  const roll = random();
  if (roll < 0.1 && spentUsages.length > 0) {
    const usage = spentUsages.splice(Math.floor(random() * spentUsages.length), 1)[0]!;
    return {
      id,
      kind: 'refund',
      path: 'internal.credits.refund',
      actor: 'service',
      input: {
        userId: usage.userId,
        transactionId: usage.transactionId,
        amount: 1,
        description: 'chaos refund',
        idempotencyKey: id,
      },
    };
  }
  if (roll < 0.2) {
    return {
      id,
      kind: 'gift.create',
      path: 'gifts.create',
      actor: userId,
      input: { type: 'split', totalCredits: 10, totalPortions: 5, idempotencyKey: id },
    };
  }
  if (roll < 0.3 && gifts.length > 0) {
    const gift = pick(gifts);
    const redeemer = pick(config.users.filter((user) => user !== gift.creator));
    return { id, kind: 'gift.redeem', path: 'gifts.redeem', actor: redeemer, input: { code: gift.code } };
  }
  if (roll < 0.33 && gifts.length > 0) {
    const gift = gifts.splice(Math.floor(random() * gifts.length), 1)[0]!;
    return { id, kind: 'gift.cancel', path: 'gifts.cancel', actor: gift.creator, input: { id: gift.id } };
  }
  if (roll < 0.36) {
    return {
      id,
      kind: 'guild.fund',
      path: 'guild.fund',
      actor: config.users[0]!,
      input: { guildId: 'chaos-guild', amount: 1 + Math.floor(random() * 10), idempotencyKey: id },
    };
  }
  if (roll < 0.45) {
    return {
      id,
      kind: 'guild.use',
      path: 'guild.use',
      actor: pick(config.users.slice(1)),
      input: {
        guildId: 'chaos-guild',
        amount: 1 + Math.floor(random() * 3),
        appId: 'chaos',
        description: 'pool',
        idempotencyKey: id,
      },
    };
  }
  if (roll < 0.5) {
    const grant = {
      userId,
      amount: 1 + Math.floor(random() * 20),
      reason: 'chaos grant',
      idempotencyKey: id,
    };
    if (random() < 0.4) {
      return { id, kind: 'grant', path: 'internal.credits.grant', actor: 'service', input: grant };
    }
    // A lot that expires 2–8 s from now, during the faults: spends, holds, gifts and pool funding take from
    // it (priority 0–19 against the seed's 10, so often first in the burn order) while it lapses. expiresAt
    // is fixed here, once per operation: every retry with this key sends the same payload (a replay after
    // the time has passed is answered with the first grant).
    return {
      id,
      kind: 'grant',
      path: 'internal.credits.grant',
      actor: 'service',
      input: {
        ...grant,
        reason: 'chaos expiring grant',
        expiresAt: new Date(Date.now() + 2000 + Math.floor(random() * 6000)).toISOString(),
        priority: Math.floor(random() * 20),
        ...(random() < 0.3 ? { category: 'paid' } : {}),
      },
    };
  }
  const amount = 1 + Math.floor(random() * 5);
  if (roll < 0.55) {
    return {
      id,
      kind: 'reserve',
      path: 'internal.credits.reserve',
      actor: 'service',
      input: {
        userId,
        amount: 1 + Math.floor(random() * 8),
        appId: 'chaos',
        description: 'hold',
        ttlSeconds: 5,
        idempotencyKey: id,
      },
    };
  }
  if (roll < 0.62 && holds.length > 0) {
    const hold = holds.splice(Math.floor(random() * holds.length), 1)[0]!;
    const release = random() < 0.3;
    return {
      id,
      kind: release ? 'release' : 'commit',
      path: release ? 'internal.credits.release' : 'internal.credits.commit',
      actor: 'service',
      account: hold.userId,
      input: release
        ? { reservationId: hold.reservationId }
        : { reservationId: hold.reservationId, amount: 1 + Math.floor(random() * hold.amount) },
    };
  }
  if (roll < 0.7) {
    return {
      id,
      kind: 'use',
      path: 'credits.use',
      actor: userId,
      input: { amount, appId: 'chaos', description: 'chaos use (user)', idempotencyKey: id },
    };
  }
  return {
    id,
    kind: 'use',
    path: 'internal.credits.use',
    actor: 'service',
    input: { userId, amount, appId: 'chaos', description: 'chaos use', idempotencyKey: id },
  };
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

async function run(operation: Operation, baseUrl?: string): Promise<LoggedOperation> {
  let last: Awaited<ReturnType<typeof callOnce>> = { outcome: 'unknown' };
  let attempts = 0;
  const retries = operation.keyless ? 0 : config.retries;
  while (attempts <= retries) {
    attempts++;
    const url =
      attempts === 1 && baseUrl
        ? baseUrl
        : config.baseUrls[Math.floor(callRandom() * config.baseUrls.length)]!;
    last = await callOnce(operation, config, url);
    if (last.outcome !== 'unknown') break;
    await new Promise((resolve) => setTimeout(resolve, 50 + callRandom() * 200));
  }
  return { ...operation, ...last, attempts };
}

async function next(): Promise<LoggedOperation[]> {
  if (random() < 0.05) {
    const { operations, baseUrl } = burst();
    return Promise.all(operations.map((operation) => run(operation, baseUrl)));
  }
  return [await run(nextOperation())];
}

function record(logged: LoggedOperation) {
  if (logged.kind === 'use' && logged.outcome === 'ok' && logged.result) {
    const userId = (logged.input.userId as string | undefined) ?? logged.actor;
    spentUsages.push({
      userId,
      transactionId: logged.result.transactionId as string,
      amount: logged.input.amount as number,
    });
    if (spentUsages.length > 50) spentUsages.shift();
  }
  if (logged.kind === 'reserve' && logged.outcome === 'ok' && logged.result) {
    holds.push({
      reservationId: logged.result.reservationId as string,
      userId: logged.input.userId as string,
      amount: logged.input.amount as number,
    });
  }
  if (logged.kind === 'gift.create' && logged.outcome === 'ok' && logged.result) {
    gifts.push({ id: logged.result.id as string, code: logged.result.code as string, creator: logged.actor });
  }
  appendFileSync(config.logFile, `${JSON.stringify(logged)}\n`);
}

while (Date.now() < config.deadline) {
  for (const logged of await next()) record(logged);
}
