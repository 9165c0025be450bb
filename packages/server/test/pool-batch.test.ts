import { randomUUID } from 'node:crypto';
import type { KyselyPlugin, QueryId, RootOperationNode } from 'kysely';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reserveCredits } from '../src/domain/credits/reservations.ts';
import { DomainError } from '../src/domain/errors.ts';
import { setMemberLimits } from '../src/domain/guild/limits.ts';
import { coalescedPoolSpender, spendFromPoolTogether } from '../src/domain/guild/pool-coalescer.ts';
import { fundPool, initPool, type PoolUseInput, spendFromPool } from '../src/domain/guild/pools.ts';
import { isReplayed } from '../src/domain/idempotency.ts';
import { OutcomeUnknownError } from '../src/domain/outcome.ts';
import { expectLedgerConsistent } from './helpers/invariants.ts';
import { startTestServer, type TestServer } from './helpers/server.ts';

// Differential tests of pool spends (issue 17): the same scenario through the single path (spendFromPool, one
// call at a time), one call of credits.pool_use_batch with every item, and the pool coalescer (all at once:
// the first alone, the rest together) must give the same answers and leave identical guild ledgers, lots,
// pools, holds, member and usage counters and events. Then real parallel requests on one pool with caps.
// (The coalescer sends a lone spend as a batch of one; the single path is spendFromPool alone.)

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await expectLedgerConsistent(server.deps.db);
  await server.close();
});

type Path = 'single' | 'batch' | 'coalesced';
const PATHS: Path[] = ['single', 'batch', 'coalesced'];

/** A spend of member `member` (a letter; each path has its own guild and members). */
interface Spend {
  member: string;
  amount: number;
  key: string | undefined;
  description?: string;
}

const spend = (member: string, amount: number, key: string | undefined, description = 'work'): Spend => ({
  member,
  amount,
  key,
  description,
});

/** What a caller learns from one spend, without ids: the outcome and the number it reports. */
function answerOf(settled: PromiseSettledResult<{ poolBalance: number }>): string {
  if (settled.status === 'fulfilled') {
    return `${isReplayed(settled.value) ? 'replay' : 'ok'}:${settled.value.poolBalance}`;
  }
  const error = settled.reason;
  if (!(error instanceof DomainError)) throw error;
  const details = error.details as { available?: number; spent?: number } | undefined;
  const number = details?.available ?? details?.spent;
  // a recorded refusal answered again is marked a replay (the metrics count it as one)
  const reason = isReplayed(error) ? `replayed ${error.reason}` : error.reason;
  return number === undefined ? reason : `${reason}:${number}`;
}

const memberId = (guildId: string, member: string) => `${guildId}:${member}`;

function inputOf(guildId: string, item: Spend): PoolUseInput {
  return {
    guildId,
    userId: memberId(guildId, item.member),
    amount: item.amount,
    appId: 'chat',
    description: item.description ?? 'work',
    metadata: { model: 'small' },
    idempotencyKey: item.key,
  };
}

async function run(path: Path, guildId: string, items: Spend[]): Promise<string[]> {
  const db = server.deps.db;
  const inputs = items.map((item) => inputOf(guildId, item));
  if (path === 'single') {
    const answers: string[] = [];
    for (const input of inputs) {
      answers.push(answerOf((await Promise.allSettled([spendFromPool(db, input)]))[0]!));
    }
    return answers;
  }
  if (path === 'batch') {
    const outcomes = await spendFromPoolTogether(db, inputs);
    return outcomes.map((outcome) =>
      answerOf(
        outcome.ok
          ? { status: 'fulfilled', value: outcome.value }
          : { status: 'rejected', reason: outcome.error },
      ),
    );
  }
  const spendCoalesced = coalescedPoolSpender(db);
  return (await Promise.allSettled(inputs.map((input) => spendCoalesced(input)))).map(answerOf);
}

interface PoolSetup {
  /** Owner grants, each funded into the pool whole: `expiresInHours` undefined = never expires. */
  grants: { amount: number; expiresInHours?: number }[];
  limits: Record<string, { dailyLimit: number | null; monthlyLimit: number | null }>;
  /** Pool holds: `lapsed` ones are backdated past their expiry (not yet returned). */
  holds: { member: string; amount: number; lapsed: boolean }[];
  /** Backdate the pool's expiring lots past their expiry (not yet posted). */
  lapseLots: boolean;
}

async function pool(setup: PoolSetup): Promise<string> {
  const { db } = server.deps;
  const guildId = `pool-diff-${randomUUID()}`;
  const owner = memberId(guildId, 'owner');
  server.auth.setRole(guildId, owner, 'owner');
  for (const member of ['a', 'b', 'c', 'd'])
    server.auth.setRole(guildId, memberId(guildId, member), 'member');
  await initPool(db, guildId);
  const internal = server.internalClient().internal;
  for (const grant of setup.grants) {
    await internal.credits.grant.mutate({
      userId: owner,
      amount: grant.amount,
      reason: 'funds',
      idempotencyKey: randomUUID(),
      ...(grant.expiresInHours
        ? { expiresAt: new Date(Date.now() + grant.expiresInHours * 3_600_000).toISOString() }
        : {}),
    });
    await fundPool(server.deps, owner, { guildId, amount: grant.amount });
  }
  for (const [member, limits] of Object.entries(setup.limits)) {
    await setMemberLimits(server.deps, owner, { guildId, userId: memberId(guildId, member), ...limits });
  }
  for (const hold of setup.holds) {
    const placed = await reserveCredits(server.deps, {
      guildId,
      userId: memberId(guildId, hold.member),
      amount: hold.amount,
      appId: 'chat',
      description: 'hold',
      ttlSeconds: 600,
      idempotencyKey: randomUUID(),
    });
    if (hold.lapsed) {
      await sql`update credits.reservations set expires_at = now() - interval '1 second'
                 where id = ${placed.reservationId}::uuid`.execute(db);
    }
  }
  if (setup.lapseLots) {
    await sql`update credits.lots set expires_at = now() - interval '1 second'
               where account_kind = 'guild' and account_id = ${guildId} and expires_at is not null`.execute(
      db,
    );
    await sql`update credits.guild_pools set next_lot_expiry = now() - interval '1 second'
               where organization_id = ${guildId}`.execute(db);
  }
  return guildId;
}

/** Everything the scenario left on the pool, its ids and the guild id replaced by stable names. */
async function stateOf(guildId: string) {
  const { db } = server.deps;
  const lots = await db
    .selectFrom('credits.lots')
    .select(['id', 'amount', 'remaining', 'pinned', 'expired', 'priority'])
    .where('account_kind', '=', 'guild')
    .where('account_id', '=', guildId)
    .orderBy('priority')
    .orderBy(sql`expires_at nulls last`)
    .orderBy('created_at')
    .orderBy('amount')
    .execute();
  const ledger = await db
    .selectFrom('credits.guild_transactions')
    .select([
      'id',
      'user_id',
      'type',
      'amount',
      'balance_before',
      'balance_after',
      'available_after',
      'app_id',
      'description',
      'metadata',
      'idempotency_key',
      'request_hash',
      'lot_ids',
      'lot_amounts',
    ])
    .where('organization_id', '=', guildId)
    .where('type', '<>', 'funding')
    .orderBy('balance_before', 'desc')
    .orderBy('amount')
    .execute();
  const names = new Map<string, string>([[guildId, 'G']]);
  for (const [i, lot] of lots.entries()) names.set(lot.id, `lot${i}`);
  for (const [i, row] of ledger.entries()) names.set(row.id, `tx${i}`);
  const pool = await db
    .selectFrom('credits.guild_pools')
    .select(['balance', 'reserved', 'total_funded', 'total_spent', 'total_expired'])
    .where('organization_id', '=', guildId)
    .executeTakeFirst();
  const holds = await db
    .selectFrom('credits.reservations')
    .select(['id', 'user_id', 'amount', 'status'])
    .where('organization_id', '=', guildId)
    .orderBy('amount')
    .execute();
  for (const [i, hold] of holds.entries()) names.set(hold.id, `hold${i}`);
  const members = await db
    .selectFrom('credits.guild_member_usage')
    .select(['user_id', 'spent'])
    .where('organization_id', '=', guildId)
    .orderBy('user_id')
    .execute();
  const usage = await db
    .selectFrom('credits.usage_stats')
    .select(['user_id', 'app_id', 'credits_used'])
    .where('user_id', 'like', `${guildId}:%`)
    .orderBy('user_id')
    .execute();
  const refusals = await db
    .selectFrom('credits.refusals')
    .select(['user_id', 'idempotency_key', 'request_hash', 'reason', 'details'])
    .where('key_space', '=', 'guild')
    .where('organization_id', '=', guildId)
    .orderBy('idempotency_key')
    .execute();
  const events = (
    await db
      .selectFrom('credits.events')
      .select(['type', 'user_id', 'data'])
      .where('guild_id', '=', guildId)
      .orderBy('seq')
      .execute()
  ).map(({ data, ...event }) => {
    // times: when this path's setup ran (it backdates lots and holds)
    const untimed = Object.entries(data as Record<string, unknown>).filter(([key]) => !key.endsWith('At'));
    return { ...event, data: Object.fromEntries(untimed) };
  });
  // ids → names, everywhere (the event data name ledger entries and lots)
  const named = JSON.parse(
    JSON.stringify({ lots, ledger, pool, holds, members, usage, refusals, events }).replace(
      /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|pool-diff-[0-9a-f-]{36}/g,
      (id) => names.get(id) ?? id,
    ),
  );
  return named as {
    lots: unknown[];
    ledger: { id: string; type: string; user_id: string; amount: number; idempotency_key: string | null }[];
    pool: unknown;
    holds: unknown[];
    members: unknown[];
    usage: unknown[];
    refusals: { user_id: string; idempotency_key: string; reason: string; details: unknown }[];
    events: { type: string; data: Record<string, unknown> }[];
  };
}

async function throughEveryPath(setup: PoolSetup, items: Spend[]) {
  const outcomes = {} as Record<Path, { answers: string[]; state: Awaited<ReturnType<typeof stateOf>> }>;
  for (const path of PATHS) {
    const guildId = await pool(setup);
    const answers = await run(path, guildId, items);
    outcomes[path] = { answers, state: await stateOf(guildId) };
  }
  return outcomes;
}

describe('single, batch and coalesced pool spends agree', () => {
  it('replay, conflict, insufficient, daily and monthly caps reached exactly, holds open and lapsed, lapsed lots, a key twice in one call', async () => {
    const setup: PoolSetup = {
      // pool lots: 40 expiring (burned first, lapses before the scenario), 140 never expiring
      grants: [{ amount: 140 }, { amount: 40, expiresInHours: 1 }],
      limits: {
        a: { dailyLimit: 25, monthlyLimit: 40 },
        b: { dailyLimit: 30, monthlyLimit: null },
        d: { dailyLimit: null, monthlyLimit: 12 },
      },
      // both pin the expiring lot; b's open hold of 10 counts against b's cap
      holds: [
        { member: 'b', amount: 10, lapsed: false },
        { member: 'b', amount: 5, lapsed: true },
      ],
      lapseLots: true,
    };
    // 180 funded; the lapsed hold of 5 is returned and the expiring lot's 30 unpinned credits expire before
    // the first check: 150 in the pool, 10 held, 140 spendable
    const items = [
      spend('a', 10, 'k1'), // ok, 130 left
      spend('a', 10, 'k1'), // replay
      spend('a', 10, 'k1', 'other'), // conflict
      spend('b', 20, 'k2'), // 10 held + 20 = b's daily cap: ok, limit reached
      spend('b', 1, 'k3'), // daily cap
      spend('a', 15, 'k4'), // 25 = a's daily cap: ok, limit reached
      spend('a', 1, 'k5'), // daily cap
      spend('d', 5, 'k9'), // ok
      spend('d', 7, 'k10'), // 12 = d's monthly cap: ok, limit reached
      spend('d', 1, 'k11'), // monthly cap
      spend('c', 90, 'k6'), // insufficient (83)
      spend('c', 83, 'k7'), // ok, 0 left
      spend('c', 83, 'k7'), // the same key again in the same call: replay
      spend('c', 1, 'k8'), // insufficient (0)
      spend('c', 90, 'k6'), // the refused key: its recorded refusal again (83), a replay
      spend('c', 1, undefined), // keyless, insufficient
    ];
    const outcomes = await throughEveryPath(setup, items);
    expect(outcomes.single.answers).toEqual([
      'ok:130',
      'replay:130',
      'IDEMPOTENCY_CONFLICT',
      'ok:110',
      'DAILY_LIMIT_EXCEEDED:30',
      'ok:95',
      'DAILY_LIMIT_EXCEEDED:25',
      'ok:90',
      'ok:83',
      'MONTHLY_LIMIT_EXCEEDED:12',
      'INSUFFICIENT_POOL_CREDITS:83',
      'ok:0',
      'replay:0',
      'INSUFFICIENT_POOL_CREDITS:0',
      'replayed INSUFFICIENT_POOL_CREDITS:83',
      'INSUFFICIENT_POOL_CREDITS:0',
    ]);
    const { state } = outcomes.single;
    expect(state.ledger.map((row) => [row.type, row.amount, row.idempotency_key])).toEqual([
      ['expiry', -30, expect.any(String)],
      ['usage', -10, 'k1'],
      ['usage', -20, 'k2'],
      ['usage', -15, 'k4'],
      ['usage', -5, 'k9'],
      ['usage', -7, 'k10'],
      ['usage', -83, 'k7'],
    ]);
    expect(state.holds).toEqual([
      { id: 'hold0', user_id: 'G:b', amount: 5, status: 'expired' },
      { id: 'hold1', user_id: 'G:b', amount: 10, status: 'open' },
    ]);
    expect(state.events.filter((event) => event.type === 'guild.member.limit_reached')).toEqual([
      expect.objectContaining({
        data: expect.objectContaining({ userId: 'G:b', window: 'daily', used: 30 }),
      }),
      expect.objectContaining({
        data: expect.objectContaining({ userId: 'G:a', window: 'daily', used: 25 }),
      }),
      expect.objectContaining({
        data: expect.objectContaining({ userId: 'G:d', window: 'monthly', used: 12 }),
      }),
    ]);
    expect(state.events.map((event) => event.type)).toContain('credits.expired');
    expect(outcomes.batch.answers).toEqual(outcomes.single.answers);
    expect(outcomes.coalesced.answers).toEqual(outcomes.single.answers);
    expect(outcomes.batch.state).toEqual(state);
    expect(outcomes.coalesced.state).toEqual(state);
  });

  it('internal.credits.useBatch with guild items: the answers and writes of the single path, beside personal items and a non-member', async () => {
    const setup: PoolSetup = {
      grants: [{ amount: 140 }, { amount: 40, expiresInHours: 1 }],
      limits: { a: { dailyLimit: 25, monthlyLimit: 40 }, d: { dailyLimit: null, monthlyLimit: 12 } },
      holds: [
        { member: 'b', amount: 10, lapsed: false },
        { member: 'b', amount: 5, lapsed: true },
      ],
      lapseLots: true,
    };
    // batch items are keyed
    const items = [
      spend('a', 10, 'k1'),
      spend('a', 10, 'k1'), // replay
      spend('a', 10, 'k1', 'other'), // conflict
      spend('a', 15, 'k4'), // a's daily cap reached
      spend('a', 1, 'k5'), // daily cap
      spend('d', 12, 'k10'), // d's monthly cap reached
      spend('c', 200, 'k6'), // insufficient
      spend('c', 90, 'k7'),
      spend('c', 90, 'k7'), // the same key again in the same call: replay
      spend('c', 200, 'k6'), // the refused key: its recorded refusal again
      spend('b', 50, 'k8'), // insufficient
    ];
    const single = await pool(setup);
    const singleAnswers = await run('single', single, items);
    expect(singleAnswers).toEqual([
      'ok:130',
      'replay:130',
      'IDEMPOTENCY_CONFLICT',
      'ok:115',
      'DAILY_LIMIT_EXCEEDED:25',
      'ok:103',
      'INSUFFICIENT_POOL_CREDITS:103',
      'ok:13',
      'replay:13',
      'replayed INSUFFICIENT_POOL_CREDITS:103',
      'INSUFFICIENT_POOL_CREDITS:13',
    ]);

    const viaBatch = await pool(setup);
    const personal = await server.fundedUser(10);
    const { results } = await server.internalClient().internal.credits.useBatch.mutate({
      items: [
        { userId: personal.id, amount: 3, appId: 'chat', description: 'mine', idempotencyKey: 'p1' },
        ...items.map((item) => inputOf(viaBatch, item)),
        inputOf(viaBatch, spend('not-a-member', 1, 'kz')),
      ],
    });
    expect(results[0]).toMatchObject({ idempotencyKey: 'p1', ok: true, balance: 7 });
    expect(results.at(-1)).toMatchObject({ ok: false, error: { reason: 'NOT_A_GUILD_MEMBER' } });
    // What a batch item says: the balance left, or the refusal's reason (no replay mark, no details).
    const coarse = (answer: string) =>
      /^(ok|replay):/.test(answer)
        ? answer.replace(/^replay:/, 'ok:')
        : answer.replace(/^replayed /, '').replace(/:\d+$/, '');
    expect(
      results.slice(1, -1).map((result) => (result.ok ? `ok:${result.balance}` : result.error.reason)),
    ).toEqual(singleAnswers.map(coarse));
    expect(await stateOf(viaBatch)).toEqual(await stateOf(single));
  });

  it('nothing posted: the return of lapsed holds and the expiry of lapsed lots are undone, as a refused spend rolls them back', async () => {
    const setup: PoolSetup = {
      grants: [{ amount: 140 }, { amount: 40, expiresInHours: 1 }],
      limits: { b: { dailyLimit: 0, monthlyLimit: null } },
      holds: [
        { member: 'a', amount: 10, lapsed: false },
        { member: 'a', amount: 5, lapsed: true },
      ],
      lapseLots: true,
    };
    // keyless: a keyed refusal is recorded and committed with the return (the next test)
    const items = [
      spend('c', 141, undefined), // 140 spendable once the hold is returned and the lot expired: insufficient
      spend('b', 1, undefined), // a cap of 0
      spend('c', 141, undefined),
    ];
    const outcomes = await throughEveryPath(setup, items);
    expect(outcomes.single.answers).toEqual([
      'INSUFFICIENT_POOL_CREDITS:140',
      'DAILY_LIMIT_EXCEEDED:0',
      'INSUFFICIENT_POOL_CREDITS:140',
    ]);
    const { state } = outcomes.single;
    expect(state.ledger).toEqual([]);
    expect(state.holds).toEqual([
      { id: 'hold0', user_id: 'G:a', amount: 5, status: 'open' },
      { id: 'hold1', user_id: 'G:a', amount: 10, status: 'open' },
    ]);
    expect(state.events).toEqual([]);
    expect(outcomes.batch.answers).toEqual(outcomes.single.answers);
    expect(outcomes.coalesced.answers).toEqual(outcomes.single.answers);
    expect(outcomes.batch.state).toEqual(state);
    expect(outcomes.coalesced.state).toEqual(state);
  });

  it('keyed refusals take their keys alike: recorded with the return of lapsed holds and lots, answered again in the same call, a CONFLICT for another payload', async () => {
    const setup: PoolSetup = {
      grants: [{ amount: 140 }, { amount: 40, expiresInHours: 1 }],
      limits: { b: { dailyLimit: 0, monthlyLimit: null }, d: { dailyLimit: null, monthlyLimit: 5 } },
      holds: [
        { member: 'a', amount: 10, lapsed: false },
        { member: 'a', amount: 5, lapsed: true },
      ],
      lapseLots: true,
    };
    const items = [
      spend('c', 141, 'k1'), // 140 spendable once the hold is returned and the lot expired: insufficient
      spend('b', 1, 'k2'), // a cap of 0
      spend('d', 6, 'k3'), // monthly cap
      spend('c', 141, 'k1'), // the refused key again: its refusal, a replay
      spend('b', 1, 'k2', 'other'), // the refused key, another payload
      spend('d', 6, 'k3'),
    ];
    const outcomes = await throughEveryPath(setup, items);
    expect(outcomes.single.answers).toEqual([
      'INSUFFICIENT_POOL_CREDITS:140',
      'DAILY_LIMIT_EXCEEDED:0',
      'MONTHLY_LIMIT_EXCEEDED:0',
      'replayed INSUFFICIENT_POOL_CREDITS:140',
      'IDEMPOTENCY_CONFLICT',
      'replayed MONTHLY_LIMIT_EXCEEDED:0',
    ]);
    const { state } = outcomes.single;
    // the single path commits a recorded refusal with what its transaction returned on the way
    expect(state.ledger.map((row) => [row.type, row.amount])).toEqual([['expiry', -30]]);
    expect(state.holds).toEqual([
      { id: 'hold0', user_id: 'G:a', amount: 5, status: 'expired' },
      { id: 'hold1', user_id: 'G:a', amount: 10, status: 'open' },
    ]);
    expect(state.refusals).toEqual([
      expect.objectContaining({
        user_id: 'G:c',
        idempotency_key: 'k1',
        reason: 'INSUFFICIENT_POOL_CREDITS',
        details: { required: 141, available: 140 },
      }),
      expect.objectContaining({
        user_id: 'G:b',
        idempotency_key: 'k2',
        reason: 'DAILY_LIMIT_EXCEEDED',
        details: { limit: 0, spent: 0, requested: 1 },
      }),
      expect.objectContaining({
        user_id: 'G:d',
        idempotency_key: 'k3',
        reason: 'MONTHLY_LIMIT_EXCEEDED',
        details: { limit: 5, spent: 0, requested: 6 },
      }),
    ]);
    expect(outcomes.batch.answers).toEqual(outcomes.single.answers);
    expect(outcomes.coalesced.answers).toEqual(outcomes.single.answers);
    expect(outcomes.batch.state).toEqual(state);
    expect(outcomes.coalesced.state).toEqual(state);
  });

  it('a refusal recorded by a batch stops the late original: after a top-up the single path and the coalescer answer it again and charge nothing', async () => {
    const { db } = server.deps;
    const guildId = await pool({ grants: [{ amount: 50 }], limits: {}, holds: [], lapseLots: false });
    const refused = inputOf(guildId, spend('a', 60, `late-${randomUUID()}`));
    const [first] = await spendFromPoolTogether(db, [refused]);
    expect(first).toMatchObject({ ok: false, error: { reason: 'INSUFFICIENT_POOL_CREDITS' } });
    // the pool could pay now: the late original (spendFromPool writes without asking the key first) must not
    const owner = memberId(guildId, 'owner');
    await server.internalClient().internal.credits.grant.mutate({
      userId: owner,
      amount: 100,
      reason: 'funds',
      idempotencyKey: randomUUID(),
    });
    await fundPool(server.deps, owner, { guildId, amount: 100 });
    const late = await Promise.allSettled([spendFromPool(db, refused)]);
    expect(late.map(answerOf)).toEqual(['replayed INSUFFICIENT_POOL_CREDITS:50']);
    const again = await Promise.allSettled([
      coalescedPoolSpender(db)(refused),
      coalescedPoolSpender(db)({ ...refused, amount: 1 }),
    ]);
    expect(again.map(answerOf)).toEqual(['replayed INSUFFICIENT_POOL_CREDITS:50', 'IDEMPOTENCY_CONFLICT']);
    const state = await stateOf(guildId);
    expect(state.ledger).toEqual([]);
    expect(state.refusals).toHaveLength(1);
  });

  it('lot portions split across lots, keyless spends of one payload, a cap of 0 and caps reached twice in one call', async () => {
    const setup: PoolSetup = {
      // three lots of 10 in burn order: expiring in 1 h, in 2 h, never
      grants: [{ amount: 10 }, { amount: 10, expiresInHours: 2 }, { amount: 10, expiresInHours: 1 }],
      limits: { a: { dailyLimit: 9, monthlyLimit: 9 }, b: { dailyLimit: 0, monthlyLimit: null } },
      holds: [],
      lapseLots: false,
    };
    const items = [
      spend('c', 4, undefined), // lot0: 4
      spend('c', 4, undefined), // a second spend, not a replay
      spend('a', 9, 'a1'), // lot0: 2, lot1: 7; a's daily and monthly caps both reached
      spend('b', 1, 'b1'), // a cap of 0: never
      spend('a', 1, 'a2'), // daily cap
      spend('c', 8, 'c1'), // lot1: 3, lot2: 5
      spend('c', 6, 'c2'), // insufficient (5)
      spend('c', 5, undefined), // lot2: 5, 0 left
    ];
    const outcomes = await throughEveryPath(setup, items);
    expect(outcomes.single.answers).toEqual([
      'ok:26',
      'ok:22',
      'ok:13',
      'DAILY_LIMIT_EXCEEDED:0',
      'DAILY_LIMIT_EXCEEDED:9',
      'ok:5',
      'INSUFFICIENT_POOL_CREDITS:5',
      'ok:0',
    ]);
    const { state } = outcomes.single;
    expect(
      (state.ledger as unknown as { lot_ids: string[]; lot_amounts: number[] }[]).map((row) => [
        row.lot_ids,
        row.lot_amounts,
      ]),
    ).toEqual([
      [['lot0'], [4]],
      [['lot0'], [4]],
      [
        ['lot0', 'lot1'],
        [2, 7],
      ],
      [
        ['lot1', 'lot2'],
        [3, 5],
      ],
      [['lot2'], [5]],
    ]);
    expect(state.events.map((event) => event.data.window)).toEqual(['daily', 'monthly']);
    expect(outcomes.batch.answers).toEqual(outcomes.single.answers);
    expect(outcomes.coalesced.answers).toEqual(outcomes.single.answers);
    expect(outcomes.batch.state).toEqual(state);
    expect(outcomes.coalesced.state).toEqual(state);
  });

  it('several pools and an unknown guild in one call: each pool decided on its own', async () => {
    const setup: PoolSetup = { grants: [{ amount: 10 }], limits: {}, holds: [], lapseLots: false };
    const [first, second] = [await pool(setup), await pool(setup)];
    const input = (guildId: string, amount: number, key?: string) =>
      inputOf(guildId, spend('a', amount, key));
    const outcomes = await spendFromPoolTogether(server.deps.db, [
      input(second, 6, 'x'),
      input(first, 6, 'x'), // the same key in another pool is another key
      input('no-such-guild', 1),
      input(first, 6), // insufficient (4)
      input(second, 4),
    ]);
    expect(
      outcomes.map((outcome) =>
        answerOf(
          outcome.ok
            ? { status: 'fulfilled', value: outcome.value }
            : { status: 'rejected', reason: outcome.error },
        ),
      ),
    ).toEqual(['ok:4', 'ok:4', 'GUILD_POOL_NOT_FOUND', 'INSUFFICIENT_POOL_CREDITS:4', 'ok:0']);
  });
});

describe('parallel requests on one pool with caps', () => {
  it('50 parallel useBatch calls carrying one guild item key: posted once, every call answers it alike', async () => {
    const { db } = server.deps;
    const guildId = await pool({ grants: [{ amount: 1000 }], limits: {}, holds: [], lapseLots: false });
    const internal = server.internalClient().internal;
    const item = (member: string, key: string) => ({
      ...inputOf(guildId, spend(member, 2, key)),
      description: 'parallel batch',
    });
    // each call: the shared key first, then one key of its own (the call is a batch of two)
    const answers = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        internal.credits.useBatch.mutate({ items: [item('a', 'shared'), item('b', `own-${i}`)] }),
      ),
    );
    const shared = answers.map(({ results }) => results[0]!);
    expect(shared.every((result) => result.ok)).toBe(true);
    const ids = new Set(shared.map((result) => (result.ok ? result.transactionId : undefined)));
    expect(ids.size).toBe(1);
    expect(answers.every(({ results }) => results[1]!.ok)).toBe(true);
    const rows = await db
      .selectFrom('credits.guild_transactions')
      .select(['id', 'idempotency_key', 'amount'])
      .where('organization_id', '=', guildId)
      .where('type', '=', 'usage')
      .execute();
    expect(rows.filter((row) => row.idempotency_key === 'shared').map((row) => row.id)).toEqual([...ids]);
    expect(rows).toHaveLength(51);
    const { balance } = await db
      .selectFrom('credits.guild_pools')
      .select('balance')
      .where('organization_id', '=', guildId)
      .executeTakeFirstOrThrow();
    expect(balance).toBe(1000 - 51 * 2);
    await expectLedgerConsistent(db);
  });

  it('64 at once through internal.credits.use: Σ guild ledger = pool, no member past a cap, each cap reached once', async () => {
    const { db } = server.deps;
    const guildId = await pool({
      grants: [{ amount: 1000 }],
      limits: {
        a: { dailyLimit: 20, monthlyLimit: null },
        b: { dailyLimit: null, monthlyLimit: 35 },
        c: { dailyLimit: 50, monthlyLimit: 50 },
      },
      holds: [],
      lapseLots: false,
    });
    const internal = server.internalClient().internal;
    const members = ['a', 'b', 'c', 'd'];
    const calls = Array.from({ length: 256 }, (_, i) => ({
      member: members[i % members.length]!,
      amount: 1 + (i % 3),
      key: i % 5 === 0 ? `same-${i % 10}` : `call-${i}`,
    }));
    // 64 connections' worth at a time, four waves
    const settled: PromiseSettledResult<unknown>[] = [];
    for (let wave = 0; wave < 4; wave++) {
      settled.push(
        ...(await Promise.allSettled(
          calls.slice(wave * 64, wave * 64 + 64).map((call) =>
            internal.credits.use.mutate({
              userId: memberId(guildId, call.member),
              guildId,
              amount: call.amount,
              appId: 'chat',
              description: 'parallel',
              idempotencyKey: call.key,
            }),
          ),
        )),
      );
    }
    const refusals = settled
      .filter((result): result is PromiseRejectedResult => result.status === 'rejected')
      .map(
        (result) => (result.reason as { data?: { reason?: string } }).data?.reason ?? String(result.reason),
      );
    expect(new Set(refusals)).toEqual(
      new Set(refusals.filter((r) => /^(DAILY|MONTHLY)_LIMIT_EXCEEDED$|^IDEMPOTENCY_CONFLICT$/.test(r))),
    );
    await expectLedgerConsistent(db);
    const spent = await sql<{ user_id: string; spent: number; rows: number }>`
      select user_id, -sum(amount)::int8 as spent, count(*)::int as rows
        from credits.guild_transactions where organization_id = ${guildId} and type = 'usage'
       group by user_id order by user_id`.execute(db);
    const byMember = Object.fromEntries(spent.rows.map((row) => [row.user_id.split(':')[1], row]));
    // the caps: reached exactly (every call is 1–3 and there are far more calls than any cap allows)
    expect(byMember.a!.spent).toBeLessThanOrEqual(20);
    expect(byMember.b!.spent).toBeLessThanOrEqual(35);
    expect(byMember.c!.spent).toBeLessThanOrEqual(50);
    const counters = await db
      .selectFrom('credits.guild_member_usage')
      .select(['user_id', 'spent'])
      .where('organization_id', '=', guildId)
      .execute();
    for (const counter of counters) {
      expect(counter.spent).toBe(byMember[counter.user_id.split(':')[1]!]!.spent);
    }
    const reached = await sql<{ user_id: string; win: string; n: number; used: number }>`
      select user_id, data->>'window' as win, count(*)::int as n, max((data->>'used')::int8) as used
        from credits.events where guild_id = ${guildId} and type = 'guild.member.limit_reached'
       group by user_id, data->>'window' order by user_id, win`.execute(db);
    // a cap is reached exactly when the member's spends add up to it; then once, never twice
    const expected = [
      ['a', 'daily', 20],
      ['b', 'monthly', 35],
      ['c', 'daily', 50],
      ['c', 'monthly', 50],
    ].filter(([member, , cap]) => byMember[member as string]!.spent === cap);
    expect(reached.rows.map((row) => [row.user_id.split(':')[1], row.win, row.used])).toEqual(expected);
    expect(reached.rows.every((row) => row.n === 1)).toBe(true);
    // On Postgres they were coalesced: fewer commits than ledger rows. (Embedded PGlite answers a query
    // without waiting for I/O, so a request there is done before the next one is read: nothing to coalesce.)
    if (process.env.DATABASE_URL) {
      const rows = spent.rows.reduce((sum, row) => sum + row.rows, 0);
      const commits = await sql<{ n: number }>`
        select count(distinct xmin::text)::int as n from credits.guild_transactions
         where organization_id = ${guildId} and type = 'usage'`.execute(db);
      expect(commits.rows[0]!.n).toBeLessThan(rows);
    }
  });
});

/**
 * Fails the second call of credits.pool_use_batch (the first is the lone first spend, the second the batch of
 * those that waited for it): 'after' lets it run (and commit) and then throws what node-pg throws when the
 * connection drops before the answer; 'before' throws a Postgres ERROR response instead of sending it (the
 * batch is certainly not written).
 */
function failPoolBatch(when: 'after' | 'before'): KyselyPlugin & { failed: number } {
  const doomed = new WeakSet<QueryId>();
  let calls = 0;
  const plugin = {
    failed: 0,
    transformQuery({ node, queryId }: { node: RootOperationNode; queryId: QueryId }) {
      const text = node.kind === 'RawNode' ? node.sqlFragments.join('?') : '';
      if (text.includes('credits.pool_use_batch(') && ++calls === 2) {
        plugin.failed++;
        if (when === 'before') {
          throw Object.assign(new Error('deadlock detected'), { severity: 'ERROR', code: '40P01' });
        }
        doomed.add(queryId);
      }
      return node;
    },
    async transformResult<T>({ result, queryId }: { result: T; queryId: QueryId }): Promise<T> {
      if (doomed.has(queryId)) throw new Error('Connection terminated unexpectedly');
      return result;
    },
  };
  return plugin;
}

describe('a coalesced pool batch that fails (issue 13)', () => {
  const setup: PoolSetup = { grants: [{ amount: 100 }], limits: {}, holds: [], lapseLots: false };

  it('lost after its commit: never run again, every caller of the batch hears OUTCOME_UNKNOWN', async () => {
    const guildId = await pool(setup);
    const fault = failPoolBatch('after');
    const spendCoalesced = coalescedPoolSpender(server.deps.db.withPlugin(fault));
    const outcomes = await Promise.allSettled(
      [1, 2, 3, 4, 5].map((amount) => spendCoalesced(inputOf(guildId, spend('a', amount, undefined)))),
    );
    expect(fault.failed).toBe(1);
    expect(outcomes[0]).toMatchObject({ status: 'fulfilled' });
    for (const outcome of outcomes.slice(1)) {
      expect((outcome as PromiseRejectedResult).reason).toBeInstanceOf(OutcomeUnknownError);
    }
    // the batch did commit: each spend exactly once, none a second time by a fallback
    const { ledger } = await stateOf(guildId);
    expect(ledger.map((row) => row.amount).sort()).toEqual([-1, -2, -3, -4, -5]);
  });

  it('refused by Postgres (rolled back): each spend takes the single path on its own', async () => {
    const guildId = await pool(setup);
    const fault = failPoolBatch('before');
    const spendCoalesced = coalescedPoolSpender(server.deps.db.withPlugin(fault));
    const results = await Promise.all(
      [1, 2, 3, 4, 5].map((amount) => spendCoalesced(inputOf(guildId, spend('a', amount, undefined)))),
    );
    expect(fault.failed).toBe(1);
    expect(new Set(results.map((result) => result.transactionId)).size).toBe(5);
    const { ledger } = await stateOf(guildId);
    expect(ledger.map((row) => row.amount).sort()).toEqual([-1, -2, -3, -4, -5]);
  });
});
