import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reconcile } from '../src/domain/audit/reconcile.ts';
import { newUser, startTestServer, type TestServer } from './helpers/server.ts';

let server: TestServer;
beforeAll(async () => {
  // Calls run in process (helpers/server.ts: Transport).
  server = await startTestServer({}, { transport: 'in-process' });
});
afterAll(async () => {
  await server.close();
});

describe('reconcile', () => {
  it('finds no drift after ordinary traffic, and names the account that drifts', async () => {
    const internal = server.internalClient();
    const { id: userId } = newUser();
    await internal.internal.credits.grant.mutate({ userId, amount: 100, reason: 'x', idempotencyKey: 'g' });
    const usage = await internal.internal.credits.use.mutate({
      userId,
      amount: 40,
      appId: 'a',
      description: 'd',
    });
    await internal.internal.credits.refund.mutate({
      userId,
      transactionId: usage.transactionId,
      amount: 10,
      description: 'r',
      idempotencyKey: 'r',
    });
    const clean = await internal.internal.audit.reconcile.query();
    expect(clean.ok).toBe(true);
    expect(clean.checks.every((check) => check.violations === 0)).toBe(true);

    // Drift that only a bug (or a hand-edited row) could cause: a balance changed without a ledger row.
    await server.deps.db
      .updateTable('credits.balances')
      .set({ balance: 71 })
      .where('user_id', '=', userId)
      .execute();
    const drifted = await reconcile(server.deps.db);
    expect(drifted.ok).toBe(false);
    const check = drifted.checks.find((c) => c.name === 'user_ledger_matches_balance');
    expect(check).toMatchObject({
      ok: false,
      violations: 1,
      samples: [{ user_id: userId, balance: 71, ledger: 70 }],
    });
    await server.deps.db
      .updateTable('credits.balances')
      .set({ balance: 70 })
      .where('user_id', '=', userId)
      .execute();
    expect((await reconcile(server.deps.db)).ok).toBe(true);
  });

  it('is internal only', async () => {
    const client = await server.userClient();
    await expect(client.internal.audit.reconcile.query()).rejects.toMatchObject({
      data: { code: 'UNAUTHORIZED' },
    });
  });
});
