import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useCreditsBatch } from '../src/domain/credits/batch.ts';
import { grantCredits, type SpendInput, spendCredits } from '../src/domain/credits/personal.ts';
import { reserveCredits } from '../src/domain/credits/reservations.ts';
import { SpendCoalescer } from '../src/domain/credits/spend-coalescer.ts';
import { DomainError } from '../src/domain/errors.ts';
import { createGift } from '../src/domain/gifts/create.ts';
import { fundPool, initPool } from '../src/domain/guild/pools.ts';
import { isReplayed } from '../src/domain/idempotency.ts';
import { startTestServer, type TestServer } from './helpers/server.ts';

// Differential tests (issue 14): the same scenario through the single path (credits.use one call at a
// time), the coalesced path (concurrent debits of one account, batched) and the batch path
// (internal.credits.useBatch) must give the same answers and leave identical ledgers, balances, holds and
// usage counters.

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server.close();
});

type Debit = Omit<SpendInput, 'userId'>;
type Path = 'single' | 'coalesced' | 'batch';

const debit = (amount: number, idempotencyKey: string | undefined, description = 'work'): Debit => ({
  amount,
  appId: 'chat',
  description,
  idempotencyKey,
  metadata: { model: 'small' },
});

/** What a caller learns from one debit, without ids: the outcome and the balance it reports. */
function answerOf(settled: PromiseSettledResult<{ balance: number }>): string {
  if (settled.status === 'fulfilled') {
    return `${isReplayed(settled.value) ? 'replay' : 'ok'}:${settled.value.balance}`;
  }
  const error = settled.reason;
  if (!(error instanceof DomainError)) throw error;
  const available = (error.details as { available?: number } | undefined)?.available;
  return available === undefined ? error.reason : `${error.reason}:${available}`;
}

async function run(path: Path, userId: string, debits: Debit[]): Promise<string[]> {
  const db = server.deps.db;
  if (path === 'single') {
    const answers: string[] = [];
    for (const item of debits) {
      answers.push(
        answerOf(await Promise.allSettled([spendCredits(db, { ...item, userId })]).then((r) => r[0]!)),
      );
    }
    return answers;
  }
  if (path === 'coalesced') {
    // All at once: the first goes alone, the rest wait for it and go together, in arrival order.
    const coalescer = new SpendCoalescer(db);
    return (await Promise.allSettled(debits.map((item) => coalescer.spend({ ...item, userId })))).map(
      answerOf,
    );
  }
  const { results } = await useCreditsBatch(
    server.deps,
    debits.map((item) => ({ ...item, userId })),
  );
  return results.map((result) => {
    if (result.ok) {
      // useBatch answers replays like first executions; the ledger comparison below tells them apart.
      return `ok:${result.balance}`;
    }
    const available = /(\d+) available/.exec(result.error.message)?.[1];
    return available === undefined ? result.error.reason : `${result.error.reason}:${available}`;
  });
}

/** Everything the scenario left on the account, without ids and timestamps. */
async function stateOf(userId: string) {
  const db = server.deps.db;
  const ledger = await db
    .selectFrom('credits.transactions')
    .select([
      'type',
      'amount',
      'balance_before',
      'balance_after',
      'available_after',
      'app_id',
      'description',
      'metadata',
      'idempotency_key',
      'request_hash',
    ])
    .where('user_id', '=', userId)
    .where('type', '=', 'usage')
    .orderBy('balance_before', 'desc')
    .execute();
  const balance = await db
    .selectFrom('credits.balances')
    .select(['balance', 'reserved', 'total_earned', 'total_spent'])
    .where('user_id', '=', userId)
    .executeTakeFirst();
  const holds = await db
    .selectFrom('credits.reservations')
    .select(['amount', 'status'])
    .where('user_id', '=', userId)
    .orderBy('amount')
    .execute();
  const usage = await db
    .selectFrom('credits.usage_stats')
    .select(['app_id', 'credits_used'])
    .where('user_id', '=', userId)
    .execute();
  return { ledger, balance, holds, usage };
}

/** A hold of ten minutes. */
const hold = (userId: string, amount: number, idempotencyKey: string = randomUUID()) =>
  reserveCredits(server.deps, {
    userId,
    amount,
    appId: 'chat',
    description: 'hold',
    ttlSeconds: 600,
    idempotencyKey,
  });

/** A user with `granted` credits, an open hold of 20 and a lapsed hold of 30 (backdated, not yet returned). */
async function account(granted: number) {
  const userId = `diff-${randomUUID()}`;
  await grantCredits(server.deps.db, {
    userId,
    amount: granted,
    reason: 'funds',
    idempotencyKey: randomUUID(),
  });
  await hold(userId, 20, 'hold-20');
  const lapsed = await hold(userId, 30, 'hold-30');
  await sql`update credits.reservations set expires_at = now() - interval '1 second'
             where id = ${lapsed.reservationId}::uuid`.execute(server.deps.db);
  return userId;
}

async function throughEveryPath(granted: number, debits: Debit[], paths: Path[]) {
  const outcomes: Record<string, { answers: string[]; state: Awaited<ReturnType<typeof stateOf>> }> = {};
  for (const path of paths) {
    const userId = await account(granted);
    const answers = await run(path, userId, debits);
    outcomes[path] = { answers, state: await stateOf(userId) };
  }
  return outcomes;
}

describe('single, coalesced and batch debits agree', () => {
  it('replay, conflict, insufficient, a lapsed hold returned on access, an open hold respected, a key twice in one call', async () => {
    const debits = [
      debit(40, 'k1'), // 100 − 20 held − 30 lapsed-but-unreturned: 50 spendable → ok, 10 left
      debit(40, 'k1'), // replay
      debit(40, 'k1', 'other'), // conflict
      debit(25, 'k2'), // short of 10 → the lapsed hold is returned → ok, 15 left
      debit(20, 'k3'), // insufficient (15)
      debit(15, 'k4'), // ok, 0 left; the open hold of 20 is untouched
      debit(20, 'k3'), // the same key, refused before: that recorded refusal again (15 available then)
      debit(1, 'k5'), // insufficient (0)
    ];
    const outcomes = await throughEveryPath(100, debits, ['single', 'coalesced', 'batch']);
    const expected = [
      'ok:10',
      'replay:10',
      'IDEMPOTENCY_CONFLICT',
      'ok:15',
      'INSUFFICIENT_CREDITS:15',
      'ok:0',
    ];
    expect(outcomes.single!.answers).toEqual([
      ...expected,
      'INSUFFICIENT_CREDITS:15',
      'INSUFFICIENT_CREDITS:0',
    ]);
    expect(outcomes.coalesced!.answers).toEqual(outcomes.single!.answers);
    expect(outcomes.batch!.answers).toEqual(outcomes.single!.answers.map((a) => a.replace('replay', 'ok')));
    expect(outcomes.single!.state.ledger.map((row) => [row.amount, row.idempotency_key])).toEqual([
      [-40, 'k1'],
      [-25, 'k2'],
      [-15, 'k4'],
    ]);
    expect(outcomes.single!.state.holds).toEqual([
      { amount: 20, status: 'open' },
      { amount: 30, status: 'expired' },
    ]);
    expect(outcomes.coalesced!.state).toEqual(outcomes.single!.state);
    expect(outcomes.batch!.state).toEqual(outcomes.single!.state);
  });

  it('keyless debits with the same payload are two debits, not a replay (single and coalesced)', async () => {
    const debits = [debit(5, undefined), debit(5, undefined), debit(5, undefined), debit(100, undefined)];
    const outcomes = await throughEveryPath(100, debits, ['single', 'coalesced']);
    expect(outcomes.single!.answers).toEqual(['ok:45', 'ok:40', 'ok:35', 'INSUFFICIENT_CREDITS:65']);
    expect(outcomes.coalesced!.answers).toEqual(outcomes.single!.answers);
    expect(outcomes.coalesced!.state).toEqual(outcomes.single!.state);
  });
});

describe('every way credits leave a personal account refuses alike', () => {
  // One refusal (domain/spending.ts over credits.covers): a lapsed hold never blocks a spend, an open hold is
  // never spent, and what is refused says what is spendable. 100 granted, 20 held, 30 held but lapsed.
  const ways: Record<string, (userId: string, amount: number) => Promise<unknown>> = {
    use: (userId, amount) => spendCredits(server.deps.db, { ...debit(amount, undefined), userId }),
    reserve: (userId, amount) => hold(userId, amount),
    fund: async (userId, amount) => {
      const guildId = `guild-${randomUUID()}`;
      server.auth.setRole(guildId, userId, 'owner');
      await initPool(server.deps.db, guildId);
      return fundPool(server.deps, userId, { guildId, amount });
    },
    gift: (userId, amount) =>
      createGift(
        server.deps.db,
        'https://gift.example',
        { id: userId, email: null, name: null },
        {
          type: 'simple',
          totalCredits: amount,
          totalPortions: 1,
          expirationDays: 30,
        },
      ),
  };

  it.each(Object.keys(ways))('%s: past a lapsed hold, never into an open one', async (way) => {
    const spend = ways[way]!;
    const userId = await account(100);
    // 50 spendable before the lapsed hold is returned, 80 after: 70 fits only if it is returned on access.
    await expect(spend(userId, 70)).resolves.toBeDefined();
    const refused = await spend(userId, 11).then(
      () => 'ok',
      (error: unknown) => answerOf({ status: 'rejected', reason: error }),
    );
    expect(refused).toBe('INSUFFICIENT_CREDITS:10');
    const { balance, holds } = await stateOf(userId);
    // A reserve holds the 70 instead of spending it; either way 10 is left to spend.
    expect(balance!.balance - balance!.reserved).toBe(10);
    expect(balance!.reserved).toBe(way === 'reserve' ? 90 : 20);
    expect(holds.filter((hold) => hold.amount !== 70)).toEqual([
      { amount: 20, status: 'open' },
      { amount: 30, status: 'expired' },
    ]);
  });
});
