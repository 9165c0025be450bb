import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { sweepExpiredHolds } from '../src/domain/credits/reservations.ts';
import type { GuildRole } from './helpers/auth-server.ts';
import { failure } from './helpers/errors.ts';
import { expectHoldsConsistent, expectLedgerConsistent } from './helpers/invariants.ts';
import { type Client, newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';
import { whileAnotherSession } from './helpers/sessions.ts';

let server: TestServer;
beforeAll(async () => {
  // No membership cache, so role changes take effect at once; the sweep is slowed right down, so every
  // expiry seen here is the check on access or an explicit sweep.
  // Calls run in process (helpers/server.ts: Transport), the concurrent ones over HTTP.
  server = await startTestServer(
    { MEMBERSHIP_CACHE_SECONDS: '0', RESERVATION_SWEEP_SECONDS: '3600' },
    { transport: 'in-process' },
  );
  server.auth.expectedServiceKey = SERVICE_KEY;
});
afterEach(async () => {
  server.auth.membershipMode = 'ok';
  await expectLedgerConsistent(server.deps.db);
  await expectHoldsConsistent(server.deps.db);
});
afterAll(async () => {
  // close() runs a full reconcile, including holds_match_reservations and member_usage_counters.
  await server.close();
});

const internal = () => server.internalClient().internal;

interface Member {
  id: string;
  client: Client;
}

async function join(guildId: string, role: GuildRole): Promise<Member> {
  const user = newUser();
  server.auth.setRole(guildId, user.id, role);
  return { id: user.id, client: await server.userClient(user) };
}

/** A guild whose pool holds `amount`, and one member with the given daily limit (null = unlimited). */
async function guildWithMember(amount: number, dailyLimit: number | null = null) {
  const guildId = `guild-${randomUUID()}`;
  await internal().guildPool.init.mutate({ guildId });
  const owner = await join(guildId, 'owner');
  await internal().credits.grant.mutate({
    userId: owner.id,
    amount,
    reason: 'funds',
    idempotencyKey: 'fund',
  });
  await owner.client.guild.fund.mutate({ guildId, amount });
  const member = await join(guildId, 'member');
  if (dailyLimit !== null) {
    await owner.client.guild.setMemberLimits.mutate({
      guildId,
      userId: member.id,
      dailyLimit,
      monthlyLimit: null,
    });
  }
  return { guildId, owner, member };
}

function reserveInput(
  guildId: string,
  userId: string,
  amount: number,
  extra: { key?: string; ttl?: number } = {},
) {
  return {
    guildId,
    userId,
    amount,
    appId: 'llm',
    description: 'completion, upper bound',
    idempotencyKey: extra.key ?? `hold-${randomUUID()}`,
    ...(extra.ttl === undefined ? {} : { ttlSeconds: extra.ttl }),
  };
}

function useInput(guildId: string, amount: number, key = `use-${randomUUID()}`) {
  return { guildId, amount, appId: 'llm', description: 'completion', idempotencyKey: key };
}

async function pool(guildId: string) {
  return server.deps.db
    .selectFrom('credits.guild_pools')
    .select(['balance', 'reserved', 'total_spent'])
    .where('organization_id', '=', guildId)
    .executeTakeFirstOrThrow();
}

async function guildRows(guildId: string) {
  return server.deps.db
    .selectFrom('credits.guild_transactions')
    .select(['id', 'type', 'amount', 'user_id', 'app_id', 'idempotency_key', 'available_after'])
    .where('organization_id', '=', guildId)
    .orderBy('created_at')
    .execute();
}

async function reservation(id: string) {
  return server.deps.db
    .selectFrom('credits.reservations')
    .selectAll()
    .where('id', '=', id)
    .executeTakeFirstOrThrow();
}

/**
 * Lets the given holds' time run out without waiting for it: their expiry moves into the past by the database
 * clock (the one that decides), which is what a lapsed TTL leaves. Nothing else about them changes.
 */
async function lapse(ids: string[]) {
  await sql`update credits.reservations set expires_at = now() - interval '1 second'
             where id = any(${ids}::uuid[]) and expires_at > now()`.execute(server.deps.db);
}

describe('pool holds', () => {
  it('reserve holds pool credits without moving them; a partial commit posts one guild usage row', async () => {
    const { guildId, member } = await guildWithMember(100);
    const hold = await internal().credits.reserve.mutate(reserveInput(guildId, member.id, 40));
    expect(hold.balance).toBe(60);
    expect(await pool(guildId)).toEqual({ balance: 100, reserved: 40, total_spent: 0 });
    expect(await member.client.guild.balance.query({ guildId })).toMatchObject({ balance: 60 });
    expect(await reservation(hold.reservationId)).toMatchObject({ organization_id: guildId, status: 'open' });
    // The member's personal account is untouched.
    expect(await internal().credits.balance.query({ userId: member.id })).toMatchObject({
      balance: 0,
      reserved: 0,
    });

    const commit = { reservationId: hold.reservationId, amount: 25 };
    const committed = await internal().credits.commit.mutate(commit);
    expect(committed).toMatchObject({ committed: 25, released: 15, balance: 75 });
    expect(await pool(guildId)).toEqual({ balance: 75, reserved: 0, total_spent: 25 });
    // Committing again answers the same and posts nothing.
    expect(await internal().credits.commit.mutate(commit)).toEqual(committed);
    const usage = (await guildRows(guildId)).filter((row) => row.type === 'usage');
    expect(usage).toEqual([
      {
        id: committed.transactionId,
        type: 'usage',
        amount: -25,
        user_id: member.id,
        app_id: 'llm',
        idempotency_key: `\u001freservation:${hold.reservationId}`,
        available_after: 75,
      },
    ]);
    expect(await member.client.guild.memberLimits.query({ guildId, userId: member.id })).toMatchObject({
      spentToday: 25,
      heldToday: 0,
    });
    const stats = await server.deps.db
      .selectFrom('credits.usage_stats')
      .select('credits_used')
      .where('user_id', '=', member.id)
      .where('app_id', '=', 'llm')
      .executeTakeFirstOrThrow();
    expect(stats.credits_used).toBe(25);
    // Another commit of the same reservation with another amount is a conflict, not a second charge.
    const other = await failure(internal().credits.commit.mutate({ ...commit, amount: 10 }));
    expect(other.data).toMatchObject({ code: 'CONFLICT', reason: 'IDEMPOTENCY_CONFLICT' });
  });

  it('release returns the hold to the pool; releasing again answers the same; commit afterwards conflicts', async () => {
    const { guildId, member } = await guildWithMember(50);
    const hold = await internal().credits.reserve.mutate(reserveInput(guildId, member.id, 30));
    expect(await internal().credits.release.mutate({ reservationId: hold.reservationId })).toEqual({
      released: 30,
      balance: 50,
    });
    expect(await internal().credits.release.mutate({ reservationId: hold.reservationId })).toEqual({
      released: 30,
      balance: 50,
    });
    expect(await pool(guildId)).toEqual({ balance: 50, reserved: 0, total_spent: 0 });
    const late = await failure(internal().credits.commit.mutate({ reservationId: hold.reservationId }));
    expect(late.data).toMatchObject({ code: 'CONFLICT', reason: 'RESERVATION_NOT_OPEN' });
    expect(await guildRows(guildId)).toHaveLength(1); // the funding only
  });

  it('a pool hold blocks guild.use of the held credits; the pool short → INSUFFICIENT_POOL_CREDITS', async () => {
    const { guildId, member } = await guildWithMember(100);
    await internal().credits.reserve.mutate(reserveInput(guildId, member.id, 80));
    const peer = await join(guildId, 'member');
    const short = await failure(peer.client.guild.use.mutate(useInput(guildId, 21)));
    expect(short.data).toMatchObject({ code: 'PAYMENT_REQUIRED', reason: 'INSUFFICIENT_POOL_CREDITS' });
    const hold = await failure(internal().credits.reserve.mutate(reserveInput(guildId, peer.id, 21)));
    expect(hold.data).toMatchObject({ code: 'PAYMENT_REQUIRED', reason: 'INSUFFICIENT_POOL_CREDITS' });
    expect(await peer.client.guild.use.mutate(useInput(guildId, 20))).toMatchObject({ poolBalance: 0 });
    expect(await pool(guildId)).toEqual({ balance: 80, reserved: 80, total_spent: 20 });
  });

  it('daily limit 10 with an open hold of 8: only 2 more can be used or held', async () => {
    const { guildId, member } = await guildWithMember(100, 10);
    const hold = await internal().credits.reserve.mutate(reserveInput(guildId, member.id, 8));
    expect(await member.client.guild.memberLimits.query({ guildId, userId: member.id })).toEqual({
      dailyLimit: 10,
      monthlyLimit: null,
      spentToday: 0,
      spentThisMonth: 0,
      heldToday: 8,
      heldThisMonth: 8,
    });
    const over = await failure(member.client.guild.use.mutate(useInput(guildId, 3)));
    expect(over.data).toMatchObject({
      code: 'PRECONDITION_FAILED',
      reason: 'DAILY_LIMIT_EXCEEDED',
      details: { limit: 10, spent: 8, requested: 3 },
    });
    const overHold = await failure(internal().credits.reserve.mutate(reserveInput(guildId, member.id, 3)));
    expect(overHold.data).toMatchObject({
      code: 'PRECONDITION_FAILED',
      reason: 'DAILY_LIMIT_EXCEEDED',
      details: { limit: 10, spent: 8, requested: 3 },
    });
    await member.client.guild.use.mutate(useInput(guildId, 2));
    // Committing 5 of the 8 returns 3 to the member's day as well as to the pool.
    await internal().credits.commit.mutate({ reservationId: hold.reservationId, amount: 5 });
    expect(await member.client.guild.memberLimits.query({ guildId, userId: member.id })).toMatchObject({
      spentToday: 7,
      heldToday: 0,
    });
    await member.client.guild.use.mutate(useInput(guildId, 3));
    const full = await failure(member.client.guild.use.mutate(useInput(guildId, 1)));
    expect(full.data).toMatchObject({ reason: 'DAILY_LIMIT_EXCEEDED', details: { spent: 10 } });
    expect(await pool(guildId)).toEqual({ balance: 90, reserved: 0, total_spent: 10 });
  });

  it('a monthly limit counts open holds too', async () => {
    const { guildId, owner, member } = await guildWithMember(100);
    await owner.client.guild.setMemberLimits.mutate({
      guildId,
      userId: member.id,
      dailyLimit: null,
      monthlyLimit: 6,
    });
    await internal().credits.reserve.mutate(reserveInput(guildId, member.id, 6));
    const error = await failure(internal().credits.reserve.mutate(reserveInput(guildId, member.id, 1)));
    expect(error.data).toMatchObject({
      reason: 'MONTHLY_LIMIT_EXCEEDED',
      details: { limit: 6, spent: 6, requested: 1 },
    });
  });

  it('a replayed pool reserve answers the first hold, even at the limit; another payload is a CONFLICT', async () => {
    const { guildId, member } = await guildWithMember(100, 10);
    const input = reserveInput(guildId, member.id, 10, { key: 'once' });
    const first = await internal().credits.reserve.mutate(input);
    expect(await internal().credits.reserve.mutate(input)).toEqual(first);
    const other = await failure(internal().credits.reserve.mutate({ ...input, amount: 9 }));
    expect(other.data).toMatchObject({ code: 'CONFLICT', reason: 'IDEMPOTENCY_CONFLICT' });
    // The same key for a personal hold is another request too.
    const { guildId: _, ...personal } = input;
    const crossed = await failure(internal().credits.reserve.mutate(personal));
    expect(crossed.data).toMatchObject({ code: 'CONFLICT', reason: 'IDEMPOTENCY_CONFLICT' });
    expect(await pool(guildId)).toMatchObject({ reserved: 10 });
  });

  it('membership fails closed: a non-member or removed member → FORBIDDEN, auth down → SERVICE_UNAVAILABLE', async () => {
    const { guildId, member } = await guildWithMember(100);
    const stranger = newUser();
    const refused = await failure(internal().credits.reserve.mutate(reserveInput(guildId, stranger.id, 5)));
    expect(refused.data).toMatchObject({ code: 'FORBIDDEN', reason: 'NOT_A_GUILD_MEMBER' });
    server.auth.membershipMode = 'down';
    const down = await failure(internal().credits.reserve.mutate(reserveInput(guildId, member.id, 5)));
    expect(down.data).toMatchObject({ code: 'SERVICE_UNAVAILABLE' });
    server.auth.membershipMode = 'ok';
    server.auth.setRole(guildId, member.id, null);
    const removed = await failure(internal().credits.reserve.mutate(reserveInput(guildId, member.id, 5)));
    expect(removed.data).toMatchObject({ code: 'FORBIDDEN' });
    expect(await pool(guildId)).toEqual({ balance: 100, reserved: 0, total_spent: 0 });
    const missing = await failure(
      internal().credits.reserve.mutate(reserveInput(`guild-${randomUUID()}`, member.id, 5)),
    );
    expect(missing.data).toMatchObject({ code: 'FORBIDDEN' });
  });

  it('an expired pool hold stops blocking the pool and the limit before any sweep; commit then conflicts', async () => {
    const { guildId, member } = await guildWithMember(10, 10);
    const hold = await internal().credits.reserve.mutate(reserveInput(guildId, member.id, 10, { ttl: 1 }));
    await lapse([hold.reservationId]);
    // A read counts only holds still open, before anything returned the lapsed one.
    expect(await member.client.guild.balance.query({ guildId })).toMatchObject({ balance: 10 });
    expect(await pool(guildId)).toMatchObject({ reserved: 10 });
    // Check on access: the whole pool and the whole day are free again.
    expect(await member.client.guild.use.mutate(useInput(guildId, 10))).toMatchObject({ poolBalance: 0 });
    expect(await reservation(hold.reservationId)).toMatchObject({ status: 'expired', released_amount: 10 });
    const late = await failure(internal().credits.commit.mutate({ reservationId: hold.reservationId }));
    expect(late.data).toMatchObject({
      code: 'CONFLICT',
      reason: 'RESERVATION_NOT_OPEN',
      details: { status: 'expired' },
    });
    expect(await pool(guildId)).toEqual({ balance: 0, reserved: 0, total_spent: 10 });
  });

  it('the sweep returns expired pool holds (and personal ones) that nobody touches', async () => {
    const { guildId, member } = await guildWithMember(30);
    const poolHold = await internal().credits.reserve.mutate(
      reserveInput(guildId, member.id, 30, { ttl: 1 }),
    );
    const user = newUser();
    await internal().credits.grant.mutate({
      userId: user.id,
      amount: 5,
      reason: 'funds',
      idempotencyKey: 'g',
    });
    const { guildId: _, ...personal } = reserveInput(guildId, user.id, 5, { ttl: 1 });
    const personalHold = await internal().credits.reserve.mutate(personal);
    await lapse([poolHold.reservationId, personalHold.reservationId]);
    expect(await sweepExpiredHolds(server.deps.db)).toBeGreaterThanOrEqual(2);
    expect(await reservation(poolHold.reservationId)).toMatchObject({ status: 'expired' });
    expect(await reservation(personalHold.reservationId)).toMatchObject({ status: 'expired' });
    expect(await pool(guildId)).toEqual({ balance: 30, reserved: 0, total_spent: 0 });
    expect(await internal().credits.balance.query({ userId: user.id })).toMatchObject({
      balance: 5,
      reserved: 0,
    });
  });

  it('50 parallel pool reserves and uses by a member with daily limit 60 never pass the limit', async () => {
    server.httpForThisTest(); // real parallel requests
    const { guildId, member } = await guildWithMember(1000, 60);
    const calls = Array.from({ length: 50 }, (_, i) =>
      i % 2 === 0
        ? internal().credits.reserve.mutate(reserveInput(guildId, member.id, 5))
        : member.client.guild.use.mutate(useInput(guildId, 5)),
    );
    const settled = await Promise.allSettled(calls);
    expect(settled.filter((result) => result.status === 'fulfilled')).toHaveLength(12);
    for (const result of settled) {
      if (result.status === 'rejected') {
        expect(result.reason.data).toMatchObject({ reason: 'DAILY_LIMIT_EXCEEDED' });
      }
    }
    const limits = await member.client.guild.memberLimits.query({ guildId, userId: member.id });
    expect(limits.spentToday + limits.heldToday).toBe(60);
    const after = await pool(guildId);
    expect(after.total_spent + after.reserved).toBe(60);
  });

  it('50 parallel pool reserves by two unlimited members never exceed the pool', async () => {
    server.httpForThisTest(); // real parallel requests
    const { guildId, member } = await guildWithMember(100);
    const peer = await join(guildId, 'member');
    const settled = await Promise.allSettled(
      Array.from({ length: 50 }, (_, i) =>
        internal().credits.reserve.mutate(reserveInput(guildId, (i % 2 ? member : peer).id, 3)),
      ),
    );
    expect(settled.filter((result) => result.status === 'fulfilled')).toHaveLength(33);
    for (const result of settled) {
      if (result.status === 'rejected') {
        expect(result.reason.data).toMatchObject({ reason: 'INSUFFICIENT_POOL_CREDITS' });
      }
    }
    expect(await pool(guildId)).toEqual({ balance: 100, reserved: 99, total_spent: 0 });
  });
});

describe('useBatch with guild items', () => {
  it('guild items mixed with personal items: each answered in input order, each idempotent', async () => {
    const { guildId, member } = await guildWithMember(100, 10);
    const user = newUser();
    await internal().credits.grant.mutate({
      userId: user.id,
      amount: 20,
      reason: 'funds',
      idempotencyKey: 'g',
    });
    const stranger = newUser();
    const item = (userId: string, amount: number, key: string, guild?: string) => ({
      userId,
      amount,
      appId: 'meter',
      description: 'metered call',
      idempotencyKey: key,
      ...(guild ? { guildId: guild } : {}),
    });
    const items = [
      item(member.id, 6, 'pool-1', guildId),
      item(user.id, 15, 'personal-1'),
      item(member.id, 5, 'pool-over-limit', guildId),
      item(stranger.id, 1, 'pool-stranger', guildId),
      item(member.id, 4, 'pool-2', guildId),
      item(user.id, 10, 'personal-short'),
      item(member.id, 6, 'pool-1', guildId),
      item(member.id, 7, 'pool-1', guildId),
    ];
    const { results } = await internal().credits.useBatch.mutate({ items });
    expect(results.map((result) => [result.idempotencyKey, result.ok])).toEqual([
      ['pool-1', true],
      ['personal-1', true],
      ['pool-over-limit', false],
      ['pool-stranger', false],
      ['pool-2', true],
      ['personal-short', false],
      ['pool-1', true],
      ['pool-1', false],
    ]);
    expect(results[0]).toMatchObject({ balance: 94 });
    expect(results[1]).toMatchObject({ balance: 5 });
    expect(results[2]).toMatchObject({ error: { reason: 'DAILY_LIMIT_EXCEEDED' } });
    expect(results[3]).toMatchObject({ error: { reason: 'NOT_A_GUILD_MEMBER' } });
    expect(results[4]).toMatchObject({ balance: 90 });
    expect(results[5]).toMatchObject({ error: { reason: 'INSUFFICIENT_CREDITS' } });
    expect(results[6]).toMatchObject({
      transactionId: (results[0] as { transactionId: string }).transactionId,
    });
    expect(results[7]).toMatchObject({ error: { reason: 'IDEMPOTENCY_CONFLICT' } });
    expect(await pool(guildId)).toEqual({ balance: 90, reserved: 0, total_spent: 10 });

    // The whole batch again: the same answers, nothing moves.
    const again = await internal().credits.useBatch.mutate({ items });
    expect(again.results.map((result) => (result.ok ? result.transactionId : result.error.reason))).toEqual(
      results
        .map((result) => (result.ok ? result.transactionId : result.error.reason))
        .map((answer, i) =>
          // pool-2 filled the day, so pool-over-limit still fails; the personal short item too.
          i === 2 ? 'DAILY_LIMIT_EXCEEDED' : answer,
        ),
    );
    expect(await pool(guildId)).toEqual({ balance: 90, reserved: 0, total_spent: 10 });
    expect((await guildRows(guildId)).filter((row) => row.type === 'usage')).toHaveLength(2);
  });
});

// Two sessions at once: Postgres only.
describe.runIf(Boolean(process.env.DATABASE_URL))('a pool release beside a spend of the same lot', () => {
  // A pool spend locks the pool row, then takes from the lot (see reservations.test.ts for the personal case).
  it('the release writes the pool first: it waits for the spend, then returns the hold', async () => {
    const { guildId, member } = await guildWithMember(100);
    const hold = await internal().credits.reserve.mutate(reserveInput(guildId, member.id, 30));
    const lot = await server.deps.db
      .selectFrom('credits.lots')
      .select('id')
      .where('account_kind', '=', 'guild')
      .where('account_id', '=', guildId)
      .executeTakeFirstOrThrow();
    const released = await whileAnotherSession(
      server.database.url!,
      ['select 1 from credits.guild_pools where organization_id = $1 for update', [guildId]],
      () => internal().credits.release.mutate({ reservationId: hold.reservationId }),
      ['update credits.lots set remaining = remaining where id = $1', [lot.id]],
    );
    expect(released).toEqual({ released: 30, balance: 100 });
    expect(await pool(guildId)).toMatchObject({ balance: 100, reserved: 0 });
  });
});

// Key spaces that span accounts, where one account's row lock cannot order a refusal against a use of the key
// elsewhere: a user's hold keys (personal and every pool) and a member's guild keys (guild.fund decides under
// the funder's balance, guild.use under the pool). Two payloads under one key sent at once must never both be
// answered as if the key were free, and each replay must answer its first result. Only Postgres interleaves
// these transactions (PGlite runs one session); the tests run on both.
describe('one key, two accounts, at once', () => {
  const label = (settled: PromiseSettledResult<unknown>) =>
    settled.status === 'fulfilled'
      ? 'ok'
      : String((settled.reason as { data?: { reason?: string } }).data?.reason ?? settled.reason);

  /** Sends `first` and `second` together, then again: the outcomes, and the rounds whose replay differed. */
  type Call = () => Promise<unknown>;
  async function race(rounds: number, pair: (round: number) => Promise<[Call, Call]>) {
    const outcomes: Record<string, number> = {};
    const changed: string[] = [];
    for (let round = 0; round < rounds; round++) {
      const [first, second] = await pair(round);
      const answered = (await Promise.allSettled([first(), second()])).map(label).join('/');
      outcomes[answered] = (outcomes[answered] ?? 0) + 1;
      const replayed = (await Promise.allSettled([first(), second()])).map(label).join('/');
      if (replayed !== answered) changed.push(`round ${round}: first ${answered}, replay ${replayed}`);
    }
    return { outcomes, changed };
  }

  it('a hold key used on two pools at once (one refuses by a cap): each replay answers its first result', async () => {
    const a = await guildWithMember(1000, 1);
    const b = await guildWithMember(1000);
    const m = a.member;
    server.auth.setRole(b.guildId, m.id, 'member');
    const reserve = (guildId: string, key: string) => () =>
      internal().credits.reserve.mutate(reserveInput(guildId, m.id, 5, { key }));
    // One after the other, the second payload is a CONFLICT.
    const control = `seq-${randomUUID()}`;
    expect((await failure(reserve(a.guildId, control)())).data?.reason).toBe('DAILY_LIMIT_EXCEEDED');
    expect((await failure(reserve(b.guildId, control)())).data?.reason).toBe('IDEMPOTENCY_CONFLICT');
    // At once they were both answered as if the key were free (18 of 20 rounds), and the refused one's replay
    // then said IDEMPOTENCY_CONFLICT.
    const { outcomes, changed } = await race(20, async (round) => {
      const key = `race-${round}-${randomUUID()}`;
      return [reserve(a.guildId, key), reserve(b.guildId, key)];
    });
    expect(outcomes['DAILY_LIMIT_EXCEEDED/ok'] ?? 0, JSON.stringify(outcomes)).toBe(0);
    expect(changed).toEqual([]);
  });

  it('guild.fund refused for too few credits and guild.use under the same key at once: each replay answers its first result', async () => {
    // At once both were answered (3–7 of 15 rounds), and the funding's replay then said IDEMPOTENCY_CONFLICT.
    const { outcomes, changed } = await race(15, async (round) => {
      // The owner funded all they had: a funding is refused, a use of the pool is not.
      const { guildId, owner } = await guildWithMember(100);
      const key = `fk-${round}`;
      return [
        () => owner.client.guild.fund.mutate({ guildId, amount: 50, idempotencyKey: key }),
        () => owner.client.guild.use.mutate(useInput(guildId, 5, key)),
      ];
    });
    expect(outcomes['INSUFFICIENT_CREDITS/ok'] ?? 0, JSON.stringify(outcomes)).toBe(0);
    expect(changed).toEqual([]);
  });
});
