import type { KyselyPlugin, QueryId, RootOperationNode } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SpendCoalescer } from '../src/domain/credits/spend-coalescer.ts';
import { IdempotencyConflictError, InsufficientCreditsError } from '../src/domain/errors.ts';
import { OutcomeUnknownError } from '../src/domain/outcome.ts';
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
    // Refused in arrival order, against what was spendable at its turn (use_batch returns lapsed holds before
    // it refuses, as the single path does): final, no second try.
    expect((refused.reason as InsufficientCreditsError).details).toEqual({ required: 5, available: 3 });
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
      // Rows of one batch may share a created_at (PGlite's clock counts milliseconds): the chain gives the order.
      .orderBy('balance_before', 'desc')
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

/**
 * Fails the next call of credits.use_batch: 'after' lets it run (and commit) and then throws what node-pg
 * throws when the connection drops before the answer; 'before' throws a Postgres ERROR response instead of
 * sending it (the batch is certainly not written).
 */
function failCoalescedBatch(when: 'after' | 'before'): KyselyPlugin & { failed: number } {
  const doomed = new WeakSet<QueryId>();
  const plugin = {
    failed: 0,
    transformQuery({ node, queryId }: { node: RootOperationNode; queryId: QueryId }) {
      const text = node.kind === 'RawNode' ? node.sqlFragments.join('?') : '';
      if (plugin.failed === 0 && text.includes('credits.use_batch(')) {
        plugin.failed++;
        if (when === 'before') {
          throw Object.assign(new Error('deadlock detected'), { severity: 'ERROR', code: '40P01' });
        }
        doomed.add(queryId);
      }
      return node;
    },
    async transformResult<T>({ result, queryId }: { result: T; queryId: QueryId }): Promise<T> {
      if (doomed.has(queryId)) throw new Error('Connection terminated unexpectedly');
      return result;
    },
  };
  return plugin;
}

describe('a coalesced batch that fails (issue 13)', () => {
  it('lost after its commit: never run again, every caller of the batch hears OUTCOME_UNKNOWN', async () => {
    const userId = await fund(100);
    const fault = failCoalescedBatch('after');
    const coalescer = new SpendCoalescer(server.deps.db.withPlugin(fault));
    const outcomes = await Promise.allSettled(
      [1, 2, 3, 4, 5].map((amount) => coalescer.spend(spendOf(userId, amount))),
    );
    expect(fault.failed).toBe(1);
    expect(outcomes[0]).toMatchObject({ status: 'fulfilled' });
    for (const outcome of outcomes.slice(1)) {
      expect(outcome.status).toBe('rejected');
      const reason = (outcome as PromiseRejectedResult).reason;
      expect(reason).toBeInstanceOf(OutcomeUnknownError);
      expect((reason as OutcomeUnknownError).cause).toMatchObject({
        message: 'Connection terminated unexpectedly',
      });
    }
    // The batch did commit: each debit exactly once, none a second time by a fallback.
    const rows = await server.deps.db
      .selectFrom('credits.transactions')
      .select('amount')
      .where('user_id', '=', userId)
      .where('type', '=', 'usage')
      .execute();
    expect(rows.map((row) => row.amount).sort()).toEqual([-1, -2, -3, -4, -5]);
    expect(await ledgerSum(server.deps.db, userId)).toBe(85);
  });

  it('refused by Postgres (rolled back): each debit takes the single path on its own', async () => {
    const userId = await fund(100);
    const fault = failCoalescedBatch('before');
    const coalescer = new SpendCoalescer(server.deps.db.withPlugin(fault));
    const results = await Promise.all(
      [1, 2, 3, 4, 5].map((amount) => coalescer.spend(spendOf(userId, amount))),
    );
    expect(fault.failed).toBe(1);
    expect(new Set(results.map((result) => result.transactionId)).size).toBe(5);
    expect(await ledgerSum(server.deps.db, userId)).toBe(85);
  });
});
