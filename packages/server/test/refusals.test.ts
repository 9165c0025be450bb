import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { TRPCClientError } from '@trpc/client';
import type { FastifyInstance } from 'fastify';
import { sql } from 'kysely';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.ts';
import { configFrom } from '../src/config.ts';
import { createAppDeps } from '../src/deps.ts';
import { usageRequestHash } from '../src/domain/credits/personal.ts';
import { expectLedgerConsistent, holdDrift, ledgerSum } from './helpers/invariants.ts';
import {
  type Client,
  clientFor,
  newUser,
  SERVICE_KEY,
  startTestServer,
  type TestServer,
} from './helpers/server.ts';
import { TcpFaultProxy } from './helpers/tcp-proxy.ts';

/**
 * A keyed refusal takes its key (functions/refusals.sql). The hole it closes, found by `pnpm chaos` (seed
 * 93415): a keyed debit's first attempt was in flight on a paused instance, the client retried the key on
 * another instance and was refused, then the first attempt reached Postgres and charged. Here that is played
 * with a real TCP proxy holding the first instance's requests and a second instance on a direct connection;
 * the other orders (refusal, top-up, same key; parallel calls; a refusal committed while the late statement
 * waits for the row lock) are played with real calls too. No mocks.
 */
const databaseUrl = process.env.DATABASE_URL;

// Periodic jobs off: the proxy test waits for the one statement it holds.
const QUIET = {
  MEMBERSHIP_CACHE_SECONDS: '0',
  RESERVATION_SWEEP_SECONDS: '3600',
  GIFT_EXPIRY_SWEEP_SECONDS: '0',
  LOT_EXPIRY_SWEEP_SECONDS: '0',
  WEBHOOK_DELIVERY_INTERVAL_MS: '0',
  AUTO_TOP_UP_INTERVAL_MS: '0',
};

let proxy: TcpFaultProxy | undefined;
/** Instance A: through the proxy on Postgres (its requests can be held), alone on PGlite. */
let server: TestServer;
/** Instance B: a second app on a direct connection to the same database (Postgres only). */
let second: { app: FastifyInstance; url: string } | undefined;

beforeAll(async () => {
  if (databaseUrl) {
    const target = new URL(databaseUrl);
    proxy = await TcpFaultProxy.start({ host: target.hostname, port: Number(target.port || 5432) });
  }
  server = await startTestServer(QUIET, { proxy });
  server.auth.expectedServiceKey = SERVICE_KEY;
  if (databaseUrl) {
    const deps = await createAppDeps(
      configFrom({
        MANA_CORE_AUTH_URL: server.auth.url,
        MANA_CORE_SERVICE_KEY: SERVICE_KEY,
        MIGRATE_ON_START: 'false',
        ...QUIET,
        ...server.database.env,
      }),
    );
    const app = await buildApp(deps, { closeDepsOnClose: true, logger: false });
    await app.listen({ port: 0, host: '127.0.0.1' });
    const address = app.server.address();
    second = { app, url: `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}` };
  }
});
afterEach(async () => {
  proxy?.releaseRequests();
  await expectLedgerConsistent(server.db);
  expect(await holdDrift(server.db)).toEqual({ users: [], pools: [] });
});
afterAll(async () => {
  proxy?.releaseRequests();
  await second?.app.close();
  await server?.close();
  await proxy?.close();
});

const AMOUNT = 10;

/** What a call answered, comparable across attempts: its result, or its refusal as the caller saw it. */
type Answer = { ok: unknown } | { reason: string; message: string; details?: unknown };

async function answer(call: Promise<unknown>): Promise<Answer> {
  try {
    return { ok: await call };
  } catch (error) {
    if (!(error instanceof TRPCClientError)) throw error;
    const data = error.data as { reason: string; details?: unknown };
    return { reason: data.reason, message: error.message, details: data.details };
  }
}

/** Where setup and top-ups are sent: instance B when there is one, so they pass while A's requests are held. */
const setupUrl = () => second?.url ?? server.url;

const internalAt = (url: string): Client =>
  clientFor(url, () => ({ 'x-service-key': SERVICE_KEY, 'x-app-id': 'test-suite' }));

async function userAt(url: string, user: { id: string }): Promise<Client> {
  const token = await server.auth.sign(newUser({ id: user.id }));
  return clientFor(url, () => ({ authorization: `Bearer ${token}` }));
}

async function grant(userId: string, amount: number) {
  await internalAt(setupUrl()).internal.credits.grant.mutate({
    userId,
    amount,
    reason: 'test funds',
    idempotencyKey: `grant-${randomUUID()}`,
  });
}

/** A guild pool funded with `amount` by its owner, and a member. */
async function guildWithMember(amount: number) {
  const guildId = `guild-${randomUUID()}`;
  await internalAt(setupUrl()).internal.guildPool.init.mutate({ guildId });
  const owner = newUser();
  const member = newUser();
  server.auth.setRole(guildId, owner.id, 'owner');
  server.auth.setRole(guildId, member.id, 'member');
  const fund = async (credits: number) => {
    await grant(owner.id, credits);
    await (await userAt(setupUrl(), owner)).guild.fund.mutate({ guildId, amount: credits });
  };
  if (amount > 0) await fund(amount);
  return { guildId, owner, member, fund };
}

async function countRows(query: ReturnType<typeof sql<{ n: number }>>): Promise<number> {
  const { rows } = await query.execute(server.db);
  return Number(rows[0]?.n ?? 0);
}

/** One account that cannot pay a keyed call of AMOUNT, the call, and what makes it able to pay. */
interface Refusable {
  /** What the refusal says. */
  reason: string;
  /** The call with `key` (and `amount`, default AMOUNT) on the instance at `url`. */
  call(url: string, key: string, amount?: number): Promise<Answer>;
  /** The account can pay now (a top-up, funding, a raised limit). */
  enable(): Promise<void>;
  /** Rows posted or holds placed under `key`. */
  executions(key: string): Promise<number>;
  /** Refusals recorded under `key`. */
  refusals(key: string): Promise<number>;
  /** Credits left in the account the call takes from (personal balance or pool). */
  balance(): Promise<number>;
}

const personalRows = (userId: string) => (key: string) =>
  countRows(sql`select count(*)::int4 as n from credits.transactions where user_id = ${userId}
                 and idempotency_key = ${key}`);
const guildRows = (guildId: string, userId: string) => (key: string) =>
  countRows(sql`select count(*)::int4 as n from credits.guild_transactions where organization_id = ${guildId}
                 and user_id = ${userId} and idempotency_key = ${key}`);
const holds = (userId: string) => (key: string) =>
  countRows(sql`select count(*)::int4 as n from credits.reservations where user_id = ${userId}
                 and idempotency_key = ${key}`);
const refusalsOf = (userId: string) => (key: string) =>
  countRows(sql`select count(*)::int4 as n from credits.refusals where user_id = ${userId}
                 and idempotency_key = ${key}`);
const personalBalance = (userId: string) => () =>
  countRows(
    sql`select coalesce(sum(amount), 0)::int8 as n from credits.transactions where user_id = ${userId}`,
  );
const poolBalance = (guildId: string) => () =>
  countRows(sql`select balance as n from credits.guild_pools where organization_id = ${guildId}`);

const use = (key: string, amount: number) => ({
  amount,
  appId: 'app',
  description: 'a call',
  idempotencyKey: key,
});

/** Every keyed path that can answer INSUFFICIENT_CREDITS / _POOL_CREDITS or a member limit. */
const PATHS: Record<string, () => Promise<Refusable>> = {
  async 'credits.use (single statement)'() {
    const user = newUser();
    await grant(user.id, 5);
    return {
      reason: 'INSUFFICIENT_CREDITS',
      call: (url, key, amount = AMOUNT) =>
        answer(internalAt(url).internal.credits.use.mutate({ userId: user.id, ...use(key, amount) })),
      enable: () => grant(user.id, 100),
      executions: personalRows(user.id),
      refusals: refusalsOf(user.id),
      balance: personalBalance(user.id),
    };
  },
  async 'credits.use of a user with no balance row'() {
    const user = newUser();
    return {
      reason: 'INSUFFICIENT_CREDITS',
      call: async (url, key, amount = AMOUNT) =>
        answer((await userAt(url, user)).credits.use.mutate(use(key, amount))),
      enable: () => grant(user.id, 100),
      executions: personalRows(user.id),
      refusals: refusalsOf(user.id),
      balance: personalBalance(user.id),
    };
  },
  async 'internal.credits.useBatch item (credits.use_batch)'() {
    const user = newUser();
    await grant(user.id, 5);
    return {
      reason: 'INSUFFICIENT_CREDITS',
      async call(url, key, amount = AMOUNT) {
        const { results } = await internalAt(url).internal.credits.useBatch.mutate({
          items: [{ userId: user.id, ...use(key, amount) }],
        });
        const [result] = results;
        return result?.ok
          ? { ok: result }
          : { reason: result!.error!.reason, message: result!.error!.message };
      },
      enable: () => grant(user.id, 100),
      executions: personalRows(user.id),
      refusals: refusalsOf(user.id),
      balance: personalBalance(user.id),
    };
  },
  async 'guild.use (pool)'() {
    const { guildId, member, fund } = await guildWithMember(5);
    return {
      reason: 'INSUFFICIENT_POOL_CREDITS',
      call: async (url, key, amount = AMOUNT) =>
        answer((await userAt(url, member)).guild.use.mutate({ guildId, ...use(key, amount) })),
      enable: () => fund(100),
      executions: guildRows(guildId, member.id),
      refusals: refusalsOf(member.id),
      balance: poolBalance(guildId),
    };
  },
  async 'guild.use over a member limit'() {
    const { guildId, owner, member } = await guildWithMember(100);
    const ownerClient = await userAt(setupUrl(), owner);
    const limit = (dailyLimit: number | null) =>
      ownerClient.guild.setMemberLimits.mutate({
        guildId,
        userId: member.id,
        dailyLimit,
        monthlyLimit: null,
      });
    await limit(5);
    return {
      reason: 'DAILY_LIMIT_EXCEEDED',
      call: async (url, key, amount = AMOUNT) =>
        answer((await userAt(url, member)).guild.use.mutate({ guildId, ...use(key, amount) })),
      enable: async () => {
        await limit(null);
      },
      executions: guildRows(guildId, member.id),
      refusals: refusalsOf(member.id),
      balance: poolBalance(guildId),
    };
  },
  async 'internal.credits.reserve (personal hold)'() {
    const user = newUser();
    await grant(user.id, 5);
    return {
      reason: 'INSUFFICIENT_CREDITS',
      call: (url, key, amount = AMOUNT) =>
        answer(internalAt(url).internal.credits.reserve.mutate({ userId: user.id, ...use(key, amount) })),
      enable: () => grant(user.id, 100),
      executions: holds(user.id),
      refusals: refusalsOf(user.id),
      balance: personalBalance(user.id),
    };
  },
  async 'internal.credits.reserve with guildId (pool hold)'() {
    const { guildId, member, fund } = await guildWithMember(5);
    return {
      reason: 'INSUFFICIENT_POOL_CREDITS',
      call: (url, key, amount = AMOUNT) =>
        answer(
          internalAt(url).internal.credits.reserve.mutate({
            userId: member.id,
            guildId,
            ...use(key, amount),
          }),
        ),
      enable: () => fund(100),
      executions: holds(member.id),
      refusals: refusalsOf(member.id),
      balance: poolBalance(guildId),
    };
  },
  async 'gifts.create (escrow)'() {
    const user = newUser();
    await grant(user.id, 5);
    return {
      reason: 'INSUFFICIENT_CREDITS',
      call: async (url, key, amount = AMOUNT) =>
        answer(
          (await userAt(url, user)).gifts.create.mutate({
            type: 'simple',
            totalCredits: amount,
            idempotencyKey: key,
          }),
        ),
      enable: () => grant(user.id, 100),
      executions: personalRows(user.id),
      refusals: refusalsOf(user.id),
      balance: personalBalance(user.id),
    };
  },
  async 'guild.fund (funder short)'() {
    const { guildId, owner } = await guildWithMember(0);
    await grant(owner.id, 5);
    return {
      reason: 'INSUFFICIENT_CREDITS',
      call: async (url, key, amount = AMOUNT) =>
        answer((await userAt(url, owner)).guild.fund.mutate({ guildId, amount, idempotencyKey: key })),
      enable: () => grant(owner.id, 100),
      executions: guildRows(guildId, owner.id),
      refusals: refusalsOf(owner.id),
      balance: personalBalance(owner.id),
    };
  },
};

describe.each(Object.entries(PATHS))('%s', (_name, make) => {
  it('a refusal takes its key: after a top-up the same request is still that refusal, another payload a CONFLICT, a new key pays', async () => {
    const path = await make();
    const before = await path.balance();
    const first = await path.call(server.url, 'k1');
    expect(first).toMatchObject({ reason: path.reason });
    expect(await path.refusals('k1')).toBe(1);
    // The same request again: the same refusal (a replay, nothing recorded twice).
    expect(await path.call(server.url, 'k1')).toEqual(first);
    await path.enable();
    const enabled = await path.balance();
    // Now the account could pay, but the key's first result was a refusal: a retry cannot turn it into a charge.
    expect(await path.call(server.url, 'k1')).toEqual(first);
    expect(await path.call(server.url, 'k1', AMOUNT - 1)).toMatchObject({ reason: 'IDEMPOTENCY_CONFLICT' });
    expect(await path.executions('k1')).toBe(0);
    expect(await path.refusals('k1')).toBe(1);
    expect(await path.balance()).toBe(enabled);
    // A new attempt is a new key.
    expect(await path.call(server.url, 'k2')).toHaveProperty('ok');
    expect(await path.executions('k2')).toBe(1);
    expect(await path.refusals('k2')).toBe(0);
    expect(before).toBeLessThanOrEqual(enabled);
  });

  it.runIf(databaseUrl)(
    'the late original: held in flight on instance A while B refuses its key, then released after a top-up — it answers the refusal and charges nothing',
    async () => {
      const path = await make();
      const key = `late-${randomUUID()}`;
      proxy!.holdRequests();
      const late = path.call(server.url, key);
      // Wait until A's work is in flight in the proxy (for a one-statement call: that very statement).
      const deadline = Date.now() + 20_000;
      while (proxy!.heldBytes().length === 0) {
        if (Date.now() > deadline) throw new Error('instance A sent nothing');
        await sleep(10);
      }
      const refused = await path.call(second!.url, key);
      expect(refused).toMatchObject({ reason: path.reason });
      await path.enable();
      const enabled = await path.balance();
      proxy!.releaseRequests();
      expect(await late).toEqual(refused);
      expect(await path.executions(key)).toBe(0);
      expect(await path.refusals(key)).toBe(1);
      expect(await path.balance()).toBe(enabled);
      // And a retry on either instance still answers the refusal.
      expect(await path.call(second!.url, key)).toEqual(refused);
      expect(await path.call(server.url, key)).toEqual(refused);
    },
  );
});

describe('the late original of a single-statement debit', () => {
  it.runIf(databaseUrl)(
    'its statement, held in the proxy while B refuses, reaches Postgres after a top-up and is refused there',
    async () => {
      const user = newUser();
      await grant(user.id, 5);
      const key = `in-flight-${randomUUID()}`;
      const call = (url: string) =>
        answer(internalAt(url).internal.credits.use.mutate({ userId: user.id, ...use(key, AMOUNT) }));
      proxy!.holdRequests();
      const late = call(server.url);
      // The debit statement itself (it carries the key) is in the proxy, not yet in Postgres.
      const deadline = Date.now() + 20_000;
      while (!proxy!.heldBytes().includes(key)) {
        if (Date.now() > deadline) throw new Error('the debit statement never left instance A');
        await sleep(10);
      }
      const refused = await call(second!.url);
      expect(refused).toMatchObject({
        reason: 'INSUFFICIENT_CREDITS',
        details: { required: 10, available: 5 },
      });
      await grant(user.id, 100);
      proxy!.releaseRequests();
      expect(await late).toEqual(refused);
      expect(await personalRows(user.id)(key)).toBe(0);
      expect(await personalBalance(user.id)()).toBe(105);
      // Counted as a replay by the instance that answered it late, not as a second refusal.
      const replays = (await server.deps.metrics.idempotentReplays.get()).values.find(
        (value) => value.labels.procedure === 'internal.credits.use',
      );
      expect(replays?.value ?? 0).toBeGreaterThanOrEqual(1);
    },
  );
});

describe('parallel calls with one key on a poor account', () => {
  const N = 40;
  it('credits.use: one refusal recorded, every caller (single, coalesced, both instances) answered the same', async () => {
    const user = newUser();
    await grant(user.id, 5);
    const urls = [server.url, second?.url ?? server.url];
    const answers = await Promise.all(
      Array.from({ length: N }, (_, i) =>
        answer(
          internalAt(urls[i % 2]!).internal.credits.use.mutate({
            userId: user.id,
            ...use('one-key', AMOUNT),
          }),
        ),
      ),
    );
    expect(new Set(answers.map((a) => JSON.stringify(a))).size).toBe(1);
    expect(answers[0]).toMatchObject({
      reason: 'INSUFFICIENT_CREDITS',
      details: { required: 10, available: 5 },
    });
    expect(await refusalsOf(user.id)('one-key')).toBe(1);
    expect(await personalBalance(user.id)()).toBe(5);
  });

  it('credits.use while a top-up lands: every caller gets the key’s first result, refusal or charge, once', async () => {
    const user = newUser();
    await grant(user.id, 5);
    const urls = [server.url, second?.url ?? server.url];
    const calls = Array.from({ length: N }, (_, i) =>
      answer(
        internalAt(urls[i % 2]!).internal.credits.use.mutate({ userId: user.id, ...use('race', AMOUNT) }),
      ),
    );
    await grant(user.id, 100);
    const answers = await Promise.all(calls);
    // Whichever came first — the refusal or the debit — every call answers it, and money agrees.
    const first = answers[0]!;
    for (const a of answers) {
      if ('ok' in a && 'ok' in first)
        expect((a.ok as { transactionId: string }).transactionId).toBe(
          (first.ok as { transactionId: string }).transactionId,
        );
      else expect(a).toEqual(first);
    }
    const charged = await personalRows(user.id)('race');
    const refused = await refusalsOf(user.id)('race');
    expect(charged + refused).toBe(1);
    expect(await personalBalance(user.id)()).toBe(105 - charged * AMOUNT);
  });

  it('guild.use: one refusal recorded, every caller answered the same', async () => {
    const { guildId, member } = await guildWithMember(5);
    const urls = [server.url, second?.url ?? server.url];
    const clients = await Promise.all(urls.map((url) => userAt(url, member)));
    const answers = await Promise.all(
      Array.from({ length: N }, (_, i) =>
        answer(clients[i % 2]!.guild.use.mutate({ guildId, ...use('pool-key', AMOUNT) })),
      ),
    );
    expect(new Set(answers.map((a) => JSON.stringify(a))).size).toBe(1);
    expect(answers[0]).toMatchObject({ reason: 'INSUFFICIENT_POOL_CREDITS' });
    expect(await refusalsOf(member.id)('pool-key')).toBe(1);
    expect(await poolBalance(guildId)()).toBe(5);
  });
});

/**
 * The order the row lock decides: the refusal commits while the late debit waits for the account's row
 * lock. The debit's statement took its snapshot before the refusal committed; only a check made after the
 * lock, with a fresh snapshot (credits.assert_not_refused in the RETURNING), sees it. A session here plays
 * the refusing transaction exactly as spending.ts runs it: lock the row, record the refusal, commit.
 */
/** Until some backend waits for a row lock (the late statement has taken its snapshot and is queued). */
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

describe.runIf(databaseUrl)('a refusal committed while the late statement waits for the row lock', () => {
  async function refusingSession(lock: string, refusal: string) {
    const session = new pg.Client({ connectionString: server.database.url });
    await session.connect();
    await session.query('begin');
    await session.query(lock);
    await session.query(refusal);
    return session;
  }

  const statements = {
    'credits.use (debitBalance)': (url: string, userId: string, key: string) =>
      answer(internalAt(url).internal.credits.use.mutate({ userId, ...use(key, AMOUNT) })),
    'useBatch (credits.use_batch)': async (url: string, userId: string, key: string) => {
      const { results } = await internalAt(url).internal.credits.useBatch.mutate({
        items: [{ userId, ...use(key, AMOUNT) }],
      });
      return results[0]!.ok ? { ok: results[0] } : { reason: results[0]!.error!.reason, message: '' };
    },
  };

  it.each(Object.entries(statements))('%s', async (_name, call) => {
    const user = newUser();
    await grant(user.id, 100);
    const key = `locked-${randomUUID()}`;
    const hash = usageRequestHash(use(key, AMOUNT));
    const session = await refusingSession(
      `select 1 from credits.balances where user_id = '${user.id}' for update`,
      `select credits.record_refusal('personal', '${user.id}', null, '${key}', '${hash}', 'INSUFFICIENT_CREDITS',
         '{"required": 10, "available": 3}')`,
    );
    try {
      const late = call(second!.url, user.id, key);
      await untilLockWait();
      await session.query('commit');
      expect(await late).toMatchObject({ reason: 'INSUFFICIENT_CREDITS' });
    } finally {
      await session.end();
    }
    expect(await personalRows(user.id)(key)).toBe(0);
    expect(await personalBalance(user.id)()).toBe(100);
  });

  it('a personal hold (placeHold, one statement)', async () => {
    const user = newUser();
    await grant(user.id, 100);
    const key = `locked-hold-${randomUUID()}`;
    const session = await refusingSession(
      `select 1 from credits.balances where user_id = '${user.id}' for update`,
      // Another fingerprint than the hold's: a refused key stops the statement either way (replay or CONFLICT).
      `select credits.record_refusal('hold', '${user.id}', null, '${key}', 'x', 'INSUFFICIENT_CREDITS',
         '{"required": 10, "available": 3}')`,
    );
    try {
      const late = answer(
        internalAt(second!.url).internal.credits.reserve.mutate({ userId: user.id, ...use(key, AMOUNT) }),
      );
      await untilLockWait();
      await session.query('commit');
      expect(await late).toMatchObject({ reason: 'IDEMPOTENCY_CONFLICT' });
    } finally {
      await session.end();
    }
    expect(await holds(user.id)(key)).toBe(0);
  });

  it('guild.use (debitGuildPool) and a pool hold (placeHold), the pool row locked', async () => {
    const { guildId, member } = await guildWithMember(100);
    for (const space of ['guild', 'hold'] as const) {
      const key = `locked-${space}-${randomUUID()}`;
      const session = await refusingSession(
        `select 1 from credits.guild_pools where organization_id = '${guildId}' for update`,
        // The fingerprint does not matter here: a refused key stops the statement either way (replay or CONFLICT).
        `select credits.record_refusal('${space}', '${member.id}', ${space === 'guild' ? `'${guildId}'` : 'null'},
           '${key}', 'x', 'INSUFFICIENT_POOL_CREDITS', '{"required": 10, "available": 3}')`,
      );
      try {
        const late =
          space === 'guild'
            ? answer((await userAt(second!.url, member)).guild.use.mutate({ guildId, ...use(key, AMOUNT) }))
            : answer(
                internalAt(second!.url).internal.credits.reserve.mutate({
                  userId: member.id,
                  guildId,
                  ...use(key, AMOUNT),
                }),
              );
        await untilLockWait();
        await session.query('commit');
        expect(await late).toMatchObject({ reason: 'IDEMPOTENCY_CONFLICT' });
      } finally {
        await session.end();
      }
    }
    expect(await poolBalance(guildId)()).toBe(100);
  });
});

describe('keyless calls', () => {
  it('record nothing: a keyless refusal leaves no row, and the next keyless call is decided afresh', async () => {
    const user = newUser();
    await grant(user.id, 5);
    const client = internalAt(server.url);
    const refused = await answer(
      client.internal.credits.use.mutate({ userId: user.id, amount: AMOUNT, appId: 'app', description: 'x' }),
    );
    expect(refused).toMatchObject({ reason: 'INSUFFICIENT_CREDITS' });
    expect(
      await countRows(sql`select count(*)::int4 as n from credits.refusals where user_id = ${user.id}`),
    ).toBe(0);
    await grant(user.id, 100);
    expect(
      await answer(
        client.internal.credits.use.mutate({
          userId: user.id,
          amount: AMOUNT,
          appId: 'app',
          description: 'x',
        }),
      ),
    ).toHaveProperty('ok');
  });
});

// A personal key has one first result whatever path it took: a key refused for a debit is not free for a grant
// or a refund, and a batch decides a refusal under the account's row lock even for a user who had no balance
// row yet.
const service = () => server.internalClient().internal.credits;

describe('a refused key stays refused / one key, one first result', () => {
  it('a grant under a key refused for a use is a CONFLICT, and the refusal still answers the use', async () => {
    const user = await server.fundedUser(5);
    const key = `shared-${randomUUID()}`;
    const refused = await answer(service().use.mutate({ userId: user.id, ...use(key, 10) }));
    expect(refused).toMatchObject({ reason: 'INSUFFICIENT_CREDITS' });

    // The key's first result is the refusal: another request under it must be a CONFLICT...
    const grant = await answer(
      service().grant.mutate({
        userId: user.id,
        amount: 100,
        reason: 'later',
        idempotencyKey: key,
      }),
    );
    // ...and the use's replay is still its refusal.
    const replay = await answer(service().use.mutate({ userId: user.id, ...use(key, 10) }));
    expect({ grant, replay }).toMatchObject({
      grant: { reason: 'IDEMPOTENCY_CONFLICT' },
      replay: { reason: 'INSUFFICIENT_CREDITS' },
    });
  });

  it('a refund under a key refused for a use is a CONFLICT, and the refusal still answers the use', async () => {
    const user = await server.fundedUser(20);
    const spent = await service().use.mutate({ userId: user.id, ...use(`spend-${randomUUID()}`, 15) });
    const key = `shared-${randomUUID()}`;
    expect(await answer(service().use.mutate({ userId: user.id, ...use(key, 10) }))).toMatchObject({
      reason: 'INSUFFICIENT_CREDITS',
    });
    const refund = await answer(
      service().refund.mutate({
        userId: user.id,
        transactionId: spent.transactionId,
        amount: 5,
        description: 'sorry',
        idempotencyKey: key,
      }),
    );
    const replay = await answer(service().use.mutate({ userId: user.id, ...use(key, 10) }));
    expect({ refund, replay }).toMatchObject({
      refund: { reason: 'IDEMPOTENCY_CONFLICT' },
      replay: { reason: 'INSUFFICIENT_CREDITS' },
    });
  });

  it('a useBatch item under a key refused for a use, after a grant took the key, answers consistently', async () => {
    const user = await server.fundedUser(5);
    const key = `shared-${randomUUID()}`;
    await answer(service().use.mutate({ userId: user.id, ...use(key, 10) }));
    await answer(service().grant.mutate({ userId: user.id, amount: 100, reason: 'x', idempotencyKey: key }));
    const single = await answer(service().use.mutate({ userId: user.id, ...use(key, 10) }));
    const { results } = await service().useBatch.mutate({ items: [{ userId: user.id, ...use(key, 10) }] });
    // Whatever the key now says, the single path and the batch path must say the same thing.
    expect(results[0]!.ok).toBe(false);
    expect((results[0] as { error: { reason: string } }).error.reason).toBe(
      (single as { reason: string }).reason,
    );
  });
});

/**
 * A batch item of a user with no balance row used to be refused without any row lock (use_batch locked only
 * the rows that existed): a late use of the same key that committed meanwhile charged, and the batch still
 * answered a fresh INSUFFICIENT_CREDITS. The batch is held deterministically on another account of the same
 * batch (X: a lapsed hold whose lot this session holds locked, so use_batch waits in release_expired_holds).
 */
describe.runIf(databaseUrl)('use_batch: a keyed refusal for a user without a balance row', () => {
  it('a batch refusal of a user without a balance row is decided under its lock: a late charge under the key answers that refusal', async () => {
    const x = await server.fundedUser(10);
    const hold = await service().reserve.mutate({
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
      batch = service().useBatch.mutate({
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
        await service().grant.mutate({
          userId: u.id,
          amount: 5,
          reason: 'first',
          idempotencyKey: `g-${u.id}`,
        });
        return answer(service().use.mutate({ userId: u.id, ...use(key, 5) }));
      })();
      await sleep(300);
    } finally {
      await session.query('rollback');
      await session.end();
    }
    const { results } = await batch!;
    const lateAnswer = await late!;
    const replay = await answer(service().use.mutate({ userId: u.id, ...use(key, 5) }));
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
