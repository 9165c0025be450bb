import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { sql } from 'kysely';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { expectHoldsConsistent, expectLedgerConsistent, ledgerSum } from './helpers/invariants.ts';
import { newUser, startTestServer, type TestServer } from './helpers/server.ts';

/**
 * A personal key has one first result, whatever path it took: a key refused for a debit is not free for a
 * grant or a refund, and a batch decides a refusal under the account's row lock even for a user who had no
 * balance row yet.
 */
const databaseUrl = process.env.DATABASE_URL;

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer({
    RESERVATION_SWEEP_SECONDS: '3600',
    LOT_EXPIRY_SWEEP_SECONDS: '0',
    GIFT_EXPIRY_SWEEP_SECONDS: '0',
    WEBHOOK_DELIVERY_INTERVAL_MS: '0',
    AUTO_TOP_UP_INTERVAL_MS: '0',
  });
});
afterEach(async () => {
  await expectLedgerConsistent(server.db);
  await expectHoldsConsistent(server.db);
  expect(await lotDrift()).toEqual([]);
});
afterAll(async () => {
  await server?.close();
});

const internal = () => server.internalClient().internal.credits;

/** Σ lots remaining (unspent lots) = balance, for every user. */
async function lotDrift() {
  const { rows } = await sql<{ user_id: string; balance: number; lots: number }>`
    select b.user_id, b.balance, coalesce(l.total, 0)::int8 as lots
      from credits.balances b
      left join (select account_id, sum(remaining)::int8 as total from credits.lots
                  where account_kind = 'user' group by account_id) l on l.account_id = b.user_id
     where b.balance <> coalesce(l.total, 0)`.execute(server.db);
  return rows;
}

function use(key: string | undefined, amount: number, extra: Record<string, unknown> = {}) {
  return {
    amount,
    appId: 'review',
    description: 'review use',
    ...(key === undefined ? {} : { idempotencyKey: key }),
    ...extra,
  };
}

async function answer(promise: Promise<unknown>) {
  try {
    return { ok: await promise };
  } catch (error) {
    const e = error as { data?: { reason?: string; httpStatus?: number }; message: string };
    return { reason: e.data?.reason, status: e.data?.httpStatus, message: e.message };
  }
}

describe('a refused key stays refused / one key, one first result', () => {
  it('a grant under a key refused for a use is a CONFLICT, and the refusal still answers the use', async () => {
    const user = await server.fundedUser(5);
    const key = `shared-${randomUUID()}`;
    const refused = await answer(internal().use.mutate({ userId: user.id, ...use(key, 10) }));
    expect(refused).toMatchObject({ reason: 'INSUFFICIENT_CREDITS' });

    // The key's first result is the refusal: another request under it must be a CONFLICT...
    const grant = await answer(
      internal().grant.mutate({ userId: user.id, amount: 100, reason: 'later', idempotencyKey: key }),
    );
    // ...and the use's replay is still its refusal.
    const replay = await answer(internal().use.mutate({ userId: user.id, ...use(key, 10) }));
    expect({ grant, replay }).toMatchObject({
      grant: { reason: 'IDEMPOTENCY_CONFLICT' },
      replay: { reason: 'INSUFFICIENT_CREDITS' },
    });
  });

  it('a refund under a key refused for a use is a CONFLICT, and the refusal still answers the use', async () => {
    const user = await server.fundedUser(20);
    const spent = await internal().use.mutate({ userId: user.id, ...use(`spend-${randomUUID()}`, 15) });
    const key = `shared-${randomUUID()}`;
    expect(await answer(internal().use.mutate({ userId: user.id, ...use(key, 10) }))).toMatchObject({
      reason: 'INSUFFICIENT_CREDITS',
    });
    const refund = await answer(
      internal().refund.mutate({
        userId: user.id,
        transactionId: spent.transactionId,
        amount: 5,
        description: 'sorry',
        idempotencyKey: key,
      }),
    );
    const replay = await answer(internal().use.mutate({ userId: user.id, ...use(key, 10) }));
    expect({ refund, replay }).toMatchObject({
      refund: { reason: 'IDEMPOTENCY_CONFLICT' },
      replay: { reason: 'INSUFFICIENT_CREDITS' },
    });
  });

  it('a useBatch item under a key refused for a use, after a grant took the key, answers consistently', async () => {
    const user = await server.fundedUser(5);
    const key = `shared-${randomUUID()}`;
    await answer(internal().use.mutate({ userId: user.id, ...use(key, 10) }));
    await answer(internal().grant.mutate({ userId: user.id, amount: 100, reason: 'x', idempotencyKey: key }));
    const single = await answer(internal().use.mutate({ userId: user.id, ...use(key, 10) }));
    const { results } = await internal().useBatch.mutate({ items: [{ userId: user.id, ...use(key, 10) }] });
    // Whatever the key now says, the single path and the batch path must say the same thing.
    expect(results[0]!.ok).toBe(false);
    expect((results[0] as { error: { reason: string } }).error.reason).toBe(single.reason);
  });
});

/**
 * A batch item of a user with no balance row used to be refused without any row lock (use_batch locked only
 * the rows that existed): a late use of the same key that committed meanwhile charged, and the batch still
 * answered a fresh INSUFFICIENT_CREDITS. The batch is held deterministically on another account of the same
 * batch (X: a lapsed hold whose lot this session holds locked, so use_batch waits in release_expired_holds).
 */
describe.runIf(databaseUrl)('use_batch: a keyed refusal for a user without a balance row', () => {
  async function untilLockWait() {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const { rows } = await sql<{ n: number }>`
        select count(*)::int4 as n from pg_stat_activity
         where datname = current_database() and wait_event_type = 'Lock'`.execute(server.db);
      if ((rows[0]?.n ?? 0) > 0) return;
      if (Date.now() > deadline) throw new Error('no statement waited for the lock');
      await sleep(10);
    }
  }

  it('a batch refusal of a user without a balance row is decided under its lock: a late charge under the key answers that refusal', async () => {
    const x = await server.fundedUser(10);
    const hold = await internal().reserve.mutate({
      userId: x.id,
      amount: 10,
      appId: 'review',
      description: 'hold',
      ttlSeconds: 1,
      idempotencyKey: `hold-${randomUUID()}`,
    });
    expect(hold).toBeTruthy();
    await sleep(1200);
    const { rows: lots } = await sql<{ id: string }>`
      select id from credits.lots where account_kind = 'user' and account_id = ${x.id}`.execute(server.db);
    const session = new pg.Client({ connectionString: server.database.url });
    await session.connect();
    await session.query('begin');
    await session.query(`select 1 from credits.lots where id = '${lots[0]!.id}' for update`);
    const u = newUser();
    const key = `late-${randomUUID()}`;
    let batch: Promise<{ results: unknown[] }>;
    let late: Promise<Awaited<ReturnType<typeof answer>>>;
    try {
      batch = internal().useBatch.mutate({
        items: [
          { userId: x.id, ...use(`x-${randomUUID()}`, 5) },
          { userId: u.id, ...use(key, 5) },
        ],
      });
      await untilLockWait();
      // Meanwhile U gets credits and spends them under the same key (another caller, another instance). They
      // wait for the batch's lock of U's row now (before the fix they charged, and the batch answered a fresh
      // INSUFFICIENT_CREDITS for the charged key).
      late = (async () => {
        await internal().grant.mutate({
          userId: u.id,
          amount: 5,
          reason: 'first',
          idempotencyKey: `g-${u.id}`,
        });
        return answer(internal().use.mutate({ userId: u.id, ...use(key, 5) }));
      })();
      await sleep(300);
    } finally {
      await session.query('rollback');
      await session.end();
    }
    const { results } = await batch!;
    const lateAnswer = await late!;
    const replay = await answer(internal().use.mutate({ userId: u.id, ...use(key, 5) }));
    // The batch refused the key first (U had nothing then): that refusal is the key's answer everywhere.
    expect(results[1]).toMatchObject({
      idempotencyKey: key,
      ok: false,
      error: { reason: 'INSUFFICIENT_CREDITS' },
    });
    expect(lateAnswer).toMatchObject({ reason: 'INSUFFICIENT_CREDITS' });
    expect(replay).toMatchObject({ reason: 'INSUFFICIENT_CREDITS' });
    expect(await ledgerSum(server.db, u.id)).toBe(5);
  });
});
