import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { failure } from './helpers/errors.ts';
import { expectHoldsConsistent, expectLedgerConsistent, ledgerSum } from './helpers/invariants.ts';
import { newUser, startTestServer, type TestServer } from './helpers/server.ts';

let server: TestServer;
beforeAll(async () => {
  // Calls run in process (helpers/server.ts: Transport), the concurrent ones over HTTP.
  server = await startTestServer({ RESERVATION_SWEEP_SECONDS: '3600' }, { transport: 'in-process' });
});
afterEach(async () => {
  await expectLedgerConsistent(server.deps.db);
  await expectHoldsConsistent(server.deps.db);
});
afterAll(async () => {
  await server.close();
});

const internal = () => server.internalClient().internal.credits;

const fundedUser = (amount: number) => server.fundedUser(amount);

function item(userId: string, amount: number, key = `item-${randomUUID()}`) {
  return { userId, amount, appId: 'meter', description: 'metered call', idempotencyKey: key };
}

async function ledgerCount() {
  const { rows } = await sql<{ n: number }>`select count(*)::int4 as n from credits.transactions`.execute(
    server.deps.db,
  );
  return rows[0]!.n;
}

async function balanceOf(userId: string) {
  return internal().balance.query({ userId });
}

describe('internal.credits.useBatch', () => {
  it('items of one account that span lots get the portions a burn item by item would give', async () => {
    // One burn per account for the sum, split back in input order (use_batch.sql): the portions must
    // be those of burning each item in turn. Burn order here: priority 5, then 10 (expiring), then 20.
    const user = newUser();
    for (const [key, amount, priority, expiresInDays] of [
      ['lot-20', 3, 20, undefined],
      ['lot-5', 5, 5, undefined],
      ['lot-10', 10, 10, 30],
    ] as const) {
      await internal().grant.mutate({
        userId: user.id,
        amount,
        reason: 'lots',
        idempotencyKey: key,
        priority,
        ...(expiresInDays ? { expiresInDays } : {}),
      });
    }
    const other = await fundedUser(10);
    const { results } = await internal().useBatch.mutate({
      items: [
        item(user.id, 4, 'a'),
        item(other.id, 2, 'o'),
        item(user.id, 3, 'b'),
        item(user.id, 6, 'c'),
        item(user.id, 9, 'too-much'),
        item(user.id, 2, 'd'),
      ],
    });
    expect(results.map((result) => result.ok)).toEqual([true, true, true, true, false, true]);
    const { rows } = await sql<{ key: string; portions: string }>`
      select t.idempotency_key as key,
             string_agg(l.priority || ':' || x.amount, ',' order by x.n) as portions
        from credits.transactions t
       cross join lateral unnest(t.lot_ids, t.lot_amounts) with ordinality as x(id, amount, n)
        join credits.lots l on l.id = x.id
       where t.user_id = ${user.id} and t.type = 'usage'
       group by t.idempotency_key order by t.idempotency_key`.execute(server.deps.db);
    expect(rows).toEqual([
      { key: 'a', portions: '5:4' },
      { key: 'b', portions: '5:1,10:2' },
      { key: 'c', portions: '10:6' },
      { key: 'd', portions: '10:2' },
    ]);
    expect((await balanceOf(user.id)).balance).toBe(3);
  });

  it('a mixed batch: good, insufficient, replayed, bad and conflicting items each get their own answer', async () => {
    const rich = await fundedUser(100);
    const poor = await fundedUser(5);
    const other = await fundedUser(50);
    const earlier = await internal().use.mutate({ ...item(rich.id, 7, 'already-posted') });
    const rowsBefore = await ledgerCount();

    const { results } = await internal().useBatch.mutate({
      items: [
        item(rich.id, 30, 'good-1'),
        item(poor.id, 6, 'too-much'),
        item(rich.id, 7, 'already-posted'),
        { ...item(rich.id, -5, 'bad-amount') },
        { ...item(rich.id, 1.5, 'fractional') },
        item(other.id, 20, 'good-2'),
        { ...item(rich.id, 8, 'already-posted') },
        { ...item(other.id, 1, 'pool'), guildId: 'guild-1' },
        { ...item(other.id, 1, 'extra'), surprise: true },
        'not an item',
      ],
    });

    expect(results).toHaveLength(10);
    expect(results[0]).toEqual({
      idempotencyKey: 'good-1',
      ok: true,
      transactionId: expect.any(String),
      balance: 63,
    });
    expect(results[1]).toEqual({
      idempotencyKey: 'too-much',
      ok: false,
      error: { reason: 'INSUFFICIENT_CREDITS', message: 'Insufficient credits: 6 required, 5 available' },
    });
    expect(results[2]).toEqual({
      idempotencyKey: 'already-posted',
      ok: true,
      transactionId: earlier.transactionId,
      balance: earlier.balance,
    });
    expect(results[3]).toMatchObject({
      idempotencyKey: 'bad-amount',
      ok: false,
      error: { reason: 'VALIDATION' },
    });
    expect(results[3]!.ok === false && results[3]!.error.message).toContain('amount');
    expect(results[4]).toMatchObject({
      idempotencyKey: 'fractional',
      ok: false,
      error: { reason: 'VALIDATION' },
    });
    expect(results[5]).toMatchObject({ idempotencyKey: 'good-2', ok: true, balance: 30 });
    expect(results[6]).toMatchObject({
      idempotencyKey: 'already-posted',
      ok: false,
      error: { reason: 'IDEMPOTENCY_CONFLICT' },
    });
    expect(results[7]).toMatchObject({
      idempotencyKey: 'pool',
      ok: false,
      error: { reason: 'NOT_A_GUILD_MEMBER' },
    });
    expect(results[8]).toMatchObject({ idempotencyKey: 'extra', ok: false, error: { reason: 'VALIDATION' } });
    expect(results[9]).toMatchObject({ idempotencyKey: null, ok: false, error: { reason: 'VALIDATION' } });

    // Exactly the two good items were posted; nothing else moved.
    expect(await ledgerCount()).toBe(rowsBefore + 2);
    expect(await balanceOf(rich.id)).toMatchObject({ balance: 63, totalSpent: 37 });
    expect(await balanceOf(poor.id)).toMatchObject({ balance: 5, totalSpent: 0 });
    expect(await balanceOf(other.id)).toMatchObject({ balance: 30, totalSpent: 20 });
    const posted = await server.deps.db
      .selectFrom('credits.transactions')
      .select(['id', 'type', 'amount', 'app_id', 'description', 'balance_before', 'balance_after'])
      .where('idempotency_key', '=', 'good-1')
      .executeTakeFirstOrThrow();
    expect(posted).toEqual({
      id: results[0]!.ok ? results[0]!.transactionId : '',
      type: 'usage',
      amount: -30,
      app_id: 'meter',
      description: 'metered call',
      balance_before: 93,
      balance_after: 63,
    });
  });

  it('items of one user are decided in input order, each on its own', async () => {
    const user = await fundedUser(100);
    const { results } = await internal().useBatch.mutate({
      items: [item(user.id, 60), item(user.id, 50), item(user.id, 40), item(user.id, 1)],
    });
    expect(results.map((r) => (r.ok ? r.balance : r.error.reason))).toEqual([
      40,
      'INSUFFICIENT_CREDITS',
      0,
      'INSUFFICIENT_CREDITS',
    ]);
    const chain = await server.deps.db
      .selectFrom('credits.transactions')
      .select(['amount', 'balance_before', 'balance_after'])
      .where('user_id', '=', user.id)
      .where('type', '=', 'usage')
      // Rows of one INSERT may share a created_at (microseconds): the chain itself gives the order.
      .orderBy('balance_before', 'desc')
      .execute();
    expect(chain).toEqual([
      { amount: -60, balance_before: 100, balance_after: 40 },
      { amount: -40, balance_before: 40, balance_after: 0 },
    ]);
  });

  it('replaying a whole batch answers the same and posts nothing new', async () => {
    const a = await fundedUser(100);
    const b = await fundedUser(100);
    const input = { items: [item(a.id, 10), item(b.id, 20), item(a.id, 30), item(b.id, 500)] };
    const first = await internal().useBatch.mutate(input);
    const rows = await ledgerCount();
    const again = await internal().useBatch.mutate(input);
    // The short item is tried again (it never posted), so it is refused again with the same reason.
    expect(again).toEqual(first);
    expect(await ledgerCount()).toBe(rows);
    expect(await ledgerSum(server.deps.db, a.id)).toBe(60);
    expect(await ledgerSum(server.deps.db, b.id)).toBe(80);
  });

  it('one key twice in a batch: same request replays, another request conflicts', async () => {
    const user = await fundedUser(100);
    const { results } = await internal().useBatch.mutate({
      items: [item(user.id, 10, 'twice'), item(user.id, 10, 'twice'), item(user.id, 11, 'twice')],
    });
    expect(results[0]).toMatchObject({ ok: true, balance: 90 });
    expect(results[1]).toEqual(results[0]);
    expect(results[2]).toMatchObject({ ok: false, error: { reason: 'IDEMPOTENCY_CONFLICT' } });
    expect(await ledgerSum(server.deps.db, user.id)).toBe(90);
  });

  it('a key refused for lack of credits is taken by its refusal, also later in the same batch', async () => {
    const user = await fundedUser(10);
    const other = newUser();
    const { results } = await internal().useBatch.mutate({
      items: [
        item(user.id, 20, 'retry'),
        item(other.id, 1, 'retry'),
        item(user.id, 5, 'retry'),
        item(user.id, 20, 'retry'),
      ],
    });
    // The same request is its refusal again (available as it was then); another request under the key
    // conflicts. Keys are scoped to the account, so the other user's item is refused on its own.
    expect(results.map((r) => (r.ok ? 'ok' : r.error.reason))).toEqual([
      'INSUFFICIENT_CREDITS',
      'INSUFFICIENT_CREDITS',
      'IDEMPOTENCY_CONFLICT',
      'INSUFFICIENT_CREDITS',
    ]);
    expect(results[3]).toEqual(results[0]);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(10);
  });

  it('shares its key space with credits.use', async () => {
    const user = await fundedUser(100);
    const { results } = await internal().useBatch.mutate({ items: [item(user.id, 12, 'shared')] });
    const replay = await internal().use.mutate(item(user.id, 12, 'shared'));
    expect(replay).toEqual({
      transactionId: results[0]!.ok ? results[0]!.transactionId : '',
      balance: 88,
    });
    const conflict = await failure(internal().use.mutate(item(user.id, 13, 'shared')));
    expect(conflict.data).toMatchObject({ reason: 'IDEMPOTENCY_CONFLICT' });
  });

  it('respects holds, and returns expired ones before refusing', async () => {
    const user = await fundedUser(100);
    const hold = await internal().reserve.mutate({
      userId: user.id,
      amount: 80,
      appId: 'llm',
      description: 'bound',
      idempotencyKey: 'hold',
      ttlSeconds: 1,
    });
    const blocked = await internal().useBatch.mutate({ items: [item(user.id, 30), item(user.id, 20)] });
    expect(blocked.results.map((r) => r.ok)).toEqual([false, true]);
    // The hold's time runs out (its expiry moves into the past by the database clock, as a lapsed TTL leaves it).
    await sql`update credits.reservations set expires_at = now() - interval '1 second'
               where id = ${hold.reservationId}::uuid`.execute(server.deps.db);
    const freed = await internal().useBatch.mutate({ items: [item(user.id, 30)] });
    expect(freed.results[0]).toMatchObject({ ok: true, balance: 50 });
    expect(await balanceOf(user.id)).toMatchObject({ balance: 50, reserved: 0 });
  });

  it('1,000 items: one balance write per user, usage summed per app and day', async () => {
    const users = await Promise.all(Array.from({ length: 10 }, () => fundedUser(10_000)));
    const versions = async () =>
      (
        await server.deps.db
          .selectFrom('credits.balances')
          .select(['user_id', 'version'])
          .where(
            'user_id',
            'in',
            users.map((u) => u.id),
          )
          .orderBy('user_id')
          .execute()
      ).map((row) => row.version);
    const before = await versions();
    const items = Array.from({ length: 1000 }, (_, i) => ({
      ...item(users[i % 10]!.id, 1 + (i % 3)),
      appId: Math.floor(i / 10) % 2 === 0 ? 'even' : 'odd',
    }));
    const { results } = await internal().useBatch.mutate({ items });
    expect(results.every((r) => r.ok)).toBe(true);
    expect(results.map((r) => r.idempotencyKey)).toEqual(items.map((i) => i.idempotencyKey));
    expect(await versions()).toEqual(before.map((v) => v + 1));
    const spent = items.reduce((sum, i) => sum + i.amount, 0);
    const usage = await server.deps.db
      .selectFrom('credits.usage_stats')
      .select(sql<number>`sum(credits_used)::int8`.as('total'))
      .where(
        'user_id',
        'in',
        users.map((u) => u.id),
      )
      .executeTakeFirstOrThrow();
    expect(usage.total).toBe(spent);
    const { rows } = await sql<{ n: number }>`
      select count(*)::int4 as n from credits.usage_stats where user_id = ${users[0]!.id}`.execute(
      server.deps.db,
    );
    expect(rows[0]?.n).toBe(2);
  });

  it('parallel batches and single uses on the same users never overspend', async () => {
    server.httpForThisTest(); // real parallel requests
    const users = await Promise.all([fundedUser(300), fundedUser(300)]);
    const calls = [
      ...Array.from({ length: 10 }, () =>
        internal().useBatch.mutate({
          items: Array.from({ length: 60 }, (_, i) => item(users[i % 2]!.id, 1)),
        }),
      ),
      ...Array.from({ length: 40 }, (_, i) =>
        internal().use.mutate({ userId: users[i % 2]!.id, amount: 1, appId: 'single', description: 'x' }),
      ),
    ];
    await Promise.allSettled(calls);
    for (const user of users) {
      expect(await balanceOf(user.id)).toMatchObject({ balance: 0, totalSpent: 300 });
    }
  });

  it('50 parallel batches carrying one key: it is posted once, every batch answers it the same', async () => {
    server.httpForThisTest(); // real parallel requests
    const user = await fundedUser(1000);
    const once = item(user.id, 7, 'shared-key');
    const responses = await Promise.all(
      Array.from({ length: 50 }, () => internal().useBatch.mutate({ items: [once, item(user.id, 1)] })),
    );
    const shared = responses.map(({ results }) => results[0]);
    // a replay answers the first result: the same transaction and the balance after it
    expect(new Set(shared.map((result) => JSON.stringify(result))).size).toBe(1);
    expect(shared[0]).toMatchObject({ ok: true, idempotencyKey: 'shared-key' });
    expect(responses.every(({ results }) => results[1]?.ok)).toBe(true);
    const rows = await server.deps.db
      .selectFrom('credits.transactions')
      .select('id')
      .where('user_id', '=', user.id)
      .where('idempotency_key', '=', 'shared-key')
      .execute();
    expect(rows).toHaveLength(1);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(1000 - 7 - 50);
  });

  it('the list itself must hold 1..1000 items', async () => {
    for (const items of [[], Array.from({ length: 1001 }, () => item('u', 1))]) {
      const error = await failure(internal().useBatch.mutate({ items }));
      expect(error.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'VALIDATION' });
      expect(error.message).toContain('items');
    }
    // biome-ignore lint/suspicious/noExplicitAny: deliberately malformed input
    const notAList = await failure(internal().useBatch.mutate({ items: 'nope' } as any));
    expect(notAList.data).toMatchObject({ code: 'BAD_REQUEST' });
  });

  it('needs the service key', async () => {
    const error = await failure(
      server.rawClient({}).internal.credits.useBatch.mutate({ items: [item('u', 1)] }),
    );
    expect(error.data).toMatchObject({ code: 'UNAUTHORIZED' });
  });
});
