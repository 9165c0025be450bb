import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newUser, startTestServer, type TestServer } from './helpers/server.ts';

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server.close();
});

describe('the database guards the money', () => {
  it('refuses UPDATE, DELETE and TRUNCATE of ledger rows', async () => {
    const { id: userId } = newUser();
    const { transactionId } = await server.internalClient().internal.credits.grant.mutate({
      userId,
      amount: 10,
      reason: 'x',
      idempotencyKey: 'x',
    });
    const db = server.deps.db;
    await expect(
      db
        .updateTable('credits.transactions')
        .set({ amount: 1_000_000 })
        .where('id', '=', transactionId)
        .execute(),
    ).rejects.toThrow(/immutable/);
    await expect(
      db.deleteFrom('credits.transactions').where('id', '=', transactionId).execute(),
    ).rejects.toThrow(/immutable/);
    await expect(sql`truncate credits.transactions`.execute(db)).rejects.toThrow(/immutable/);
    await expect(sql`delete from credits.guild_transactions`.execute(db)).resolves.toBeDefined(); // no rows: no trigger fires
    const row = await db
      .selectFrom('credits.transactions')
      .selectAll()
      .where('id', '=', transactionId)
      .executeTakeFirst();
    expect(row?.amount).toBe(10);
  });

  it('refuses a negative balance and a ledger row whose arithmetic does not add up', async () => {
    const db = server.deps.db;
    const { id: userId } = newUser();
    await expect(
      db.insertInto('credits.balances').values({ user_id: userId, balance: -1 }).execute(),
    ).rejects.toThrow(/balances_balance_non_negative/);
    await expect(
      db
        .insertInto('credits.transactions')
        .values({
          user_id: userId,
          type: 'grant',
          amount: 5,
          balance_before: 0,
          balance_after: 6,
          metadata: null,
          app_id: null,
          idempotency_key: null,
          request_hash: null,
          reference_transaction_id: null,
          guild_id: null,
        })
        .execute(),
    ).rejects.toThrow(/transactions_balance_arithmetic/);
  });

  it('refuses holds above the balance', async () => {
    const db = server.deps.db;
    const { id: userId } = newUser();
    await expect(
      db.insertInto('credits.balances').values({ user_id: userId, balance: 5, reserved: 6 }).execute(),
    ).rejects.toThrow(/balances_reserved_within_balance/);
  });
});
