import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectLedgerConsistent, ledgerSum } from './helpers/invariants.ts';
import { newUser, startTestServer, type TestServer } from './helpers/server.ts';

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await expectLedgerConsistent(server.deps.db);
  await server.close();
});

async function grant(userId: string, amount: number) {
  await server.internalClient().internal.credits.grant.mutate({
    userId,
    amount,
    reason: 'seed',
    idempotencyKey: `seed-${userId}`,
  });
}

describe('parallel spending', () => {
  it('200 parallel uses of 1 on a balance of 100: exactly 100 succeed', async () => {
    const { id: userId } = newUser();
    await grant(userId, 100);
    const internal = server.internalClient();
    const outcomes = await Promise.allSettled(
      Array.from({ length: 200 }, (_, i) =>
        internal.internal.credits.use.mutate({ userId, amount: 1, appId: 'race', description: `call ${i}` }),
      ),
    );
    const ok = outcomes.filter((o) => o.status === 'fulfilled');
    const refused = outcomes.filter((o) => o.status === 'rejected');
    expect(ok).toHaveLength(100);
    expect(refused).toHaveLength(100);
    for (const r of refused) {
      expect((r as PromiseRejectedResult).reason).toMatchObject({ data: { reason: 'INSUFFICIENT_CREDITS' } });
    }
    const balances = ok
      .map((o) => (o as PromiseFulfilledResult<{ balance: number }>).value.balance)
      .sort((a, b) => a - b);
    expect(balances).toEqual(Array.from({ length: 100 }, (_, i) => i));
    expect(await ledgerSum(server.deps.db, userId)).toBe(0);
    expect((await internal.internal.credits.balance.query({ userId })).balance).toBe(0);
    await expectLedgerConsistent(server.deps.db);
  });

  it('50 parallel calls with one idempotency key: one ledger row, 50 identical answers', async () => {
    const { id: userId } = newUser();
    await grant(userId, 1000);
    const internal = server.internalClient();
    const input = { userId, amount: 7, appId: 'race', description: 'once', idempotencyKey: 'one-key' };
    const results = await Promise.all(
      Array.from({ length: 50 }, () => internal.internal.credits.use.mutate(input)),
    );
    expect(new Set(results.map((r) => JSON.stringify(r))).size).toBe(1);
    expect(results[0]?.balance).toBe(993);
    const rows = await server.deps.db
      .selectFrom('credits.transactions')
      .select('id')
      .where('user_id', '=', userId)
      .where('idempotency_key', '=', 'one-key')
      .execute();
    expect(rows).toHaveLength(1);
    expect(await ledgerSum(server.deps.db, userId)).toBe(993);
  });

  it('50 parallel calls with one key and mixed payloads: one winner, the rest replay or CONFLICT', async () => {
    const { id: userId } = newUser();
    await grant(userId, 1000);
    const internal = server.internalClient();
    const outcomes = await Promise.allSettled(
      Array.from({ length: 50 }, (_, i) =>
        internal.internal.credits.use.mutate({
          userId,
          amount: i % 2 === 0 ? 5 : 6,
          appId: 'race',
          description: 'mixed',
          idempotencyKey: 'mixed-key',
        }),
      ),
    );
    const spent = 1000 - (await ledgerSum(server.deps.db, userId));
    expect([5, 6]).toContain(spent);
    for (const outcome of outcomes) {
      if (outcome.status === 'rejected') {
        expect(outcome.reason).toMatchObject({ data: { reason: 'IDEMPOTENCY_CONFLICT' } });
      } else {
        expect(outcome.value.balance).toBe(1000 - spent);
      }
    }
    expect(outcomes.filter((o) => o.status === 'rejected')).toHaveLength(25);
  });

  it('parallel grants and spends of many users keep every balance equal to its ledger', async () => {
    const users = Array.from({ length: 10 }, () => newUser().id);
    await Promise.all(users.map((id) => grant(id, 50)));
    const internal = server.internalClient();
    await Promise.allSettled(
      users.flatMap((userId) =>
        Array.from({ length: 20 }, (_, i) =>
          internal.internal.credits.use.mutate({ userId, amount: 3, appId: 'mix', description: `${i}` }),
        ),
      ),
    );
    for (const userId of users) {
      expect(await ledgerSum(server.deps.db, userId)).toBe(2);
    }
    await expectLedgerConsistent(server.deps.db);
  });
});
