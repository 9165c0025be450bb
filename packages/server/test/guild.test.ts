import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { memberSpending } from '@mana-credits/db';
import { TRPCClientError } from '@trpc/client';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.ts';
import { configFrom } from '../src/config.ts';
import { createAppDeps } from '../src/deps.ts';
import { createMembershipClient, type GuildRole } from '../src/domain/guild/membership.ts';
import type { GuildRole as AuthGuildRole } from './helpers/auth-server.ts';
import { failure } from './helpers/errors.ts';
import { expectLedgerConsistent, ledgerSum } from './helpers/invariants.ts';
import {
  type Client,
  clientFor,
  newUser,
  SERVICE_KEY,
  startTestServer,
  type TestServer,
} from './helpers/server.ts';

let server: TestServer;
beforeAll(async () => {
  // No membership cache on the server under test, so role changes take effect at once. Calls about logic run
  // in process (helpers/server.ts: Transport); the parallel ones over HTTP.
  server = await startTestServer({ MEMBERSHIP_CACHE_SECONDS: '0' }, { transport: 'in-process' });
  server.auth.expectedServiceKey = SERVICE_KEY;
});
afterEach(async () => {
  server.auth.membershipMode = 'ok';
  server.auth.membershipBody = undefined;
  // Σ guild ledger = pool balance and Σ personal ledger = personal balance, for every account, after every test.
  await expectLedgerConsistent(server.deps.db);
});
afterAll(async () => {
  await server.close();
});

const internal = () => server.internalClient();

async function grant(userId: string, amount: number) {
  await internal().internal.credits.grant.mutate({
    userId,
    amount,
    reason: 'test funds',
    idempotencyKey: `grant-${randomUUID()}`,
  });
}

async function newGuild(): Promise<string> {
  const guildId = `guild-${randomUUID()}`;
  await internal().internal.guildPool.init.mutate({ guildId });
  return guildId;
}

interface Member {
  id: string;
  client: Client;
  token: string;
}

async function join(guildId: string, role: AuthGuildRole, personalCredits = 0): Promise<Member> {
  const user = newUser();
  server.auth.setRole(guildId, user.id, role);
  if (personalCredits > 0) await grant(user.id, personalCredits);
  return { id: user.id, client: await server.userClient(user), token: await server.auth.sign(user) };
}

/** A guild whose owner funded the pool with `amount` of their own credits. */
async function fundedGuild(amount: number) {
  const guildId = await newGuild();
  const owner = await join(guildId, 'owner', amount);
  if (amount > 0) await owner.client.guild.fund.mutate({ guildId, amount });
  return { guildId, owner };
}

async function pool(guildId: string) {
  return server.deps.db
    .selectFrom('credits.guild_pools')
    .select(['balance', 'reserved', 'total_funded', 'total_spent'])
    .where('organization_id', '=', guildId)
    .executeTakeFirstOrThrow();
}

async function guildLedgerRows(guildId: string) {
  return server.deps.db
    .selectFrom('credits.guild_transactions')
    .selectAll()
    .where('organization_id', '=', guildId)
    .orderBy('created_at')
    .execute();
}

async function personalLedgerRows(userId: string) {
  return server.deps.db
    .selectFrom('credits.transactions')
    .selectAll()
    .where('user_id', '=', userId)
    .execute();
}

/** 'ok' or the tRPC error code of a call. */
async function outcome(call: Promise<unknown>): Promise<string> {
  try {
    await call;
    return 'ok';
  } catch (error) {
    if (error instanceof TRPCClientError) return String(error.data?.code);
    throw error;
  }
}

function fulfilled<T>(outcomes: PromiseSettledResult<T>[]): T[] {
  return outcomes.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
}

const use = (guildId: string, amount: number, extra: Record<string, unknown> = {}) => ({
  guildId,
  amount,
  appId: 'chat',
  description: 'a reply',
  ...extra,
});

describe('internal.guildPool.init', () => {
  it('creates an empty pool once; a second call changes nothing', async () => {
    const guildId = `guild-${randomUUID()}`;
    const first = await internal().internal.guildPool.init.mutate({ guildId });
    expect(first).toEqual({ created: true, guildId, balance: 0, totalFunded: 0, totalSpent: 0 });
    const second = await internal().internal.guildPool.init.mutate({ guildId });
    expect(second).toEqual({ ...first, created: false });
  });

  it('is safe when called 20 times at once: one pool, exactly one "created"', async () => {
    server.httpForThisTest(); // real parallel requests
    const guildId = `guild-${randomUUID()}`;
    const results = await Promise.all(
      Array.from({ length: 20 }, () => internal().internal.guildPool.init.mutate({ guildId })),
    );
    expect(results.filter((r) => r.created)).toHaveLength(1);
    const rows = await server.deps.db
      .selectFrom('credits.guild_pools')
      .select('organization_id')
      .where('organization_id', '=', guildId)
      .execute();
    expect(rows).toHaveLength(1);
  });

  it('needs a service key and a valid guildId', async () => {
    const noKey = await failure(server.rawClient({}).internal.guildPool.init.mutate({ guildId: 'g' }));
    expect(noKey.data?.code).toBe('UNAUTHORIZED');
    const user = await server.userClient();
    expect((await failure(user.internal.guildPool.init.mutate({ guildId: 'g' }))).data?.code).toBe(
      'UNAUTHORIZED',
    );
    for (const guildId of ['', 'g'.repeat(201), 'a\u0000b']) {
      const error = await failure(internal().internal.guildPool.init.mutate({ guildId }));
      expect(error.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'VALIDATION' });
      expect(error.message).toContain('guildId');
    }
  });
});

describe('role matrix', () => {
  type Actor = 'owner' | 'admin' | 'member' | 'non-member' | 'removed member' | 'auth down' | 'auth garbage';
  const ALL_REFUSED = (code: string) => ({
    balance: code,
    fund: code,
    use: code,
    transactions: code,
    ownLimits: code,
    othersLimits: code,
    setLimits: code,
  });
  const MANAGER = {
    balance: 'ok',
    fund: 'ok',
    use: 'ok',
    transactions: 'ok',
    ownLimits: 'ok',
    othersLimits: 'ok',
    setLimits: 'ok',
  };
  const EXPECTED: Record<Actor, Record<string, string>> = {
    owner: MANAGER,
    admin: MANAGER,
    member: {
      balance: 'ok',
      fund: 'FORBIDDEN',
      use: 'ok',
      transactions: 'ok',
      ownLimits: 'ok',
      othersLimits: 'FORBIDDEN',
      setLimits: 'FORBIDDEN',
    },
    'non-member': ALL_REFUSED('FORBIDDEN'),
    'removed member': ALL_REFUSED('FORBIDDEN'),
    'auth down': ALL_REFUSED('SERVICE_UNAVAILABLE'),
    'auth garbage': ALL_REFUSED('SERVICE_UNAVAILABLE'),
  };

  it.each(Object.keys(EXPECTED) as Actor[])('%s', async (actor) => {
    const { guildId } = await fundedGuild(100);
    const peer = await join(guildId, 'member');
    const role: AuthGuildRole = actor === 'owner' || actor === 'admin' ? actor : 'member';
    const { id, client } = await join(guildId, role, 50);
    if (actor === 'non-member') server.auth.setRole(guildId, id, null);
    if (actor === 'removed member') {
      expect(await outcome(client.guild.use.mutate(use(guildId, 1)))).toBe('ok');
      server.auth.setRole(guildId, id, null);
    }
    if (actor === 'auth down') server.auth.membershipMode = 'down';
    if (actor === 'auth garbage') server.auth.membershipMode = 'garbage';
    const before = await pool(guildId);

    const outcomes = {
      balance: await outcome(client.guild.balance.query({ guildId })),
      fund: await outcome(client.guild.fund.mutate({ guildId, amount: 5 })),
      use: await outcome(client.guild.use.mutate(use(guildId, 1))),
      transactions: await outcome(client.guild.transactions.query({ guildId })),
      ownLimits: await outcome(client.guild.memberLimits.query({ guildId, userId: id })),
      othersLimits: await outcome(client.guild.memberLimits.query({ guildId, userId: peer.id })),
      setLimits: await outcome(
        client.guild.setMemberLimits.mutate({ guildId, userId: peer.id, dailyLimit: 3, monthlyLimit: null }),
      ),
    };
    expect(outcomes).toEqual(EXPECTED[actor]);

    // Refused calls moved nothing: the pool changed by exactly the allowed fund and use.
    const expectedDelta = (outcomes.fund === 'ok' ? 5 : 0) - (outcomes.use === 'ok' ? 1 : 0);
    expect((await pool(guildId)).balance).toBe(before.balance + expectedDelta);
    expect(await ledgerSum(server.deps.db, id)).toBe(outcomes.fund === 'ok' ? 45 : 50);
  });

  it('says why: not a member, wrong role, membership unavailable', async () => {
    const { guildId } = await fundedGuild(10);
    const stranger = await server.userClient();
    expect((await failure(stranger.guild.balance.query({ guildId }))).data?.reason).toBe(
      'NOT_A_GUILD_MEMBER',
    );
    const member = await join(guildId, 'member', 10);
    expect((await failure(member.client.guild.fund.mutate({ guildId, amount: 1 }))).data?.reason).toBe(
      'GUILD_ROLE_REQUIRED',
    );
    server.auth.membershipMode = 'down';
    const down = await failure(member.client.guild.balance.query({ guildId }));
    expect(down.data).toMatchObject({
      code: 'SERVICE_UNAVAILABLE',
      httpStatus: 503,
      reason: 'MEMBERSHIP_UNAVAILABLE',
    });
    expect(down.message).not.toContain('500');
  });

  it('answers NOT_FOUND to members of a guild whose pool was never initialised', async () => {
    const guildId = `guild-${randomUUID()}`;
    const owner = await join(guildId, 'owner', 10);
    for (const call of [
      () => owner.client.guild.balance.query({ guildId }),
      () => owner.client.guild.fund.mutate({ guildId, amount: 1 }),
      () => owner.client.guild.use.mutate(use(guildId, 1)),
      () => owner.client.guild.transactions.query({ guildId }),
      () => owner.client.guild.memberLimits.query({ guildId, userId: owner.id }),
      () =>
        owner.client.guild.setMemberLimits.mutate({
          guildId,
          userId: owner.id,
          dailyLimit: 1,
          monthlyLimit: 1,
        }),
    ]) {
      expect((await failure(call())).data).toMatchObject({
        code: 'NOT_FOUND',
        reason: 'GUILD_POOL_NOT_FOUND',
      });
    }
    expect(await ledgerSum(server.deps.db, owner.id)).toBe(10);
    // Strangers learn nothing about whether a pool exists.
    const stranger = await server.userClient();
    expect((await failure(stranger.guild.balance.query({ guildId }))).data?.code).toBe('FORBIDDEN');
  });
});

describe('guild.fund', () => {
  it('moves credits from the funder to the pool in one step, with both ledger rows', async () => {
    const guildId = await newGuild();
    const admin = await join(guildId, 'admin', 100);
    const result = await admin.client.guild.fund.mutate({ guildId, amount: 60 });
    expect(result).toEqual({ poolBalance: 60, personalBalance: 40 });
    expect(await admin.client.guild.balance.query({ guildId })).toEqual({
      guildId,
      balance: 60,
      totalFunded: 60,
      totalSpent: 0,
    });
    const personal = (await personalLedgerRows(admin.id)).find((row) => row.type === 'guild_funding');
    expect(personal).toMatchObject({ amount: -60, guild_id: guildId, balance_after: 40 });
    const [funding] = await guildLedgerRows(guildId);
    expect(funding).toMatchObject({ type: 'funding', user_id: admin.id, amount: 60, balance_after: 60 });
    expect((await admin.client.credits.balance.query()).balance).toBe(40);
  });

  it('with a personal balance too small: PAYMENT_REQUIRED and nothing moves', async () => {
    const { guildId } = await fundedGuild(10);
    const admin = await join(guildId, 'admin', 30);
    const rowsBefore = (await personalLedgerRows(admin.id)).length;
    const error = await failure(admin.client.guild.fund.mutate({ guildId, amount: 31 }));
    expect(error.data).toMatchObject({
      code: 'PAYMENT_REQUIRED',
      reason: 'INSUFFICIENT_CREDITS',
      details: { required: 31, available: 30 },
    });
    expect(await ledgerSum(server.deps.db, admin.id)).toBe(30);
    expect(await personalLedgerRows(admin.id)).toHaveLength(rowsBefore);
    expect(await pool(guildId)).toMatchObject({ balance: 10, total_funded: 10 });
    expect(await guildLedgerRows(guildId)).toHaveLength(1);
  });

  it('a funder without any balance row gets PAYMENT_REQUIRED too', async () => {
    const guildId = await newGuild();
    const owner = await join(guildId, 'owner');
    expect((await failure(owner.client.guild.fund.mutate({ guildId, amount: 1 }))).data).toMatchObject({
      code: 'PAYMENT_REQUIRED',
      details: { required: 1, available: 0 },
    });
    expect((await pool(guildId)).balance).toBe(0);
  });

  it.each([
    ['zero', 0],
    ['negative', -50],
    ['fractional', 0.5],
    ['a string', '5'],
    ['NaN', Number.NaN],
    ['beyond 2^53', 2 ** 53 + 2],
  ])('refuses an amount that is %s with BAD_REQUEST: no refill, no debit', async (_label, amount) => {
    const { guildId, owner } = await fundedGuild(10);
    await grant(owner.id, 100);
    const error = await failure(owner.client.guild.fund.mutate({ guildId, amount: amount as number }));
    expect(error.data).toMatchObject({ code: 'BAD_REQUEST', httpStatus: 400, reason: 'VALIDATION' });
    expect(error.message).toContain('amount');
    expect((await pool(guildId)).balance).toBe(10);
    expect(await ledgerSum(server.deps.db, owner.id)).toBe(100);
  });

  it('is idempotent per guild and member: replay → first result, other amount → CONFLICT', async () => {
    const { guildId, owner } = await fundedGuild(0);
    await grant(owner.id, 100);
    const first = await owner.client.guild.fund.mutate({ guildId, amount: 10, idempotencyKey: 'fund-1' });
    expect(first).toEqual({ poolBalance: 10, personalBalance: 90 });
    await owner.client.guild.fund.mutate({ guildId, amount: 5 });
    expect(await owner.client.guild.fund.mutate({ guildId, amount: 10, idempotencyKey: 'fund-1' })).toEqual(
      first,
    );
    const conflict = await failure(
      owner.client.guild.fund.mutate({ guildId, amount: 11, idempotencyKey: 'fund-1' }),
    );
    expect(conflict.data).toMatchObject({ code: 'CONFLICT', reason: 'IDEMPOTENCY_CONFLICT' });
    // The same key as a use of the pool is another request, not a replay.
    const asUse = await failure(
      owner.client.guild.use.mutate(use(guildId, 10, { idempotencyKey: 'fund-1' })),
    );
    expect(asUse.data?.reason).toBe('IDEMPOTENCY_CONFLICT');
    // Scoped to the guild: the same key funds another guild.
    const other = await newGuild();
    server.auth.setRole(other, owner.id, 'owner');
    expect(
      await owner.client.guild.fund.mutate({ guildId: other, amount: 10, idempotencyKey: 'fund-1' }),
    ).toEqual({
      poolBalance: 10,
      personalBalance: 75,
    });
    expect(await ledgerSum(server.deps.db, owner.id)).toBe(75);
    expect((await pool(guildId)).balance).toBe(15);
  });

  it('a replay answers the first result even when the funder could not pay again', async () => {
    const { guildId, owner } = await fundedGuild(0);
    await grant(owner.id, 20);
    const input = { guildId, amount: 20, idempotencyKey: 'all-in' };
    const first = await owner.client.guild.fund.mutate(input);
    expect(await owner.client.guild.fund.mutate(input)).toEqual(first);
    expect(await ledgerSum(server.deps.db, owner.id)).toBe(0);
  });

  it('20 parallel funds with one key move the credits once', async () => {
    server.httpForThisTest(); // real parallel requests
    const { guildId, owner } = await fundedGuild(0);
    await grant(owner.id, 1000);
    const results = await Promise.all(
      Array.from({ length: 20 }, () =>
        owner.client.guild.fund.mutate({ guildId, amount: 7, idempotencyKey: 'k' }),
      ),
    );
    expect(new Set(results.map((r) => JSON.stringify(r)))).toEqual(
      new Set([JSON.stringify({ poolBalance: 7, personalBalance: 993 })]),
    );
    expect(await guildLedgerRows(guildId)).toHaveLength(1);
  });

  it('parallel funding and personal spending never overdraw the funder', async () => {
    server.httpForThisTest(); // real parallel requests
    const { guildId, owner } = await fundedGuild(0);
    await grant(owner.id, 100);
    const outcomes = await Promise.allSettled([
      ...Array.from({ length: 10 }, () => owner.client.guild.fund.mutate({ guildId, amount: 15 })),
      ...Array.from({ length: 10 }, () =>
        owner.client.credits.use.mutate({ amount: 15, appId: 'chat', description: 'personal' }),
      ),
    ]);
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(6);
    expect(await ledgerSum(server.deps.db, owner.id)).toBe(10);
    const funded = (await pool(guildId)).balance;
    expect(funded % 15).toBe(0);
    expect(funded).toBeLessThanOrEqual(90);
  });
});

describe('guild.use', () => {
  it('debits the pool, writes the guild ledger and the member usage, leaves personal credits alone', async () => {
    const { guildId } = await fundedGuild(100);
    const member = await join(guildId, 'member', 5);
    const result = await member.client.guild.use.mutate(
      use(guildId, 30, { appId: 'images', description: 'one picture', metadata: { model: 'x' } }),
    );
    expect(result).toEqual({ transactionId: expect.stringMatching(/^[0-9a-f-]{36}$/), poolBalance: 70 });
    expect(await member.client.guild.balance.query({ guildId })).toEqual({
      guildId,
      balance: 70,
      totalFunded: 100,
      totalSpent: 30,
    });
    const row = (await guildLedgerRows(guildId)).find((r) => r.id === result.transactionId);
    expect(row).toMatchObject({
      type: 'usage',
      user_id: member.id,
      amount: -30,
      balance_before: 100,
      balance_after: 70,
      app_id: 'images',
      description: 'one picture',
      metadata: { model: 'x' },
    });
    const usage = await server.deps.db
      .selectFrom('credits.usage_stats')
      .select(['app_id', 'credits_used'])
      .where('user_id', '=', member.id)
      .execute();
    expect(usage).toEqual([{ app_id: 'images', credits_used: 30 }]);
    expect(await ledgerSum(server.deps.db, member.id)).toBe(5);
    expect(await member.client.guild.memberLimits.query({ guildId, userId: member.id })).toEqual({
      dailyLimit: null,
      monthlyLimit: null,
      spentToday: 30,
      spentThisMonth: 30,
      heldToday: 0,
      heldThisMonth: 0,
    });
  });

  it('pool short: PAYMENT_REQUIRED with INSUFFICIENT_POOL_CREDITS, nothing written; the exact rest succeeds', async () => {
    const { guildId } = await fundedGuild(10);
    const member = await join(guildId, 'member');
    const error = await failure(member.client.guild.use.mutate(use(guildId, 11)));
    expect(error.data).toMatchObject({
      code: 'PAYMENT_REQUIRED',
      httpStatus: 402,
      reason: 'INSUFFICIENT_POOL_CREDITS',
      details: { required: 11, available: 10 },
    });
    expect(await guildLedgerRows(guildId)).toHaveLength(1);
    expect((await member.client.guild.use.mutate(use(guildId, 10))).poolBalance).toBe(0);
    expect(await pool(guildId)).toMatchObject({ balance: 0, total_spent: 10 });
  });

  it('credits held in the pool (reserved) cannot be spent', async () => {
    const { guildId } = await fundedGuild(100);
    const member = await join(guildId, 'member');
    await sql`update credits.guild_pools set reserved = 70 where organization_id = ${guildId}`.execute(
      server.deps.db,
    );
    try {
      expect((await member.client.guild.balance.query({ guildId })).balance).toBe(30);
      const error = await failure(member.client.guild.use.mutate(use(guildId, 31)));
      expect(error.data).toMatchObject({
        reason: 'INSUFFICIENT_POOL_CREDITS',
        details: { required: 31, available: 30 },
      });
      expect(await member.client.guild.use.mutate(use(guildId, 30))).toMatchObject({ poolBalance: 0 });
      expect(await pool(guildId)).toMatchObject({ balance: 70, reserved: 70 });
    } finally {
      await sql`update credits.guild_pools set reserved = 0 where organization_id = ${guildId}`.execute(
        server.deps.db,
      );
    }
  });

  it.each([
    ['zero', 0],
    ['negative', -5],
    ['fractional', 1.5],
    ['Infinity', Number.POSITIVE_INFINITY],
  ])('refuses an amount that is %s with BAD_REQUEST', async (_label, amount) => {
    const { guildId } = await fundedGuild(10);
    const member = await join(guildId, 'member');
    const error = await failure(member.client.guild.use.mutate(use(guildId, amount)));
    expect(error.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'VALIDATION' });
    expect(error.message).toContain('amount');
    expect((await pool(guildId)).balance).toBe(10);
  });

  it('refuses unknown fields and missing ones', async () => {
    const { guildId } = await fundedGuild(10);
    const member = await join(guildId, 'member');
    const extra = await failure(
      member.client.guild.use.mutate({ ...use(guildId, 1), userId: 'someone' } as never),
    );
    expect(extra.data?.code).toBe('BAD_REQUEST');
    const missing = await failure(
      member.client.guild.use.mutate({ guildId, amount: 1, appId: 'chat' } as never),
    );
    expect(missing.message).toContain('description');
    expect((await pool(guildId)).balance).toBe(10);
  });

  it('is idempotent per guild and member', async () => {
    const { guildId } = await fundedGuild(100);
    const a = await join(guildId, 'member');
    const b = await join(guildId, 'member');
    const input = use(guildId, 10, { idempotencyKey: 'same' });
    const first = await a.client.guild.use.mutate(input);
    await a.client.guild.use.mutate(use(guildId, 5));
    expect(await a.client.guild.use.mutate(input)).toEqual(first);
    for (const changed of [
      { amount: 11 },
      { appId: 'other' },
      { description: 'other' },
      { metadata: { a: 1 } },
    ]) {
      const error = await failure(a.client.guild.use.mutate({ ...input, ...changed }));
      expect(error.data).toMatchObject({ code: 'CONFLICT', reason: 'IDEMPOTENCY_CONFLICT' });
    }
    // Another member's key space is their own.
    expect((await b.client.guild.use.mutate(input)).transactionId).not.toBe(first.transactionId);
    expect((await pool(guildId)).balance).toBe(75);
  });

  it('replays the first result after the pool ran dry', async () => {
    const { guildId } = await fundedGuild(10);
    const member = await join(guildId, 'member');
    const input = use(guildId, 10, { idempotencyKey: 'drain' });
    const first = await member.client.guild.use.mutate(input);
    expect(await member.client.guild.use.mutate(input)).toEqual(first);
    expect((await pool(guildId)).balance).toBe(0);
  });

  it('50 parallel uses with one key: one ledger row, identical answers', async () => {
    server.httpForThisTest(); // real parallel requests
    const { guildId } = await fundedGuild(100);
    const member = await join(guildId, 'member');
    const input = use(guildId, 3, { idempotencyKey: 'one' });
    const results = await Promise.all(
      Array.from({ length: 50 }, () => member.client.guild.use.mutate(input)),
    );
    expect(new Set(results.map((r) => JSON.stringify(r))).size).toBe(1);
    expect(results[0]?.poolBalance).toBe(97);
    expect(await guildLedgerRows(guildId)).toHaveLength(2);
  });
});

describe('credits.use and internal.credits.use with a guildId', () => {
  it('credits.use spends from the pool; balance is what is left in the pool', async () => {
    const { guildId } = await fundedGuild(50);
    const member = await join(guildId, 'member', 8);
    const result = await member.client.credits.use.mutate({
      amount: 20,
      appId: 'chat',
      description: 'x',
      guildId,
      idempotencyKey: 'via-credits',
    });
    expect(result).toMatchObject({ balance: 30, poolBalance: 30 });
    expect(await ledgerSum(server.deps.db, member.id)).toBe(8);
    // The same path as guild.use: the same key there is a replay.
    expect(
      await member.client.guild.use.mutate(
        use(guildId, 20, { description: 'x', idempotencyKey: 'via-credits' }),
      ),
    ).toEqual({
      transactionId: result.transactionId,
      poolBalance: 30,
    });
  });

  it('credits.use with a guildId still enforces membership and limits', async () => {
    const { guildId, owner } = await fundedGuild(50);
    const stranger = await server.userClient();
    const refused = await failure(
      stranger.credits.use.mutate({ amount: 1, appId: 'a', description: 'x', guildId }),
    );
    expect(refused.data?.code).toBe('FORBIDDEN');
    const member = await join(guildId, 'member');
    await owner.client.guild.setMemberLimits.mutate({
      guildId,
      userId: member.id,
      dailyLimit: 2,
      monthlyLimit: null,
    });
    const capped = await failure(
      member.client.credits.use.mutate({ amount: 3, appId: 'a', description: 'x', guildId }),
    );
    expect(capped.data?.reason).toBe('DAILY_LIMIT_EXCEEDED');
    expect((await pool(guildId)).balance).toBe(50);
  });

  it('internal.credits.use checks the membership of userId', async () => {
    const { guildId } = await fundedGuild(50);
    const member = await join(guildId, 'member', 3);
    const input = { userId: member.id, amount: 5, appId: 'svc', description: 'x', guildId };
    expect(await internal().internal.credits.use.mutate(input)).toMatchObject({
      balance: 45,
      poolBalance: 45,
    });
    expect(await ledgerSum(server.deps.db, member.id)).toBe(3);
    const stranger = newUser();
    await grant(stranger.id, 100);
    const refused = await failure(internal().internal.credits.use.mutate({ ...input, userId: stranger.id }));
    expect(refused.data).toMatchObject({ code: 'FORBIDDEN', reason: 'NOT_A_GUILD_MEMBER' });
    server.auth.membershipMode = 'down';
    const down = await failure(internal().internal.credits.use.mutate(input));
    expect(down.data?.code).toBe('SERVICE_UNAVAILABLE');
    expect((await pool(guildId)).balance).toBe(45);
    expect(await ledgerSum(server.deps.db, stranger.id)).toBe(100);
  });
});

describe('member limits', () => {
  async function cappedMember(poolCredits: number, dailyLimit: number | null, monthlyLimit: number | null) {
    const { guildId, owner } = await fundedGuild(poolCredits);
    const member = await join(guildId, 'member');
    const limits = await owner.client.guild.setMemberLimits.mutate({
      guildId,
      userId: member.id,
      dailyLimit,
      monthlyLimit,
    });
    expect(limits).toEqual({
      dailyLimit,
      monthlyLimit,
      spentToday: 0,
      spentThisMonth: 0,
      heldToday: 0,
      heldThisMonth: 0,
    });
    return { guildId, owner, member };
  }

  it('daily: spent + amount == limit succeeds, one more is PRECONDITION_FAILED with details', async () => {
    const { guildId, member } = await cappedMember(100, 10, null);
    await member.client.guild.use.mutate(use(guildId, 4));
    await member.client.guild.use.mutate(use(guildId, 6));
    const error = await failure(member.client.guild.use.mutate(use(guildId, 1)));
    expect(error.data).toMatchObject({
      code: 'PRECONDITION_FAILED',
      httpStatus: 412,
      reason: 'DAILY_LIMIT_EXCEEDED',
      details: { limit: 10, spent: 10, requested: 1 },
    });
    expect((await pool(guildId)).balance).toBe(90);
  });

  it('monthly: spent + amount == limit succeeds, one more is MONTHLY_LIMIT_EXCEEDED', async () => {
    const { guildId, member } = await cappedMember(100, null, 7);
    await member.client.guild.use.mutate(use(guildId, 7));
    const error = await failure(member.client.guild.use.mutate(use(guildId, 1)));
    expect(error.data).toMatchObject({
      code: 'PRECONDITION_FAILED',
      reason: 'MONTHLY_LIMIT_EXCEEDED',
      details: { limit: 7, spent: 7, requested: 1 },
    });
  });

  it('a single request above the limit is refused even with nothing spent', async () => {
    const { guildId, member } = await cappedMember(100, 5, 50);
    const error = await failure(member.client.guild.use.mutate(use(guildId, 6)));
    expect(error.data).toMatchObject({
      reason: 'DAILY_LIMIT_EXCEEDED',
      details: { limit: 5, spent: 0, requested: 6 },
    });
  });

  it('0 blocks the member; null is unlimited; changing limits applies to the next request', async () => {
    const { guildId, owner, member } = await cappedMember(100, 0, null);
    expect((await failure(member.client.guild.use.mutate(use(guildId, 1)))).data).toMatchObject({
      reason: 'DAILY_LIMIT_EXCEEDED',
      details: { limit: 0, spent: 0, requested: 1 },
    });
    await owner.client.guild.setMemberLimits.mutate({
      guildId,
      userId: member.id,
      dailyLimit: null,
      monthlyLimit: 0,
    });
    expect((await failure(member.client.guild.use.mutate(use(guildId, 1)))).data?.reason).toBe(
      'MONTHLY_LIMIT_EXCEEDED',
    );
    await owner.client.guild.setMemberLimits.mutate({
      guildId,
      userId: member.id,
      dailyLimit: null,
      monthlyLimit: null,
    });
    expect((await member.client.guild.use.mutate(use(guildId, 60))).poolBalance).toBe(40);
  });

  it('limits and spending are per guild', async () => {
    const { guildId, owner, member } = await cappedMember(100, 5, null);
    const other = await fundedGuild(100);
    server.auth.setRole(other.guildId, member.id, 'member');
    await member.client.guild.use.mutate(use(guildId, 5));
    expect((await member.client.guild.use.mutate(use(other.guildId, 50))).poolBalance).toBe(50);
    expect(await owner.client.guild.memberLimits.query({ guildId, userId: member.id })).toEqual({
      dailyLimit: 5,
      monthlyLimit: null,
      spentToday: 5,
      spentThisMonth: 5,
      heldToday: 0,
      heldThisMonth: 0,
    });
  });

  it('memberLimits: the member and managers see it, other members and strangers do not', async () => {
    const { guildId, owner, member } = await cappedMember(100, 10, 100);
    await member.client.guild.use.mutate(use(guildId, 3));
    const expected = {
      dailyLimit: 10,
      monthlyLimit: 100,
      spentToday: 3,
      spentThisMonth: 3,
      heldToday: 0,
      heldThisMonth: 0,
    };
    expect(await member.client.guild.memberLimits.query({ guildId, userId: member.id })).toEqual(expected);
    expect(await owner.client.guild.memberLimits.query({ guildId, userId: member.id })).toEqual(expected);
    const admin = await join(guildId, 'admin');
    expect(await admin.client.guild.memberLimits.query({ guildId, userId: member.id })).toEqual(expected);
    const peer = await join(guildId, 'member');
    expect(
      (await failure(peer.client.guild.memberLimits.query({ guildId, userId: member.id }))).data?.code,
    ).toBe('FORBIDDEN');
    const stranger = newUser();
    const strangerClient = await server.userClient(stranger);
    expect(
      (await failure(strangerClient.guild.memberLimits.query({ guildId, userId: member.id }))).data?.code,
    ).toBe('FORBIDDEN');
    // Asking about oneself does not help a stranger either.
    expect(
      (await failure(strangerClient.guild.memberLimits.query({ guildId, userId: stranger.id }))).data?.code,
    ).toBe('FORBIDDEN');
  });

  it('setMemberLimits: the target must be a member; both fields explicit, whole and >= 0', async () => {
    const { guildId, owner } = await fundedGuild(10);
    const notMember = await failure(
      owner.client.guild.setMemberLimits.mutate({
        guildId,
        userId: 'nobody',
        dailyLimit: 1,
        monthlyLimit: 1,
      }),
    );
    expect(notMember.data).toMatchObject({ code: 'NOT_FOUND', reason: 'MEMBER_NOT_FOUND' });
    const member = await join(guildId, 'member');
    for (const [bad, field] of [
      [{ dailyLimit: -1, monthlyLimit: null }, 'dailyLimit'],
      [{ dailyLimit: 1.5, monthlyLimit: null }, 'dailyLimit'],
      [{ dailyLimit: null, monthlyLimit: '5' }, 'monthlyLimit'],
      [{ dailyLimit: 1 }, 'monthlyLimit'],
      [{ monthlyLimit: 1 }, 'dailyLimit'],
    ] as const) {
      const error = await failure(
        owner.client.guild.setMemberLimits.mutate({ guildId, userId: member.id, ...bad } as never),
      );
      expect(error.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'VALIDATION' });
      expect(error.message).toContain(field);
    }
    expect(await owner.client.guild.memberLimits.query({ guildId, userId: member.id })).toMatchObject({
      dailyLimit: null,
      monthlyLimit: null,
    });
  });

  it('windows are the UTC day and the UTC calendar month', async () => {
    const guildId = await newGuild();
    const userId = newUser().id;
    await server.deps.db
      .insertInto('credits.guild_member_usage')
      .values([
        { organization_id: guildId, user_id: userId, day: '2025-03-31', spent: 1000 },
        { organization_id: guildId, user_id: userId, day: '2026-02-01', spent: 1 },
        { organization_id: guildId, user_id: userId, day: '2026-02-28', spent: 20 },
        { organization_id: guildId, user_id: userId, day: '2026-03-01', spent: 300 },
        { organization_id: guildId, user_id: userId, day: '2026-03-02', spent: 4000 },
        { organization_id: 'another-guild', user_id: userId, day: '2026-03-01', spent: 50000 },
      ])
      .execute();
    const at = (day: string) => memberSpending(server.deps.db, guildId, userId, day);
    expect(await at('2026-02-28')).toMatchObject({ spentToday: 20, spentThisMonth: 21 });
    expect(await at('2026-03-01')).toMatchObject({ spentToday: 300, spentThisMonth: 300 });
    expect(await at('2026-03-31')).toMatchObject({ spentToday: 0, spentThisMonth: 4300 });
    expect(await at('2025-03-31')).toMatchObject({ spentToday: 1000, spentThisMonth: 1000 });
    // The history above was invented; remove it so the final reconcile compares counters with real spending.
    await server.deps.db.deleteFrom('credits.guild_member_usage').where('user_id', '=', userId).execute();
  });

  it('yesterday (UTC) counts for the month only', async () => {
    const { guildId, member } = await cappedMember(100, 10, 100);
    const { rows } = await sql<{ yesterday: string; same_month: boolean }>`
      select ((now() at time zone 'utc')::date - 1)::text as yesterday,
             date_trunc('month', (now() at time zone 'utc')::date - 1) = date_trunc('month', (now() at time zone 'utc')::date) as same_month
    `.execute(server.deps.db);
    const { yesterday, same_month: sameMonth } = rows[0]!;
    await server.deps.db
      .insertInto('credits.guild_member_usage')
      .values({ organization_id: guildId, user_id: member.id, day: yesterday, spent: 9 })
      .execute();
    await member.client.guild.use.mutate(use(guildId, 10));
    expect(await member.client.guild.memberLimits.query({ guildId, userId: member.id })).toMatchObject({
      spentToday: 10,
      spentThisMonth: sameMonth ? 19 : 10,
    });
    await server.deps.db
      .deleteFrom('credits.guild_member_usage')
      .where('organization_id', '=', guildId)
      .where('day', '=', yesterday)
      .execute();
  });
});

describe('races', () => {
  // The racing calls are real parallel requests to a second instance on the file's database (its own pool on
  // Postgres; on PGlite the one database is shared) that caches memberships as production does by default
  // (30 s; roles do not change during a race). With the cache off, as on the file's server, a hundred
  // membership lookups at once can outlast their 5 s timeout on a loaded machine (MEMBERSHIP_UNAVAILABLE).
  let racer: { url: string; close(): Promise<void> };
  beforeAll(async () => {
    const config = configFrom({
      MANA_CORE_AUTH_URL: server.auth.url,
      MANA_CORE_SERVICE_KEY: SERVICE_KEY,
      ...server.database.env,
      MIGRATE_ON_START: 'false',
    });
    const ownDeps = server.database.kind === 'postgres';
    const deps = ownDeps
      ? await createAppDeps(config)
      : {
          ...server.deps,
          config,
          membership: createMembershipClient({
            authUrl: config.authUrl,
            serviceKey: config.authServiceKey,
            cacheSeconds: config.membershipCacheSeconds,
          }),
        };
    const app = await buildApp(deps, { closeDepsOnClose: ownDeps, logger: false });
    await app.listen({ port: 0, host: '127.0.0.1' });
    const address = app.server.address();
    racer = {
      url: `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`,
      close: () => app.close(),
    };
  });
  afterAll(async () => {
    await racer?.close();
  });
  const racing = (member: Member) =>
    clientFor(racer.url, () => ({ authorization: `Bearer ${member.token}` }));

  it('100 parallel uses of 1 by a member with daily limit 10: exactly 10 succeed', async () => {
    const { guildId, owner } = await fundedGuild(1000);
    const member = await join(guildId, 'member');
    await owner.client.guild.setMemberLimits.mutate({
      guildId,
      userId: member.id,
      dailyLimit: 10,
      monthlyLimit: null,
    });
    const outcomes = await Promise.allSettled(
      Array.from({ length: 100 }, (_, i) =>
        racing(member).guild.use.mutate(use(guildId, 1, { description: `${i}` })),
      ),
    );
    const ok = fulfilled(outcomes);
    expect(ok).toHaveLength(10);
    for (const o of outcomes) {
      if (o.status === 'rejected')
        expect(o.reason).toMatchObject({ data: { reason: 'DAILY_LIMIT_EXCEEDED' } });
    }
    expect(ok.map((o) => o.poolBalance).sort((a, b) => a - b)).toEqual(
      Array.from({ length: 10 }, (_, i) => 990 + i),
    );
    expect(await pool(guildId)).toMatchObject({ balance: 990, total_spent: 10 });
    expect(await owner.client.guild.memberLimits.query({ guildId, userId: member.id })).toMatchObject({
      spentToday: 10,
    });
  });

  it('60 parallel uses of 2 with monthly limit 15: exactly 7 succeed', async () => {
    const { guildId, owner } = await fundedGuild(1000);
    const member = await join(guildId, 'member');
    await owner.client.guild.setMemberLimits.mutate({
      guildId,
      userId: member.id,
      dailyLimit: null,
      monthlyLimit: 15,
    });
    const outcomes = await Promise.allSettled(
      Array.from({ length: 60 }, () => racing(member).guild.use.mutate(use(guildId, 2))),
    );
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(7);
    expect((await pool(guildId)).balance).toBe(986);
  });

  it('two members racing for the last credits: exactly the pool is spent, never below zero', async () => {
    const { guildId } = await fundedGuild(25);
    const a = await join(guildId, 'member');
    const b = await join(guildId, 'admin');
    const outcomes = await Promise.allSettled(
      Array.from({ length: 40 }, (_, i) => racing(i % 2 === 0 ? a : b).guild.use.mutate(use(guildId, 2))),
    );
    const ok = outcomes.filter((o) => o.status === 'fulfilled');
    expect(ok).toHaveLength(12);
    for (const o of outcomes) {
      if (o.status === 'rejected')
        expect(o.reason).toMatchObject({ data: { reason: 'INSUFFICIENT_POOL_CREDITS' } });
    }
    expect(await pool(guildId)).toMatchObject({ balance: 1, total_spent: 24 });
    const rows = await guildLedgerRows(guildId);
    expect(rows.every((r) => r.balance_after >= 0)).toBe(true);
  });

  it('funding, spending and limit changes at once keep every ledger consistent', async () => {
    const { guildId, owner } = await fundedGuild(20);
    await grant(owner.id, 200);
    const members = await Promise.all(Array.from({ length: 4 }, () => join(guildId, 'member')));
    await Promise.allSettled([
      ...Array.from({ length: 10 }, () => racing(owner).guild.fund.mutate({ guildId, amount: 10 })),
      ...members.flatMap((m) =>
        Array.from({ length: 15 }, () => racing(m).guild.use.mutate(use(guildId, 3))),
      ),
      ...members.map((m) =>
        racing(owner).guild.setMemberLimits.mutate({
          guildId,
          userId: m.id,
          dailyLimit: 12,
          monthlyLimit: null,
        }),
      ),
    ]);
    const after = await pool(guildId);
    expect(after.balance).toBe(after.total_funded - after.total_spent);
    expect(after.total_funded).toBe(120);
    expect(await ledgerSum(server.deps.db, owner.id)).toBe(100);
  });

  it.runIf(process.env.DATABASE_URL)(
    'two server instances on one database: daily limit 10 still means exactly 10',
    async () => {
      const second = await createAppDeps(
        configFrom({
          MANA_CORE_AUTH_URL: server.auth.url,
          MANA_CORE_SERVICE_KEY: SERVICE_KEY,
          MEMBERSHIP_CACHE_SECONDS: '0',
          MIGRATE_ON_START: 'false',
          ...server.database.env,
        }),
      );
      const app = await buildApp(second, { closeDepsOnClose: true, logger: false });
      try {
        await app.listen({ port: 0, host: '127.0.0.1' });
        const address = app.server.address();
        const url = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
        const { guildId, owner } = await fundedGuild(1000);
        const user = newUser();
        server.auth.setRole(guildId, user.id, 'member');
        await owner.client.guild.setMemberLimits.mutate({
          guildId,
          userId: user.id,
          dailyLimit: 10,
          monthlyLimit: 10,
        });
        const token = await server.auth.sign(user);
        const clients = [server.url, url].map((base) =>
          clientFor(base, () => ({ authorization: `Bearer ${token}` })),
        );
        const outcomes = await Promise.allSettled(
          Array.from({ length: 100 }, (_, i) => clients[i % 2]!.guild.use.mutate(use(guildId, 1))),
        );
        expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(10);
        expect((await pool(guildId)).balance).toBe(990);
      } finally {
        await app.close();
      }
    },
  );
});

describe('guild.transactions', () => {
  it('owners and admins see every row, members only their own, paged newest first', async () => {
    const { guildId, owner } = await fundedGuild(100);
    const admin = await join(guildId, 'admin');
    const a = await join(guildId, 'member');
    const b = await join(guildId, 'member');
    for (let i = 0; i < 3; i++) await a.client.guild.use.mutate(use(guildId, 1, { description: `a${i}` }));
    await b.client.guild.use.mutate(use(guildId, 2, { description: 'b0' }));

    const all = await owner.client.guild.transactions.query({ guildId });
    expect(all.items.map((t) => t.description)).toEqual(['b0', 'a2', 'a1', 'a0', 'Pool funding']);
    expect(all.nextCursor).toBeNull();
    expect(all.items[0]).toEqual({
      id: expect.any(String),
      userId: b.id,
      type: 'usage',
      amount: -2,
      balanceBefore: 97,
      balanceAfter: 95,
      appId: 'chat',
      description: 'b0',
      createdAt: expect.any(Date),
    });
    expect(await admin.client.guild.transactions.query({ guildId })).toEqual(all);

    const mine = await a.client.guild.transactions.query({ guildId });
    expect(mine.items.map((t) => t.description)).toEqual(['a2', 'a1', 'a0']);

    const page1 = await a.client.guild.transactions.query({ guildId, limit: 2 });
    expect(page1.items.map((t) => t.description)).toEqual(['a2', 'a1']);
    const page2 = await a.client.guild.transactions.query({ guildId, limit: 2, cursor: page1.nextCursor! });
    expect(page2.items.map((t) => t.description)).toEqual(['a0']);
    expect(page2.nextCursor).toBeNull();

    // A cursor naming a row the member cannot see is refused, not used to peek.
    const bRow = all.items[0]!.id;
    const error = await failure(a.client.guild.transactions.query({ guildId, cursor: bRow }));
    expect(error.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'INVALID_CURSOR' });
    const bad = await failure(a.client.guild.transactions.query({ guildId, limit: 101 }));
    expect(bad.data?.code).toBe('BAD_REQUEST');
  });
});

describe('membership client', () => {
  const client = (
    cacheSeconds: number,
    extra: { now?: () => number; timeoutMs?: number; serviceKey?: string } = {},
  ) =>
    createMembershipClient({
      authUrl: server.auth.url,
      serviceKey: extra.serviceKey ?? SERVICE_KEY,
      cacheSeconds,
      ...(extra.now ? { now: extra.now } : {}),
      ...(extra.timeoutMs ? { timeoutMs: extra.timeoutMs } : {}),
    });
  const reasonOf = async (call: Promise<GuildRole | null>) => {
    try {
      await call;
      return 'answered';
    } catch (error) {
      return (error as { reason?: string }).reason;
    }
  };

  it('caches answers for the configured time, members and non-members alike', async () => {
    let clock = 1_000_000;
    const membership = client(30, { now: () => clock });
    const guildId = `guild-${randomUUID()}`;
    server.auth.setRole(guildId, 'u1', 'admin');
    const before = server.auth.membershipRequests;
    expect(await membership.roleOf(guildId, 'u1')).toBe('admin');
    expect(await membership.roleOf(guildId, 'u2')).toBeNull();
    server.auth.setRole(guildId, 'u1', null);
    server.auth.setRole(guildId, 'u2', 'member');
    expect(await membership.roleOf(guildId, 'u1')).toBe('admin');
    expect(await membership.roleOf(guildId, 'u2')).toBeNull();
    expect(server.auth.membershipRequests - before).toBe(2);
    clock += 30_000;
    expect(await membership.roleOf(guildId, 'u1')).toBeNull();
    expect(await membership.roleOf(guildId, 'u2')).toBe('member');
    expect(server.auth.membershipRequests - before).toBe(4);
  });

  it('shares one request among concurrent questions while caching; asks every time when disabled', async () => {
    const guildId = `guild-${randomUUID()}`;
    server.auth.setRole(guildId, 'u', 'member');
    let before = server.auth.membershipRequests;
    const cached = client(30);
    expect(await Promise.all(Array.from({ length: 10 }, () => cached.roleOf(guildId, 'u')))).toEqual(
      Array(10).fill('member'),
    );
    expect(server.auth.membershipRequests - before).toBe(1);
    before = server.auth.membershipRequests;
    const uncached = client(0);
    for (let i = 0; i < 3; i++) expect(await uncached.roleOf(guildId, 'u')).toBe('member');
    expect(server.auth.membershipRequests - before).toBe(3);
  });

  it('fails closed with MEMBERSHIP_UNAVAILABLE, and never caches a failure', async () => {
    const guildId = `guild-${randomUUID()}`;
    server.auth.setRole(guildId, 'u', 'owner');
    const membership = client(30, { timeoutMs: 200 });
    for (const mode of ['down', 'garbage', 'hang'] as const) {
      server.auth.membershipMode = mode;
      expect(await reasonOf(membership.roleOf(guildId, 'u'))).toBe('MEMBERSHIP_UNAVAILABLE');
    }
    server.auth.membershipMode = 'ok';
    for (const body of [
      { isMember: true, role: 'superuser' },
      { isMember: true },
      { isMember: 'yes', role: 'owner' },
      [],
      null,
    ]) {
      server.auth.membershipBody = body;
      expect(await reasonOf(membership.roleOf(guildId, 'u'))).toBe('MEMBERSHIP_UNAVAILABLE');
    }
    server.auth.membershipBody = undefined;
    expect(await membership.roleOf(guildId, 'u')).toBe('owner');
  });

  it('never follows a redirect: the service key is not sent anywhere else (and the answer is unavailable)', async () => {
    // Found by a security review: fetch follows redirects and keeps custom headers across origins.
    const seen: (string | undefined)[] = [];
    const elsewhere = createServer((req, res) => {
      seen.push(req.headers['x-service-key'] as string | undefined);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"isMember":true,"role":"owner"}');
    });
    await new Promise<void>((resolve) => elsewhere.listen(0, '127.0.0.1', resolve));
    const target = `http://localhost:${(elsewhere.address() as AddressInfo).port}`;
    const redirecting = createServer((req, res) =>
      res.writeHead(307, { location: `${target}${req.url}` }).end(),
    );
    await new Promise<void>((resolve) => redirecting.listen(0, '127.0.0.1', resolve));
    try {
      const membership = createMembershipClient({
        authUrl: `http://127.0.0.1:${(redirecting.address() as AddressInfo).port}`,
        serviceKey: SERVICE_KEY,
        cacheSeconds: 0,
      });
      expect(await reasonOf(membership.roleOf(`guild-${randomUUID()}`, 'u'))).toBe('MEMBERSHIP_UNAVAILABLE');
      expect(seen).toEqual([]);
    } finally {
      redirecting.closeAllConnections();
      elsewhere.closeAllConnections();
      await Promise.all([redirecting, elsewhere].map((one) => new Promise((resolve) => one.close(resolve))));
    }
  });

  it('is unavailable with a wrong service key, an unreachable or unset auth service', async () => {
    const guildId = `guild-${randomUUID()}`;
    server.auth.setRole(guildId, 'u', 'owner');
    expect(await reasonOf(client(0, { serviceKey: 'wrong-key' }).roleOf(guildId, 'u'))).toBe(
      'MEMBERSHIP_UNAVAILABLE',
    );
    const unreachable = createMembershipClient({
      authUrl: 'http://127.0.0.1:9',
      serviceKey: SERVICE_KEY,
      cacheSeconds: 0,
    });
    expect(await reasonOf(unreachable.roleOf(guildId, 'u'))).toBe('MEMBERSHIP_UNAVAILABLE');
    const unset = createMembershipClient({ authUrl: undefined, serviceKey: SERVICE_KEY, cacheSeconds: 0 });
    expect(await reasonOf(unset.roleOf(guildId, 'u'))).toBe('MEMBERSHIP_UNAVAILABLE');
  });

  it('encodes ids in the path: a guild id with "/" and spaces reaches the right member', async () => {
    const guildId = `team/${randomUUID()} a?b#c`;
    server.auth.setRole(guildId, 'user/1', 'admin');
    expect(await client(0).roleOf(guildId, 'user/1')).toBe('admin');
    expect(await client(0).roleOf(guildId.split('/')[0]!, 'user/1')).toBeNull();
  });
});
