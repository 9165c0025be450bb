import { randomUUID } from 'node:crypto';
import { debitBalance } from '@mana-credits/db';
import { sql } from 'kysely';
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

  it('names a refused keyed request that was executed anyway (the late original of a refusal)', async () => {
    const internal = server.internalClient();
    const { id: userId } = newUser();
    await internal.internal.credits.grant.mutate({ userId, amount: 10, reason: 'x', idempotencyKey: 'g' });
    const call = { userId, amount: 20, appId: 'a', description: 'd', idempotencyKey: 'late' };
    await expect(internal.internal.credits.use.mutate(call)).rejects.toMatchObject({
      data: { reason: 'INSUFFICIENT_CREDITS' },
    });
    await internal.internal.credits.grant.mutate({ userId, amount: 100, reason: 'x', idempotencyKey: 'g2' });
    expect((await reconcile(server.deps.db)).ok).toBe(true);
    // What the refusal check exists to prevent: the late original charging the refused key, sent as an instance
    // that does not ask credits.refusals would send it (the previous release, during a rolling deploy).
    const refusal = await server.deps.db
      .selectFrom('credits.refusals')
      .selectAll()
      .where('user_id', '=', userId)
      .executeTakeFirstOrThrow();
    await debitBalance(server.deps.db, { ...call, type: 'usage', requestHash: refusal.request_hash });
    const drifted = await reconcile(server.deps.db);
    expect(drifted.checks.filter((c) => !c.ok).map((c) => c.name)).toEqual(['no_execution_after_refusal']);
    expect(drifted.checks.find((c) => c.name === 'no_execution_after_refusal')).toMatchObject({
      violations: 1,
      samples: [{ refusal_id: refusal.id, key_space: 'personal', user_id: userId, idempotency_key: 'late' }],
    });
    // Refusals are append-only like the ledger; only an operator removes one, by hand, as here.
    await sql`alter table credits.refusals disable trigger refusals_immutable`.execute(server.deps.db);
    await sql`delete from credits.refusals where id = ${refusal.id}::uuid`.execute(server.deps.db);
    await sql`alter table credits.refusals enable trigger refusals_immutable`.execute(server.deps.db);
    expect((await reconcile(server.deps.db)).ok).toBe(true);
  });

  it('ledger_rows_continue: rows of one instant are not compared by id; a row that does not continue is named', async () => {
    const internal = server.internalClient();
    const { id: userId } = newUser();
    await internal.internal.credits.grant.mutate({ userId, amount: 10, reason: 'x', idempotencyKey: 'g' });
    const { id: lotId } = await server.deps.db
      .selectFrom('credits.lots')
      .select('id')
      .where('account_id', '=', userId)
      .executeTakeFirstOrThrow();
    const at = Date.now() + 60_000;
    // Rows written by hand, each naming the lot (so only the chain can be wrong): 10 → 7 → 5 in one
    // instant, the second sorting first by id, then 5 → 4.
    const row = (id: string, before: number, amount: number, ms: number) =>
      sql`
      insert into credits.transactions (id, user_id, type, amount, balance_before, balance_after, description,
                                        lot_ids, lot_amounts, created_at)
      values (${id}::uuid, ${userId}, 'usage', ${amount}::int8, ${before}::int8, ${before + amount}::int8, 'by hand',
              array[${lotId}::uuid], array[${-amount}::int8], ${new Date(ms)})`.execute(server.deps.db);
    const settle = async (balance: number) => {
      await sql`update credits.balances set balance = ${balance}::int8 where user_id = ${userId}`.execute(
        server.deps.db,
      );
      await sql`update credits.lots set remaining = ${balance}::int8 where id = ${lotId}::uuid`.execute(
        server.deps.db,
      );
    };
    const ids = ['ffffffff-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000002'];
    await row(ids[0]!, 10, -3, at);
    await row(ids[1]!, 7, -2, at);
    await row(randomUUID(), 5, -1, at + 1000);
    await settle(4);
    expect((await reconcile(server.deps.db)).checks.filter((c) => !c.ok)).toEqual([]);

    const broken = randomUUID();
    await row(broken, 9, -1, at + 2000); // the balance was 4, the row says 9
    await settle(3);
    const drifted = await reconcile(server.deps.db);
    expect(drifted.checks.filter((c) => !c.ok).map((c) => c.name)).toEqual(['ledger_rows_continue']);
    expect(drifted.checks.find((c) => c.name === 'ledger_rows_continue')?.samples).toEqual([
      expect.objectContaining({
        user_id: userId,
        transaction_id: broken,
        balance_before: 9,
        previous_after: 4,
      }),
    ]);
    // Ledger rows are append-only; only an operator removes one, by hand, as here.
    await sql`alter table credits.transactions disable trigger transactions_immutable`.execute(
      server.deps.db,
    );
    await sql`delete from credits.transactions where user_id = ${userId} and description = 'by hand'`.execute(
      server.deps.db,
    );
    await sql`alter table credits.transactions enable trigger transactions_immutable`.execute(server.deps.db);
    await settle(10);
    expect((await reconcile(server.deps.db)).ok).toBe(true);
  });

  it('is internal only', async () => {
    const client = await server.userClient();
    await expect(client.internal.audit.reconcile.query()).rejects.toMatchObject({
      data: { code: 'UNAUTHORIZED' },
    });
  });
});
