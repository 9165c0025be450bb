import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SpendCoalescer } from '../src/domain/credits/spend-coalescer.ts';
import { IdempotencyConflictError, InsufficientCreditsError } from '../src/domain/errors.ts';
import { expectLedgerConsistent, ledgerSum } from './helpers/invariants.ts';
import { startTestServer, type TestServer } from './helpers/server.ts';

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await expectLedgerConsistent(server.deps.db);
  await server.close();
});

const fund = async (amount: number) => (await server.fundedUser(amount)).id;

const spendOf = (
  userId: string,
  amount: number,
  extra: Partial<{ idempotencyKey: string; description: string }> = {},
) => ({
  userId,
  amount,
  appId: 'coalesce',
  description: extra.description ?? 'x',
  idempotencyKey: extra.idempotencyKey,
});

describe('coalesced debits of one account', () => {
  it('apply in arrival order: an insufficient debit fails alone and later smaller ones still succeed', async () => {
    const userId = await fund(10);
    const coalescer = new SpendCoalescer(server.deps.db);
    // The first goes alone; the next four wait for it and are applied together, in order.
    const outcomes = await Promise.allSettled([
      coalescer.spend(spendOf(userId, 4)),
      coalescer.spend(spendOf(userId, 3)),
      coalescer.spend(spendOf(userId, 5)),
      coalescer.spend(spendOf(userId, 2)),
      coalescer.spend(spendOf(userId, 1)),
    ]);
    expect(outcomes.map((o) => (o.status === 'fulfilled' ? o.value.balance : 'refused'))).toEqual([
      6,
      3,
      'refused',
      1,
      0,
    ]);
    const refused = outcomes[2] as PromiseRejectedResult;
    expect(refused.reason).toBeInstanceOf(InsufficientCreditsError);
    // Refused in the batch, it is retried alone (holds may have lapsed) and refused against what is left then.
    expect((refused.reason as InsufficientCreditsError).details).toEqual({ required: 5, available: 0 });
    expect(await ledgerSum(server.deps.db, userId)).toBe(0);
  });

  it('keeps idempotency inside a batch: duplicates replay, another payload conflicts', async () => {
    const userId = await fund(100);
    const coalescer = new SpendCoalescer(server.deps.db);
    const outcomes = await Promise.allSettled([
      coalescer.spend(spendOf(userId, 1, { idempotencyKey: 'lead' })),
      coalescer.spend(spendOf(userId, 10, { idempotencyKey: 'k' })),
      coalescer.spend(spendOf(userId, 10, { idempotencyKey: 'k' })),
      coalescer.spend(spendOf(userId, 11, { idempotencyKey: 'k' })),
      coalescer.spend(spendOf(userId, 1, { idempotencyKey: 'lead' })),
    ]);
    const [lead, first, replay, conflict, leadReplay] = outcomes;
    expect(first).toEqual(replay);
    expect(lead).toEqual(leadReplay);
    expect((conflict as PromiseRejectedResult).reason).toBeInstanceOf(IdempotencyConflictError);
    expect(await ledgerSum(server.deps.db, userId)).toBe(89);
    const rows = await server.deps.db
      .selectFrom('credits.transactions')
      .select(['idempotency_key', 'balance_before', 'balance_after', 'available_after'])
      .where('user_id', '=', userId)
      .where('type', '=', 'usage')
      .orderBy('created_at')
      .execute();
    expect(rows).toEqual([
      { idempotency_key: 'lead', balance_before: 100, balance_after: 99, available_after: 99 },
      { idempotency_key: 'k', balance_before: 99, balance_after: 89, available_after: 89 },
    ]);
  });

  it('a replay of a key spent earlier (outside the batch) returns its first result', async () => {
    const userId = await fund(50);
    const coalescer = new SpendCoalescer(server.deps.db);
    const earlier = await coalescer.spend(spendOf(userId, 5, { idempotencyKey: 'early' }));
    const [, again] = await Promise.all([
      coalescer.spend(spendOf(userId, 1)),
      coalescer.spend(spendOf(userId, 5, { idempotencyKey: 'early' })),
      coalescer.spend(spendOf(userId, 1)),
    ]);
    expect(again).toEqual(earlier);
    expect(await ledgerSum(server.deps.db, userId)).toBe(43);
  });

  it('64 concurrent callers on one account through HTTP: every credit accounted for, totals and usage right', async () => {
    const userId = await fund(1000);
    const internal = server.internalClient();
    const results = await Promise.allSettled(
      Array.from({ length: 300 }, (_, i) =>
        internal.internal.credits.use.mutate({
          userId,
          amount: 1 + (i % 5),
          appId: 'hot',
          description: `call ${i}`,
          idempotencyKey: `hot-${i % 250}`,
        }),
      ),
    );
    const ok = results.filter((r) => r.status === 'fulfilled').length;
    expect(ok).toBeGreaterThan(0);
    const balance = await internal.internal.credits.balance.query({ userId });
    expect(balance.balance).toBe(await ledgerSum(server.deps.db, userId));
    expect(balance.totalSpent).toBe(1000 - balance.balance);
    const usage = await server.deps.db
      .selectFrom('credits.usage_stats')
      .select('credits_used')
      .where('user_id', '=', userId)
      .where('app_id', '=', 'hot')
      .executeTakeFirstOrThrow();
    expect(usage.credits_used).toBe(1000 - balance.balance);
    const keys = await server.deps.db
      .selectFrom('credits.transactions')
      .select('idempotency_key')
      .where('user_id', '=', userId)
      .where('type', '=', 'usage')
      .execute();
    expect(new Set(keys.map((k) => k.idempotency_key)).size).toBe(keys.length);
  });
});
