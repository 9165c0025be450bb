import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.ts';
import { configFrom } from '../src/config.ts';
import { type AppDeps, createAppDeps } from '../src/deps.ts';
import { sweepExpiredHolds } from '../src/domain/credits/reservations.ts';
import { failure } from './helpers/errors.ts';
import { expectHoldsConsistent, expectLedgerConsistent, ledgerSum } from './helpers/invariants.ts';
import { clientFor, newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';
import { whileAnotherSession } from './helpers/sessions.ts';

let server: TestServer;
beforeAll(async () => {
  // The sweep is slowed right down here, so every expiry seen in this file is the check on access.
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

function reserveInput(userId: string, amount: number, extra: { ttlSeconds?: number; key?: string } = {}) {
  return {
    userId,
    amount,
    appId: 'llm',
    description: 'completion, upper bound',
    idempotencyKey: extra.key ?? `hold-${randomUUID()}`,
    ...(extra.ttlSeconds === undefined ? {} : { ttlSeconds: extra.ttlSeconds }),
  };
}

async function reservation(id: string, deps: AppDeps = server.deps) {
  return deps.db
    .selectFrom('credits.reservations')
    .selectAll()
    .where('id', '=', id)
    .executeTakeFirstOrThrow();
}

async function ledgerRows(userId: string) {
  return server.deps.db
    .selectFrom('credits.transactions')
    .select(['type', 'amount', 'app_id', 'description', 'balance_before', 'balance_after'])
    .where('user_id', '=', userId)
    .orderBy('created_at')
    .execute();
}

/**
 * Lets the given holds' time run out without waiting for it: their expiry moves into the past by the database
 * clock (the one that decides), which is what a lapsed TTL leaves. Nothing else about them changes.
 */
async function lapse(ids: string[], deps: AppDeps = server.deps) {
  await sql`update credits.reservations set expires_at = now() - interval '1 second'
             where id = any(${ids}::uuid[]) and expires_at > now()`.execute(deps.db);
}

describe('internal.credits.reserve', () => {
  it('holds credits without moving them: spendable drops, reserved rises, no ledger row', async () => {
    const user = await fundedUser(100);
    const before = Date.now();
    const hold = await internal().reserve.mutate(reserveInput(user.id, 40));
    expect(hold.reservationId).toMatch(/^[0-9a-f-]{36}$/);
    expect(hold.balance).toBe(60);
    expect(hold.expiresAt).toBeInstanceOf(Date);
    // default TTL is 600 s
    expect(hold.expiresAt.getTime() - before).toBeGreaterThan(590_000);
    expect(hold.expiresAt.getTime() - before).toBeLessThan(610_000);
    expect(await internal().balance.query({ userId: user.id })).toMatchObject({ balance: 60, reserved: 40 });
    const userView = await (await server.userClient(user)).credits.balance.query();
    expect(userView).toMatchObject({ balance: 60, reserved: 40 });
    expect(await ledgerRows(user.id)).toHaveLength(1);
    expect(await reservation(hold.reservationId)).toMatchObject({
      status: 'open',
      amount: 40,
      app_id: 'llm',
    });
  });

  it('100 parallel reserves of 20 on a balance of 1,000: exactly 50 succeed', async () => {
    server.httpForThisTest(); // real parallel requests
    const user = await fundedUser(1000);
    const outcomes = await Promise.allSettled(
      Array.from({ length: 100 }, () => internal().reserve.mutate(reserveInput(user.id, 20))),
    );
    const held = outcomes.filter((o) => o.status === 'fulfilled');
    const refused = outcomes.filter((o) => o.status === 'rejected');
    expect(held).toHaveLength(50);
    for (const r of refused) {
      expect((r as PromiseRejectedResult).reason).toMatchObject({
        data: { code: 'PAYMENT_REQUIRED', reason: 'INSUFFICIENT_CREDITS' },
      });
    }
    const balances = held
      .map((o) => (o as PromiseFulfilledResult<{ balance: number }>).value.balance)
      .sort((a, b) => a - b);
    expect(balances).toEqual(Array.from({ length: 50 }, (_, i) => i * 20));
    expect(await internal().balance.query({ userId: user.id })).toMatchObject({ balance: 0, reserved: 1000 });
    expect(await ledgerSum(server.deps.db, user.id)).toBe(1000);
  });

  it('a hold blocks credits.use of the held credits, and release gives them back', async () => {
    const user = await fundedUser(100);
    const hold = await internal().reserve.mutate(reserveInput(user.id, 80));
    const client = await server.userClient(user);
    const blocked = await failure(client.credits.use.mutate({ amount: 30, appId: 'chat', description: 'x' }));
    expect(blocked.data).toMatchObject({ code: 'PAYMENT_REQUIRED', reason: 'INSUFFICIENT_CREDITS' });
    const blockedInternal = await failure(
      internal().use.mutate({ userId: user.id, amount: 21, appId: 'chat', description: 'x' }),
    );
    expect(blockedInternal.data).toMatchObject({ code: 'PAYMENT_REQUIRED' });
    const another = await failure(internal().reserve.mutate(reserveInput(user.id, 21)));
    expect(another.data).toMatchObject({ code: 'PAYMENT_REQUIRED' });
    expect((await client.credits.use.mutate({ amount: 20, appId: 'chat', description: 'x' })).balance).toBe(
      0,
    );

    expect(await internal().release.mutate({ reservationId: hold.reservationId })).toEqual({
      released: 80,
      balance: 80,
    });
    expect((await client.credits.use.mutate({ amount: 30, appId: 'chat', description: 'x' })).balance).toBe(
      50,
    );
    expect(await ledgerSum(server.deps.db, user.id)).toBe(50);
  });

  it('is idempotent: a replay answers the first hold, another request under the key is a CONFLICT', async () => {
    server.httpForThisTest(); // real parallel requests
    const user = await fundedUser(100);
    const input = reserveInput(user.id, 30, { key: 'job-1' });
    const results = await Promise.all(Array.from({ length: 20 }, () => internal().reserve.mutate(input)));
    expect(new Set(results.map((r) => JSON.stringify(r))).size).toBe(1);
    expect(results[0]?.balance).toBe(70);
    expect(await internal().balance.query({ userId: user.id })).toMatchObject({ balance: 70, reserved: 30 });
    for (const changed of [
      { ...input, amount: 31 },
      { ...input, description: 'other' },
      { ...input, ttlSeconds: 60 },
      { ...input, appId: 'other' },
      { ...input, metadata: { a: 1 } },
    ]) {
      const error = await failure(internal().reserve.mutate(changed));
      expect(error.data).toMatchObject({ code: 'CONFLICT', reason: 'IDEMPOTENCY_CONFLICT' });
    }
    // The same key of another user is another reservation.
    const other = await fundedUser(100);
    const theirs = await internal().reserve.mutate({ ...input, userId: other.id });
    expect(theirs.reservationId).not.toBe(results[0]?.reservationId);
    // Once committed, a replay still answers with the first result.
    await internal().commit.mutate({ reservationId: results[0]!.reservationId });
    expect(await internal().reserve.mutate(input)).toEqual(results[0]);
  });

  it('refuses bad input with a 400 naming the field, and a guildId for now', async () => {
    const user = await fundedUser(100);
    const base = reserveInput(user.id, 10);
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ ...base, ttlSeconds: 0 }, 'ttlSeconds'],
      [{ ...base, ttlSeconds: 86_401 }, 'ttlSeconds'],
      [{ ...base, ttlSeconds: 1.5 }, 'ttlSeconds'],
      [{ ...base, amount: 0 }, 'amount'],
      [{ ...base, amount: 2.5 }, 'amount'],
      [{ ...base, idempotencyKey: undefined }, 'idempotencyKey'],
      [{ ...base, userId: '' }, 'userId'],
      [{ ...base, surprise: true }, '(input)'],
    ];
    for (const [input, field] of cases) {
      // biome-ignore lint/suspicious/noExplicitAny: deliberately malformed input
      const error = await failure(internal().reserve.mutate(input as any));
      expect(error.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'VALIDATION' });
      expect(error.message).toContain(field);
    }
    // A stranger to the guild holds nothing (membership fails closed).
    const guild = await failure(internal().reserve.mutate({ ...base, guildId: 'guild-1' }));
    expect(guild.data).toMatchObject({ code: 'FORBIDDEN', reason: 'NOT_A_GUILD_MEMBER' });
    expect(await internal().balance.query({ userId: user.id })).toMatchObject({ balance: 100, reserved: 0 });
  });

  it('a user without credits cannot reserve', async () => {
    const error = await failure(internal().reserve.mutate(reserveInput(newUser().id, 1)));
    expect(error.data).toMatchObject({ code: 'PAYMENT_REQUIRED', reason: 'INSUFFICIENT_CREDITS' });
  });
});

describe('internal.credits.commit', () => {
  it('a partial commit posts one usage row for what was used and returns the rest', async () => {
    const user = await fundedUser(100);
    const hold = await internal().reserve.mutate(reserveInput(user.id, 50));
    const result = await internal().commit.mutate({
      reservationId: hold.reservationId,
      amount: 30,
      description: '1,234 tokens',
      metadata: { tokens: 1234 },
    });
    expect(result).toEqual({ transactionId: expect.any(String), committed: 30, released: 20, balance: 70 });
    expect(await internal().balance.query({ userId: user.id })).toMatchObject({
      balance: 70,
      reserved: 0,
      totalSpent: 30,
    });
    expect(await ledgerRows(user.id)).toEqual([
      expect.objectContaining({ type: 'grant', amount: 100 }),
      {
        type: 'usage',
        amount: -30,
        app_id: 'llm',
        description: '1,234 tokens',
        balance_before: 100,
        balance_after: 70,
      },
    ]);
    const usage = await server.deps.db
      .selectFrom('credits.usage_stats')
      .select(['app_id', 'credits_used'])
      .where('user_id', '=', user.id)
      .execute();
    expect(usage).toEqual([{ app_id: 'llm', credits_used: 30 }]);
    expect(await reservation(hold.reservationId)).toMatchObject({
      status: 'committed',
      committed_amount: 30,
      released_amount: 20,
      transaction_id: result.transactionId,
    });
  });

  it('without an amount commits the whole hold, with the description of the reservation', async () => {
    const user = await fundedUser(100);
    const hold = await internal().reserve.mutate(reserveInput(user.id, 45));
    const result = await internal().commit.mutate({ reservationId: hold.reservationId });
    expect(result).toMatchObject({ committed: 45, released: 0, balance: 55 });
    expect((await ledgerRows(user.id))[1]).toMatchObject({
      amount: -45,
      description: 'completion, upper bound',
    });
  });

  it('double commit posts one ledger row and answers the same; parallel commits too', async () => {
    server.httpForThisTest(); // real parallel requests
    const user = await fundedUser(100);
    const hold = await internal().reserve.mutate(reserveInput(user.id, 50));
    const input = { reservationId: hold.reservationId, amount: 10 };
    const results = await Promise.all(Array.from({ length: 10 }, () => internal().commit.mutate(input)));
    expect(new Set(results.map((r) => JSON.stringify(r))).size).toBe(1);
    expect(await internal().commit.mutate(input)).toEqual(results[0]);
    expect(results[0]).toMatchObject({ committed: 10, released: 40, balance: 90 });
    const usage = (await ledgerRows(user.id)).filter((row) => row.type === 'usage');
    expect(usage).toHaveLength(1);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(90);
    // A different commit of a committed reservation is refused, not applied.
    const other = await failure(internal().commit.mutate({ ...input, amount: 11 }));
    expect(other.data).toMatchObject({ code: 'CONFLICT', reason: 'IDEMPOTENCY_CONFLICT' });
    const release = await failure(internal().release.mutate({ reservationId: hold.reservationId }));
    expect(release.data).toMatchObject({ code: 'CONFLICT', reason: 'RESERVATION_NOT_OPEN' });
    expect(await internal().balance.query({ userId: user.id })).toMatchObject({ balance: 90, reserved: 0 });
  });

  it('an amount above the hold is a BAD_REQUEST and leaves the hold open', async () => {
    const user = await fundedUser(100);
    const hold = await internal().reserve.mutate(reserveInput(user.id, 20));
    const error = await failure(internal().commit.mutate({ reservationId: hold.reservationId, amount: 21 }));
    expect(error.data).toMatchObject({
      code: 'BAD_REQUEST',
      reason: 'AMOUNT_EXCEEDS_RESERVATION',
      details: { field: 'amount', requested: 21, reserved: 20 },
    });
    expect(await reservation(hold.reservationId)).toMatchObject({ status: 'open' });
    for (const amount of [0, -1, 1.5]) {
      const invalid = await failure(internal().commit.mutate({ reservationId: hold.reservationId, amount }));
      expect(invalid.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'VALIDATION' });
    }
    expect(await internal().commit.mutate({ reservationId: hold.reservationId, amount: 20 })).toMatchObject({
      committed: 20,
      balance: 80,
    });
  });

  it('commit after expiry is a CONFLICT and the credits are back', async () => {
    const user = await fundedUser(100);
    const hold = await internal().reserve.mutate(reserveInput(user.id, 60, { ttlSeconds: 1 }));
    expect(await internal().balance.query({ userId: user.id })).toMatchObject({ balance: 40, reserved: 60 });
    await lapse([hold.reservationId]);
    const error = await failure(internal().commit.mutate({ reservationId: hold.reservationId, amount: 10 }));
    expect(error.data).toMatchObject({
      code: 'CONFLICT',
      reason: 'RESERVATION_NOT_OPEN',
      details: { status: 'expired' },
    });
    expect(await internal().balance.query({ userId: user.id })).toMatchObject({ balance: 100, reserved: 0 });
    expect(await reservation(hold.reservationId)).toMatchObject({ status: 'expired', released_amount: 60 });
    expect((await ledgerRows(user.id)).filter((row) => row.type === 'usage')).toHaveLength(0);
    // Still refused the second time; a release answers what was returned.
    const again = await failure(internal().commit.mutate({ reservationId: hold.reservationId }));
    expect(again.data).toMatchObject({ reason: 'RESERVATION_NOT_OPEN' });
    expect(await internal().release.mutate({ reservationId: hold.reservationId })).toEqual({
      released: 60,
      balance: 100,
    });
  });

  it('commit after release is a CONFLICT; release is idempotent', async () => {
    const user = await fundedUser(100);
    const hold = await internal().reserve.mutate(reserveInput(user.id, 25));
    const first = await internal().release.mutate({ reservationId: hold.reservationId });
    expect(first).toEqual({ released: 25, balance: 100 });
    expect(await internal().release.mutate({ reservationId: hold.reservationId })).toEqual(first);
    const error = await failure(internal().commit.mutate({ reservationId: hold.reservationId }));
    expect(error.data).toMatchObject({
      code: 'CONFLICT',
      reason: 'RESERVATION_NOT_OPEN',
      details: { status: 'released' },
    });
    expect(await internal().balance.query({ userId: user.id })).toMatchObject({ balance: 100, reserved: 0 });
  });

  it('parallel commits and releases of one hold: exactly one wins', async () => {
    server.httpForThisTest(); // real parallel requests
    const user = await fundedUser(100);
    const hold = await internal().reserve.mutate(reserveInput(user.id, 50));
    const outcomes = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) =>
        i % 2 === 0
          ? internal().commit.mutate({ reservationId: hold.reservationId, amount: 5 })
          : internal().release.mutate({ reservationId: hold.reservationId }),
      ),
    );
    const status = (await reservation(hold.reservationId)).status;
    expect(['committed', 'released']).toContain(status);
    const spent = 100 - (await ledgerSum(server.deps.db, user.id));
    expect(spent).toBe(status === 'committed' ? 5 : 0);
    for (const outcome of outcomes) {
      if (outcome.status === 'rejected') {
        expect(outcome.reason).toMatchObject({ data: { reason: 'RESERVATION_NOT_OPEN' } });
      }
    }
  });

  it('unknown and malformed reservation ids', async () => {
    const missing = await failure(internal().commit.mutate({ reservationId: randomUUID() }));
    expect(missing.data).toMatchObject({ code: 'NOT_FOUND', reason: 'RESERVATION_NOT_FOUND' });
    const missingRelease = await failure(internal().release.mutate({ reservationId: randomUUID() }));
    expect(missingRelease.data).toMatchObject({ code: 'NOT_FOUND' });
    const malformed = await failure(internal().commit.mutate({ reservationId: 'not-a-uuid' }));
    expect(malformed.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'VALIDATION' });
  });

  it('needs the service key', async () => {
    const error = await failure(
      server.rawClient({}).internal.credits.commit.mutate({ reservationId: randomUUID() }),
    );
    expect(error.data).toMatchObject({ code: 'UNAUTHORIZED' });
  });
});

describe('expiry', () => {
  it('an expired hold stops blocking spends before any sweep (check on access)', async () => {
    const user = await fundedUser(100);
    const holds = await Promise.all([
      internal().reserve.mutate(reserveInput(user.id, 70, { ttlSeconds: 1 })),
      internal().reserve.mutate(reserveInput(user.id, 30, { ttlSeconds: 1 })),
    ]);
    await lapse(holds.map((h) => h.reservationId));
    // Nobody has touched the holds since they lapsed, yet a read already counts only holds still open.
    expect(await internal().balance.query({ userId: user.id })).toMatchObject({ balance: 100, reserved: 0 });
    const stored = await server.deps.db
      .selectFrom('credits.balances')
      .select('reserved')
      .where('user_id', '=', user.id)
      .executeTakeFirstOrThrow();
    expect(stored.reserved).toBe(100);
    const client = await server.userClient(user);
    expect((await client.credits.use.mutate({ amount: 90, appId: 'chat', description: 'x' })).balance).toBe(
      10,
    );
    for (const hold of holds) {
      expect(await reservation(hold.reservationId)).toMatchObject({ status: 'expired' });
    }
    // A new reserve checks the same way.
    const second = await internal().reserve.mutate(reserveInput(user.id, 10, { ttlSeconds: 1 }));
    await lapse([second.reservationId]);
    expect((await internal().reserve.mutate(reserveInput(user.id, 10))).balance).toBe(0);
    expect(await reservation(second.reservationId)).toMatchObject({ status: 'expired' });
  });

  it('the periodic sweep, started with the app, returns expired holds nobody touches', async () => {
    // A second app on the same database whose sweep runs every second; it serves no requests.
    const sweeping = await buildApp(
      { ...server.deps, config: { ...server.deps.config, reservationSweepSeconds: 1 } },
      { logger: false },
    );
    await sweeping.ready();
    try {
      const user = await fundedUser(100);
      const short = await internal().reserve.mutate(reserveInput(user.id, 40, { ttlSeconds: 1 }));
      const long = await internal().reserve.mutate(reserveInput(user.id, 35, { ttlSeconds: 3600 }));
      await lapse([short.reservationId]);
      for (let attempt = 0; attempt < 100; attempt++) {
        if ((await reservation(short.reservationId)).status === 'expired') break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      expect(await reservation(short.reservationId)).toMatchObject({ status: 'expired' });
      expect(await reservation(long.reservationId)).toMatchObject({ status: 'open' });
      expect(await internal().balance.query({ userId: user.id })).toMatchObject({
        balance: 65,
        reserved: 35,
      });
    } finally {
      await sweeping.close();
    }
  });

  it.skipIf(!process.env.DATABASE_URL)(
    'two instances on one database: sweeps, commits and releases race, every hold settles once',
    async () => {
      server.httpForThisTest(); // real parallel requests
      // A second, independent server process on the same database.
      const config = configFrom({
        ...server.database.env,
        MANA_CORE_AUTH_URL: server.auth.url,
        MANA_CORE_SERVICE_KEY: SERVICE_KEY,
        RESERVATION_SWEEP_SECONDS: '1',
      });
      const secondDeps = await createAppDeps(config);
      const second = await buildApp(secondDeps, { closeDepsOnClose: true, logger: false });
      await second.listen({ port: 0, host: '127.0.0.1' });
      const address = second.server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      const secondClient = clientFor(`http://127.0.0.1:${port}`, () => ({
        'x-service-key': SERVICE_KEY,
      })).internal.credits;
      try {
        const users = await Promise.all(Array.from({ length: 4 }, () => fundedUser(1000)));
        const lapsing = await Promise.all(
          Array.from({ length: 40 }, (_, i) =>
            internal().reserve.mutate(reserveInput(users[i % 4]!.id, 10, { ttlSeconds: 1 })),
          ),
        );
        const live = await Promise.all(
          Array.from({ length: 20 }, (_, i) => internal().reserve.mutate(reserveInput(users[i % 4]!.id, 10))),
        );
        await lapse(lapsing.map((h) => h.reservationId));
        const calls: Promise<unknown>[] = [];
        lapsing.forEach((hold, i) => {
          const client = i % 2 === 0 ? internal() : secondClient;
          calls.push(
            i % 3 === 0
              ? client.release.mutate({ reservationId: hold.reservationId })
              : client.commit.mutate({ reservationId: hold.reservationId, amount: 5 }),
          );
        });
        live.forEach((hold, i) => {
          const client = i % 2 === 0 ? secondClient : internal();
          calls.push(client.commit.mutate({ reservationId: hold.reservationId, amount: 4 }));
        });
        for (let i = 0; i < 5; i++) {
          calls.push(sweepBoth(server.deps, secondDeps));
        }
        const outcomes = await Promise.allSettled(calls);
        for (const outcome of outcomes) {
          if (outcome.status === 'rejected') {
            expect(outcome.reason).toMatchObject({ data: { reason: 'RESERVATION_NOT_OPEN' } });
          }
        }
        // Every lapsed hold expired (none was charged); every live one was committed once.
        for (const hold of lapsing) {
          expect(await reservation(hold.reservationId)).toMatchObject({
            status: 'expired',
            released_amount: 10,
          });
        }
        for (const hold of live) {
          expect(await reservation(hold.reservationId)).toMatchObject({
            status: 'committed',
            committed_amount: 4,
          });
        }
        for (const user of users) {
          expect(await internal().balance.query({ userId: user.id })).toMatchObject({
            balance: 1000 - 5 * 4,
            reserved: 0,
          });
        }
      } finally {
        await second.close();
      }
    },
  );
});

async function sweepBoth(a: AppDeps, b: AppDeps) {
  await Promise.all([sweepExpiredHolds(a.db), sweepExpiredHolds(b.db)]);
}

// Two sessions at once: Postgres only.
describe.runIf(Boolean(process.env.DATABASE_URL))('a release beside a debit of the same lot', () => {
  // A debit locks the balance row, then burns the lot. A release that unpinned the lot before writing the
  // balance deadlocked with it (one of the two aborted, the release answered 500).
  it('the release writes the balance first: it waits for the debit, then returns the hold', async () => {
    const user = await fundedUser(100);
    const hold = await internal().reserve.mutate(reserveInput(user.id, 30));
    const lot = await server.db
      .selectFrom('credits.lots')
      .select('id')
      .where('account_kind', '=', 'user')
      .where('account_id', '=', user.id)
      .executeTakeFirstOrThrow();
    const released = await whileAnotherSession(
      server.database.url!,
      ['select 1 from credits.balances where user_id = $1 for update', [user.id]],
      () => internal().release.mutate({ reservationId: hold.reservationId }),
      // what a debit does next under that lock (burn_lots): write the lot
      ['update credits.lots set remaining = remaining where id = $1', [lot.id]],
    );
    expect(released).toEqual({ released: 30, balance: 100 });
  });
});
