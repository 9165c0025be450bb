import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expireDueAccountLots } from '../src/domain/credits/lots.ts';
import { lotExpiryJob } from '../src/jobs/lot-expiry.ts';
import { failure } from './helpers/errors.ts';
import { expectHoldsConsistent, expectLedgerConsistent } from './helpers/invariants.ts';
import { type GrantExtra, grantLot } from './helpers/lots.ts';
import { type Answer, type CallOptions, restCaller } from './helpers/rest.ts';
import { type Client, newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';
import { TestStripeServer } from './helpers/stripe-server.ts';

// Credit lots (issue 15) through the real server: the burn order, what the reads show, expiry (on access, by
// the sweep, under holds and refunds), moving credits (pool funding, gifts) never gaining a later expiry or a
// better category, purchases of packages with a validity, bad input and the REST routes. Expiry runs on the
// real clock: the lots of the expiry block are granted to expire a few seconds ahead and the block waits once.
// The closing reconcile (server.close) includes the lot checks.

const DAY_MS = 86_400_000;

let server: TestServer;
let stripe: TestStripeServer;
let call: (route: string, options?: CallOptions) => Promise<Answer>;

beforeAll(async () => {
  stripe = await TestStripeServer.start();
  // The lot sweep is off, so every expiry seen before the sweep test is the check on access; the hold and
  // gift sweeps are off too so that nothing but the calls below moves credits.
  // Calls run in process (helpers/server.ts: Transport), the concurrent ones over HTTP.
  server = await startTestServer(
    {
      LOT_EXPIRY_SWEEP_SECONDS: '0',
      RESERVATION_SWEEP_SECONDS: '3600',
      GIFT_EXPIRY_SWEEP_SECONDS: '0',
      STRIPE_SECRET_KEY: stripe.secretKey,
      STRIPE_WEBHOOK_SECRET: stripe.webhookSecret,
      STRIPE_API_URL: stripe.url,
    },
    { transport: 'in-process' },
  );
  ({ call } = await restCaller(server));
});
afterAll(async () => {
  await expectLedgerConsistent(server.deps.db);
  await expectHoldsConsistent(server.deps.db);
  await server?.close();
  await stripe?.close();
});

const internal = () => server.internalClient().internal.credits;
const service = { serviceKey: SERVICE_KEY };

const grant = (userId: string, amount: number, extra: GrantExtra = {}) =>
  grantLot(server, userId, amount, extra);

async function lotsOf(userId: string, includeSpent?: boolean) {
  return (await internal().lots.query({ userId, ...(includeSpent === undefined ? {} : { includeSpent }) }))
    .items;
}

async function balanceOf(userId: string) {
  return internal().balance.query({ userId });
}

async function use(userId: string, amount: number) {
  return internal().use.mutate({ userId, amount, appId: 'lots', description: 'lot use' });
}

/** A user's ledger rows, oldest first, with the lot portions each names. */
async function ledger(userId: string) {
  const { rows } = await sql<{
    id: string;
    type: string;
    amount: number;
    lot_ids: string[] | null;
    lot_amounts: number[] | null;
    idempotency_key: string | null;
  }>`select id, type, amount, lot_ids, lot_amounts, idempotency_key from credits.transactions
      where user_id = ${userId} order by created_at, amount desc`.execute(server.deps.db);
  return rows;
}

async function guildLedger(guildId: string) {
  const { rows } = await sql<{
    type: string;
    amount: number;
    lot_ids: string[] | null;
    lot_amounts: number[] | null;
  }>`
    select type, amount, lot_ids, lot_amounts from credits.guild_transactions
     where organization_id = ${guildId} order by created_at, amount desc`.execute(server.deps.db);
  return rows;
}

const expiryRows = async (userId: string) => (await ledger(userId)).filter((row) => row.type === 'expiry');

/** The portions of a ledger row as credits.transaction names them. */
const portions = (row: { lot_ids: string[] | null; lot_amounts: number[] | null }) =>
  (row.lot_ids ?? []).map((lotId, i) => ({ lotId, amount: Number(row.lot_amounts![i]) }));

/** Whether two instants are within `ms` of each other. */
function near(actual: Date | null | undefined, expected: number, ms = 5000) {
  expect(actual).toBeInstanceOf(Date);
  expect(Math.abs(actual!.getTime() - expected)).toBeLessThan(ms);
}

describe('one key, 50 parallel calls', () => {
  it('a grant with an expiry makes one ledger row and one lot; a refund returns to its lots once', async () => {
    server.httpForThisTest(); // real parallel requests
    const user = newUser();
    const grantRequest = {
      userId: user.id,
      amount: 40,
      reason: 'parallel grant',
      idempotencyKey: `parallel-grant-${randomUUID()}`,
      expiresInDays: 10,
      priority: 5,
    };
    const grants = await Promise.all(Array.from({ length: 50 }, () => internal().grant.mutate(grantRequest)));
    expect(new Set(grants.map((answer) => answer.transactionId)).size).toBe(1);
    expect(new Set(grants.map((answer) => answer.balance))).toEqual(new Set([40]));
    const spent = await use(user.id, 25);
    const refundRequest = {
      userId: user.id,
      transactionId: spent.transactionId,
      amount: 10,
      description: 'parallel refund',
      idempotencyKey: `parallel-refund-${randomUUID()}`,
    };
    const refunds = await Promise.all(
      Array.from({ length: 50 }, () => internal().refund.mutate(refundRequest)),
    );
    expect(new Set(refunds.map((answer) => answer.transactionId)).size).toBe(1);
    expect(new Set(refunds.map((answer) => answer.balance))).toEqual(new Set([25]));
    const rows = await ledger(user.id);
    expect(rows.map((row) => [row.type, row.amount])).toEqual([
      ['grant', 40],
      ['usage', -25],
      ['refund', 10],
    ]);
    // The refund went back to the one lot the grant made: no second lot, 25 left of its 40.
    const lots = await lotsOf(user.id, true);
    expect(lots.map((lot) => [lot.amount, lot.remaining, lot.priority])).toEqual([[40, 25, 5]]);
    expect(await balanceOf(user.id)).toMatchObject({ balance: 25 });
    await expectLedgerConsistent(server.deps.db);
  });
});

describe('the burn order', () => {
  it('priority first, then the soonest expiry (never-expiring last), then the oldest; a use names its lots', async () => {
    const user = newUser();
    const now = Date.now();
    const a = await grant(user.id, 10); // promotional, priority 10, never expires
    const b = await grant(user.id, 10, { expiresInDays: 10 });
    const c = await grant(user.id, 10, { expiresInDays: 5 });
    const d = await grant(user.id, 10, { category: 'paid' }); // priority 50
    const e = await grant(user.id, 10, { priority: 5, expiresInDays: 20 });
    const f = await grant(user.id, 10); // like a, but younger
    const g = await grant(user.id, 10, { category: 'paid', expiresInDays: 1 });

    const order = [e, c, b, a, f, g, d].map((lot) => lot.lotId);
    const lots = await lotsOf(user.id);
    expect(lots.map((lot) => lot.id)).toEqual(order);
    expect(lots.find((lot) => lot.id === a.lotId)).toMatchObject({
      source: 'grant',
      category: 'promotional',
      priority: 10,
      amount: 10,
      remaining: 10,
      held: 0,
      expired: 0,
      expiresAt: null,
    });
    expect(lots.find((lot) => lot.id === d.lotId)).toMatchObject({ category: 'paid', priority: 50 });
    expect(lots.find((lot) => lot.id === e.lotId)).toMatchObject({ category: 'promotional', priority: 5 });
    near(lots.find((lot) => lot.id === b.lotId)?.expiresAt, now + 10 * DAY_MS);
    near(lots.find((lot) => lot.id === g.lotId)?.expiresAt, now + DAY_MS);

    const spent = await use(user.id, 45);
    expect(spent.balance).toBe(25);
    const entry = await internal().transaction.query({ userId: user.id, transactionId: spent.transactionId });
    expect(entry).toMatchObject({ id: spent.transactionId, type: 'usage', amount: -45 });
    expect(entry.lots).toEqual([
      { lotId: e.lotId, amount: 10 },
      { lotId: c.lotId, amount: 10 },
      { lotId: b.lotId, amount: 10 },
      { lotId: a.lotId, amount: 10 },
      { lotId: f.lotId, amount: 5 },
    ]);
    // The user sees the same entry with its lots.
    const client = await server.userClient(user);
    expect(await client.credits.transaction.query({ transactionId: spent.transactionId })).toEqual(entry);

    // Spent lots leave the list unless asked for; the order stays the burn order.
    expect((await client.credits.lots.query()).items.map((lot) => [lot.id, lot.remaining])).toEqual([
      [f.lotId, 5],
      [g.lotId, 10],
      [d.lotId, 10],
    ]);
    const all = (await client.credits.lots.query({ includeSpent: true })).items;
    expect(all.map((lot) => lot.id)).toEqual(order);
    expect(all.map((lot) => lot.remaining)).toEqual([0, 0, 0, 0, 5, 10, 10]);

    // Someone else's entry is not found.
    const other = await server.userClient();
    const missing = await failure(other.credits.transaction.query({ transactionId: spent.transactionId }));
    expect(missing.data).toMatchObject({ code: 'NOT_FOUND' });
  });

  it('credits.balance: spendable by category and what expires within EXPIRY_NOTICE_DAYS (30)', async () => {
    const user = newUser();
    const client = await server.userClient(user);
    expect(await client.credits.balance.query()).toMatchObject({
      balance: 0,
      byCategory: { paid: 0, promotional: 0 },
      expiringSoon: null,
    });
    await grant(user.id, 30, { category: 'paid' });
    const soon = await grant(user.id, 20, { expiresInDays: 10 });
    await grant(user.id, 5, { expiresInDays: 40 });
    const sooner = await grant(user.id, 7, { category: 'paid', expiresInDays: 3 });
    const lots = await lotsOf(user.id);
    const expiresAt = (id: string) => lots.find((lot) => lot.id === id)!.expiresAt!;
    const balance = await client.credits.balance.query();
    expect(balance).toMatchObject({
      balance: 62,
      reserved: 0,
      byCategory: { paid: 37, promotional: 25 },
      expiringSoon: { amount: 27, expiresAt: expiresAt(sooner.lotId) },
    });
    expect(expiresAt(soon.lotId).getTime()).toBeGreaterThan(expiresAt(sooner.lotId).getTime());
    // Held credits are not spendable: byCategory adds up to the spendable balance, expiringSoon leaves them out.
    const hold = await internal().reserve.mutate({
      userId: user.id,
      amount: 12,
      appId: 'lots',
      description: 'hold',
      idempotencyKey: randomUUID(),
    });
    // The hold pinned the promotional lot expiring in 10 days first (priority 10), then nothing else.
    expect(await client.credits.balance.query()).toMatchObject({
      balance: 50,
      reserved: 12,
      byCategory: { paid: 37, promotional: 13 },
      expiringSoon: { amount: 15, expiresAt: expiresAt(sooner.lotId) },
    });
    expect((await lotsOf(user.id)).find((lot) => lot.id === soon.lotId)).toMatchObject({
      remaining: 20,
      held: 12,
    });
    await internal().release.mutate({ reservationId: hold.reservationId });
    expect(await balanceOf(user.id)).toMatchObject({
      balance: 62,
      byCategory: { paid: 37, promotional: 25 },
    });
  });

  it('a grant with expiresAt lands in a lot expiring exactly then, with the category and priority given', async () => {
    const user = newUser();
    const at = new Date(Date.now() + 7 * DAY_MS);
    const exact = await grant(user.id, 3, { expiresAt: at, priority: 0, category: 'paid' });
    const lot = (await lotsOf(user.id)).find((item) => item.id === exact.lotId);
    expect(lot).toMatchObject({ expiresAt: at, priority: 0, category: 'paid', source: 'grant' });
  });
});

describe('bad input: 400 naming the field, nothing written', () => {
  const grantBody = (userId: string, extra: Record<string, unknown>) => ({
    userId,
    amount: 5,
    reason: 'bad',
    idempotencyKey: randomUUID(),
    ...extra,
  });

  it('internal.credits.grant over REST and tRPC', async () => {
    const user = newUser();
    const future = new Date(Date.now() + DAY_MS).toISOString();
    const cases: [string, Record<string, unknown>, string][] = [
      ['expiresAt in the past', { expiresAt: '2020-01-01T00:00:00Z' }, 'expiresAt'],
      ['expiresAt not a date', { expiresAt: 'tomorrow' }, 'expiresAt'],
      ['expiresAt and expiresInDays', { expiresAt: future, expiresInDays: 3 }, 'expiresInDays'],
      ['expiresInDays 0', { expiresInDays: 0 }, 'expiresInDays'],
      ['expiresInDays 3651', { expiresInDays: 3651 }, 'expiresInDays'],
      ['expiresInDays fractional', { expiresInDays: 1.5 }, 'expiresInDays'],
      ['priority 101', { priority: 101 }, 'priority'],
      ['priority -1', { priority: -1 }, 'priority'],
      ["category 'gold'", { category: 'gold' }, 'category'],
    ];
    for (const [name, extra, field] of cases) {
      const answer = await call('POST /api/v1/internal/credits/grant', {
        ...service,
        body: grantBody(user.id, extra),
      });
      expect(answer.status, name).toBe(400);
      expect(answer.body.error.reason, name).toBe('VALIDATION');
      expect(
        answer.body.error.details.issues.map((issue: { field: string }) => issue.field),
        name,
      ).toEqual([field]);
    }
    for (const [name, extra, field] of cases) {
      const input = grantBody(user.id, {
        ...extra,
        ...(typeof extra.expiresAt === 'string' && !Number.isNaN(Date.parse(extra.expiresAt))
          ? { expiresAt: new Date(extra.expiresAt) }
          : {}),
      });
      const error = await failure(internal().grant.mutate(input as never));
      expect(error.data, name).toMatchObject({ code: 'BAD_REQUEST', reason: 'VALIDATION' });
      expect(error.message, name).toContain(field);
    }
    expect(await ledger(user.id)).toEqual([]);
    expect(await lotsOf(user.id, true)).toEqual([]);
  });

  it('internal.packages.upsert: validityDays 0, 3651 and 2.5 are refused naming the field', async () => {
    for (const validityDays of [0, 3651, 2.5]) {
      const answer = await server.app.inject({
        method: 'POST',
        url: '/trpc/internal.packages.upsert',
        headers: { 'x-service-key': SERVICE_KEY, 'content-type': 'application/json' },
        payload: JSON.stringify({
          json: { name: 'Bad', credits: 10, priceEuroCents: 999, active: true, sortOrder: 1, validityDays },
        }),
      });
      expect(answer.statusCode, String(validityDays)).toBe(400);
      expect(answer.body).toContain('VALIDATION');
      expect(answer.body).toContain('validityDays');
    }
  });
});

describe('moving credits keeps expiry and never gains a better category', () => {
  it('funding a pool mirrors the lot portions (expiry, category, priority); guild.lots for owners and admins only', async () => {
    const guildId = `guild-${randomUUID()}`;
    const owner = newUser();
    const admin = newUser();
    const member = newUser();
    const outsider = newUser();
    server.auth.setRole(guildId, owner.id, 'owner');
    server.auth.setRole(guildId, admin.id, 'admin');
    server.auth.setRole(guildId, member.id, 'member');
    await server.internalClient().internal.guildPool.init.mutate({ guildId });
    const paid = await grant(owner.id, 30, { category: 'paid', expiresInDays: 10 });
    const promo = await grant(owner.id, 20);
    const [paidLot] = (await lotsOf(owner.id)).filter((lot) => lot.id === paid.lotId);

    const ownerClient = await server.userClient(owner);
    expect(await ownerClient.guild.fund.mutate({ guildId, amount: 40 })).toEqual({
      poolBalance: 40,
      personalBalance: 10,
    });
    // The owner's debit took the promotional lot first (priority 10), then 20 of the paid one.
    const funding = (await ledger(owner.id)).find((row) => row.type === 'guild_funding')!;
    expect(portions(funding)).toEqual([
      { lotId: promo.lotId, amount: 20 },
      { lotId: paid.lotId, amount: 20 },
    ]);

    const pool = (await ownerClient.guild.lots.query({ guildId })).items;
    expect(pool).toHaveLength(2);
    expect(pool[0]).toMatchObject({
      source: 'funding',
      category: 'promotional',
      priority: 10,
      amount: 20,
      remaining: 20,
      expiresAt: null,
    });
    expect(pool[1]).toMatchObject({
      source: 'funding',
      category: 'paid',
      priority: 50,
      amount: 20,
      remaining: 20,
      expiresAt: paidLot!.expiresAt,
    });
    const adminClient = await server.userClient(admin);
    expect((await adminClient.guild.lots.query({ guildId })).items).toEqual(pool);

    // A plain member may spend from the pool but not read its lots; an outsider neither.
    const memberClient = await server.userClient(member);
    const refused = await failure(memberClient.guild.lots.query({ guildId }));
    expect(refused.data).toMatchObject({ code: 'FORBIDDEN' });
    const outside = await failure((await server.userClient(outsider)).guild.lots.query({ guildId }));
    expect(outside.data?.code).toMatch(/FORBIDDEN|NOT_FOUND/);
    const rest = await call('GET /api/v1/credits/guild/{guildId}/lots', {
      token: await server.auth.sign(member),
      params: { guildId },
    });
    expect(rest.status).toBe(403);

    // The pool burns in its own burn order: the promotional lot, then the paid one.
    await memberClient.guild.use.mutate({ guildId, amount: 25, appId: 'lots', description: 'pool use' });
    const usage = (await guildLedger(guildId)).find((row) => row.type === 'usage')!;
    expect(portions(usage)).toEqual([
      { lotId: pool[0]!.id, amount: 20 },
      { lotId: pool[1]!.id, amount: 5 },
    ]);
    expect((await ownerClient.guild.lots.query({ guildId })).items.map((lot) => lot.remaining)).toEqual([15]);
  });

  it('a redeemed gift becomes promotional keeping the expiry; an unclaimed escrow goes back to its lots', async () => {
    const creator = newUser();
    const paid = await grant(creator.id, 50, { category: 'paid', expiresInDays: 10 });
    const [paidLot] = await lotsOf(creator.id);
    const creatorClient = await server.userClient(creator);

    const simple = await creatorClient.gifts.create.mutate({ type: 'simple', totalCredits: 20 });
    const escrow = (await ledger(creator.id)).find((row) => row.type === 'gift')!;
    expect(portions(escrow)).toEqual([{ lotId: paid.lotId, amount: 20 }]);

    const redeemer = newUser();
    const redeemerClient = await server.userClient(redeemer);
    expect(await redeemerClient.gifts.redeem.mutate({ code: simple.code })).toMatchObject({
      creditsReceived: 20,
      balance: 20,
    });
    const received = (await redeemerClient.credits.lots.query()).items;
    expect(received).toEqual([
      expect.objectContaining({
        source: 'gift',
        category: 'promotional',
        priority: 10,
        amount: 20,
        remaining: 20,
        expiresAt: paidLot!.expiresAt,
      }),
    ]);
    expect((await redeemerClient.credits.balance.query()).byCategory).toEqual({ paid: 0, promotional: 20 });

    // A split gift with one of two portions claimed, then cancelled: the unclaimed portion returns to the lot
    // it left (no new lot, the expiry unchanged).
    const split = await creatorClient.gifts.create.mutate({
      type: 'split',
      totalCredits: 20,
      totalPortions: 2,
    });
    await (await server.userClient()).gifts.redeem.mutate({ code: split.code });
    expect(await creatorClient.gifts.cancel.mutate({ id: split.id })).toEqual({ refunded: 10 });
    const creatorLots = await lotsOf(creator.id, true);
    expect(creatorLots).toEqual([
      expect.objectContaining({ id: paid.lotId, amount: 50, remaining: 20, expiresAt: paidLot!.expiresAt }),
    ]);
    const back = (await ledger(creator.id)).find((row) => row.type === 'refund')!;
    expect(portions(back)).toEqual([{ lotId: paid.lotId, amount: 10 }]);
    expect(await balanceOf(creator.id)).toMatchObject({
      balance: 20,
      byCategory: { paid: 20, promotional: 0 },
    });
  });
  it('a gift portion from a lapsed lot arrives expired, and the redeem answers the balance really spendable', async () => {
    const creator = newUser();
    await internal().grant.mutate({
      userId: creator.id,
      amount: 50,
      reason: 'expiring',
      idempotencyKey: randomUUID(),
      expiresInDays: 2,
    });
    const gift = await (await server.userClient(creator)).gifts.create.mutate({
      type: 'simple',
      totalCredits: 20,
    });
    // The escrowed credits' lot lapses before the gift is redeemed.
    await sql`update credits.lots set expires_at = now() - interval '1 second'
               where account_kind = 'user' and account_id = ${creator.id} and expires_at is not null`.execute(
      server.deps.db,
    );
    const redeemer = await server.fundedUser(7);
    const answer = await (await server.userClient(redeemer)).gifts.redeem.mutate({ code: gift.code });
    expect(answer).toMatchObject({ creditsReceived: 20, balance: 7 });
    expect((await internal().balance.query({ userId: redeemer.id })).balance).toBe(7);
    expect(await expiryRows(redeemer.id)).toHaveLength(1);
  });
});

describe('expiry (real clock: lots granted to expire 2.5 s ahead, one wait for all of them)', () => {
  let expiresAt: Date;
  const users = {
    lapsed: newUser(),
    race: newUser(),
    commit: newUser(),
    release: newUser(),
    refund: newUser(),
    owner: newUser(),
    sweep: newUser(),
    credit: newUser(),
  };
  const guildId = `guild-${randomUUID()}`;
  const lots: Record<string, string> = {};
  const before: Record<string, unknown> = {};
  const holds: Record<string, string> = {};
  let refundedUse: string;
  let refundRequest: {
    userId: string;
    transactionId: string;
    description: string;
    idempotencyKey: string;
  };
  const answers: Record<string, { balance: number }> = {};

  beforeAll(async () => {
    expiresAt = new Date(Date.now() + 2500);
    const expiring = { expiresAt, priority: 0 };
    // The expiring lots first (their expiresAt must still lie ahead), then the rest of each scenario.
    const granted = await Promise.all([
      grant(users.lapsed.id, 30, expiring),
      grant(users.lapsed.id, 20, expiring),
      grant(users.race.id, 25, expiring),
      grant(users.commit.id, 50, expiring),
      grant(users.release.id, 40, expiring),
      grant(users.refund.id, 30, expiring),
      grant(users.owner.id, 40, expiring),
      grant(users.sweep.id, 30, expiring),
      grant(users.credit.id, 15, expiring),
    ]);
    const names = ['lapsedA', 'lapsedB', 'race', 'commit', 'release', 'refund', 'owner', 'sweep', 'credit'];
    granted.forEach((g, i) => {
      lots[names[i]!] = g.lotId;
    });
    const never = await Promise.all(
      [
        [users.lapsed, 100],
        [users.race, 100],
        [users.commit, 100],
        [users.release, 60],
        [users.refund, 70],
        [users.owner, 60],
        [users.sweep, 20],
        [users.credit, 10],
      ].map(([user, amount]) => grant((user as { id: string }).id, amount as number)),
    );
    lots.commitNever = never[2]!.lotId;
    lots.releaseNever = never[3]!.lotId;
    lots.refundNever = never[4]!.lotId;

    before.lapsed = await balanceOf(users.lapsed.id);
    // A hold over the expiring lot and a never-expiring one (it pins in burn order: 50 + 20).
    const commitHold = await internal().reserve.mutate({
      userId: users.commit.id,
      amount: 70,
      appId: 'lots',
      description: 'hold',
      idempotencyKey: randomUUID(),
    });
    holds.commit = commitHold.reservationId;
    const releaseHold = await internal().reserve.mutate({
      userId: users.release.id,
      amount: 50,
      appId: 'lots',
      description: 'hold',
      idempotencyKey: randomUUID(),
    });
    holds.release = releaseHold.reservationId;
    // A use paid by the expiring lot alone (priority 0 burns first).
    const used = await use(users.refund.id, 20);
    refundedUse = used.transactionId;
    before.refundUse = await internal().transaction.query({
      userId: users.refund.id,
      transactionId: used.transactionId,
    });
    // A pool funded from the expiring lot (40) and 10 of the never-expiring one.
    server.auth.setRole(guildId, users.owner.id, 'owner');
    await server.internalClient().internal.guildPool.init.mutate({ guildId });
    await (await server.userClient(users.owner)).guild.fund.mutate({ guildId, amount: 50 });
    before.pool = (await (await server.userClient(users.owner)).guild.lots.query({ guildId })).items;

    const left = expiresAt.getTime() - Date.now();
    if (left < 200) throw new Error(`the set-up outran the expiry (${left} ms left): raise the 2.5 s`);
    await new Promise((resolve) => setTimeout(resolve, left + 300));
  });

  it('before the expiry: expiringSoon names the lots and they burn first', () => {
    expect(before.lapsed).toMatchObject({
      balance: 150,
      byCategory: { paid: 0, promotional: 150 },
      expiringSoon: { amount: 50, expiresAt },
    });
    expect((before.refundUse as { lots: unknown }).lots).toEqual([{ lotId: lots.refund, amount: 20 }]);
  });

  it('reads count no lapsed lot before any sweep; the next spend posts one expiry row per lot', async () => {
    const { id } = users.lapsed;
    const client = await server.userClient(users.lapsed);
    expect(await expiryRows(id)).toEqual([]);
    expect(await client.credits.balance.query()).toMatchObject({
      balance: 100,
      reserved: 0,
      byCategory: { paid: 0, promotional: 100 },
      expiringSoon: null,
    });
    expect((await lotsOf(id)).map((lot) => lot.remaining)).toEqual([100]);
    const all = await lotsOf(id, true);
    const lapsed = all.filter((lot) => lot.expiresAt !== null);
    expect(lapsed).toHaveLength(2);
    expect(lapsed).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ id: lots.lapsedA, amount: 30, remaining: 0, expired: 30 }),
        expect.objectContaining({ id: lots.lapsedB, amount: 20, remaining: 0, expired: 20 }),
      ]),
    );
    // Still nothing posted: reads never write.
    expect(await expiryRows(id)).toEqual([]);
    const spent = await use(id, 10);
    expect(spent.balance).toBe(90);
    const expired = await expiryRows(id);
    expect(expired.map((row) => [row.amount, portions(row)]).sort()).toEqual(
      [
        [-30, [{ lotId: lots.lapsedA, amount: 30 }]],
        [-20, [{ lotId: lots.lapsedB, amount: 20 }]],
      ].sort(),
    );
    for (const row of expired) expect(row.idempotency_key?.startsWith('\x1fexpiry:')).toBe(true);
    const entry = await internal().transaction.query({ userId: id, transactionId: spent.transactionId });
    expect(entry.lots).toHaveLength(1);
    expect(entry.lots[0]!.amount).toBe(10);
    await use(id, 10);
    // A spend the lapsed lots would have covered is refused.
    const short = await failure(use(id, 81));
    expect(short.data).toMatchObject({ code: 'PAYMENT_REQUIRED', reason: 'INSUFFICIENT_CREDITS' });
    expect(await expiryRows(id)).toHaveLength(2);
    expect(await balanceOf(id)).toMatchObject({ balance: 80 });
  });

  it('a credit to an account with a lapsed lot answers the balance without it', async () => {
    const { id } = users.credit;
    const granted = await internal().grant.mutate({
      userId: id,
      amount: 5,
      reason: 'after the expiry',
      idempotencyKey: randomUUID(),
    });
    expect(granted.balance).toBe(15);
    expect((await balanceOf(id)).balance).toBe(15);
    // The lapsed lot was expired first, so the grant's ledger row does not count it either.
    const rows = await ledger(id);
    expect(rows.filter((row) => row.type === 'expiry').map((row) => row.amount)).toEqual([-15]);
    expect(rows.find((row) => row.id === granted.transactionId)).toBeDefined();
    const { balance_after } = await server.deps.db
      .selectFrom('credits.transactions')
      .select('balance_after')
      .where('id', '=', granted.transactionId)
      .executeTakeFirstOrThrow();
    expect(balance_after).toBe(15);
  });

  it('ten parallel spends on a lapsed account expire its lot once', async () => {
    server.httpForThisTest(); // real parallel requests
    const { id } = users.race;
    const spent = await Promise.all(Array.from({ length: 10 }, () => use(id, 5)));
    expect(spent.map((s) => s.balance).sort((a, b) => a - b)).toEqual([
      50, 55, 60, 65, 70, 75, 80, 85, 90, 95,
    ]);
    const expired = await expiryRows(id);
    expect(expired.map((row) => [row.amount, portions(row)])).toEqual([
      [-25, [{ lotId: lots.race, amount: 25 }]],
    ]);
    expect(await balanceOf(id)).toMatchObject({ balance: 50 });
  });

  it('a hold keeps its pinned part past the expiry; the commit consumes it, the freed rest expires at once', async () => {
    const { id } = users.commit;
    // 150 in lots, 70 pinned (50 of the lapsed lot, 20 of the other): the pinned part has not expired.
    expect(await balanceOf(id)).toMatchObject({ balance: 80, reserved: 70, expiringSoon: null });
    expect((await lotsOf(id)).map((lot) => [lot.id, lot.remaining, lot.held])).toEqual([
      [lots.commit, 50, 50],
      [lots.commitNever, 100, 20],
    ]);
    expect(await expiryRows(id)).toEqual([]);
    const committed = await internal().commit.mutate({ reservationId: holds.commit!, amount: 30 });
    answers.commit = committed;
    expect(committed).toMatchObject({ committed: 30, released: 40, balance: 100 });
    const entry = await internal().transaction.query({ userId: id, transactionId: committed.transactionId });
    expect(entry).toMatchObject({ type: 'usage', amount: -30 });
    expect(entry.lots).toEqual([{ lotId: lots.commit, amount: 30 }]);
    // The 20 of the lapsed lot the commit freed expired with it; the 20 of the other lot are spendable again.
    expect((await expiryRows(id)).map((row) => [row.amount, portions(row)])).toEqual([
      [-20, [{ lotId: lots.commit, amount: 20 }]],
    ]);
    expect(await balanceOf(id)).toMatchObject({ balance: 100, reserved: 0 });
    expect((await lotsOf(id, true)).map((lot) => [lot.id, lot.remaining, lot.held, lot.expired])).toEqual([
      [lots.commit, 0, 0, 20],
      [lots.commitNever, 100, 0, 0],
    ]);
  });

  it('a hold released after the expiry: what returns to the lapsed lot expires at once', async () => {
    const { id } = users.release;
    expect(await balanceOf(id)).toMatchObject({ balance: 50, reserved: 50 });
    const released = await internal().release.mutate({ reservationId: holds.release! });
    expect(released).toEqual({ released: 50, balance: 60 });
    expect((await expiryRows(id)).map((row) => [row.amount, portions(row)])).toEqual([
      [-40, [{ lotId: lots.release, amount: 40 }]],
    ]);
    expect(await balanceOf(id)).toMatchObject({ balance: 60, reserved: 0 });
    expect((await lotsOf(id)).map((lot) => [lot.id, lot.remaining, lot.held])).toEqual([
      [lots.releaseNever, 60, 0],
    ]);
  });

  it('a refund of a use paid by a lapsed lot returns to it and expires in the same transaction', async () => {
    const { id } = users.refund;
    expect(await balanceOf(id)).toMatchObject({ balance: 70 });
    refundRequest = {
      userId: id,
      transactionId: refundedUse,
      description: 'refund after the expiry',
      idempotencyKey: randomUUID(),
    };
    const refunded = await internal().refund.mutate(refundRequest);
    answers.refund = refunded;
    // Balance unchanged: the refund never extends the lot's life.
    expect(refunded.balance).toBe(70);
    expect(await balanceOf(id)).toMatchObject({ balance: 70 });
    const rows = await ledger(id);
    const refundRow = rows.find((row) => row.type === 'refund')!;
    expect(refundRow.amount).toBe(20);
    expect(portions(refundRow)).toEqual([{ lotId: lots.refund, amount: 20 }]);
    // One expiry row: the lot's 10 left unspent and the 20 refunded to it.
    expect(rows.filter((row) => row.type === 'expiry').map((row) => [row.amount, portions(row)])).toEqual([
      [-30, [{ lotId: lots.refund, amount: 30 }]],
    ]);
    expect((await lotsOf(id, true)).map((lot) => [lot.id, lot.remaining, lot.expired])).toEqual([
      [lots.refund, 0, 30],
      [lots.refundNever, 70, 0],
    ]);
  });

  // A replay is answered from the first call's ledger row, whose available_after still counts what the same
  // transaction expired right after writing it (the part of a lapsed lot a commit freed; what a refund returned
  // to a lapsed lot): the expiry rows name that entry (`causedBy`), so the replay takes them off again.
  it('a replayed commit or refund answers the balance the first call answered', async () => {
    const commitAgain = await internal().commit.mutate({ reservationId: holds.commit!, amount: 30 });
    const refundAgain = await internal().refund.mutate(refundRequest);
    expect({ commit: commitAgain.balance, refund: refundAgain.balance }).toEqual({
      commit: answers.commit!.balance,
      refund: answers.refund!.balance,
    });
  });

  it('pool lots mirrored from a lapsed lot expire with it (guild expiry row on the next pool spend)', async () => {
    const ownerClient = await server.userClient(users.owner);
    const pool = before.pool as { id: string; expiresAt: Date | null; amount: number }[];
    expect(pool.map((lot) => [lot.amount, lot.expiresAt])).toEqual([
      [40, expiresAt],
      [10, null],
    ]);
    expect(await ownerClient.guild.balance.query({ guildId })).toMatchObject({ balance: 10 });
    expect((await ownerClient.guild.lots.query({ guildId })).items.map((lot) => lot.id)).toEqual([
      pool[1]!.id,
    ]);
    await ownerClient.guild.use.mutate({ guildId, amount: 5, appId: 'lots', description: 'pool use' });
    expect(
      (await guildLedger(guildId))
        .filter((row) => row.type === 'expiry')
        .map((row) => [row.amount, portions(row)]),
    ).toEqual([[-40, [{ lotId: pool[0]!.id, amount: 40 }]]]);
    expect(await ownerClient.guild.balance.query({ guildId })).toMatchObject({ balance: 5 });
    // The owner's own lapsed lot had nothing left: no personal expiry.
    expect(await expiryRows(users.owner.id)).toEqual([]);
    expect(await balanceOf(users.owner.id)).toMatchObject({ balance: 50 });
  });

  it('the sweep expires an untouched account once, even with two sweeps at once', async () => {
    const { id } = users.sweep;
    expect(await expiryRows(id)).toEqual([]);
    const job = lotExpiryJob(server.deps);
    const [first] = await Promise.all([
      expireDueAccountLots(server.deps.db),
      job.run(new AbortController().signal),
    ]);
    expect(first.expired).toBeGreaterThanOrEqual(0);
    expect((await expiryRows(id)).map((row) => [row.amount, portions(row)])).toEqual([
      [-30, [{ lotId: lots.sweep, amount: 30 }]],
    ]);
    // Nothing is due any more: no credits, and no account to go through (the job drained them all).
    expect(await expireDueAccountLots(server.deps.db)).toEqual({ expired: 0, accounts: 0 });
    expect(await expiryRows(id)).toHaveLength(1);
    expect(await balanceOf(id)).toMatchObject({ balance: 20 });
    // Every account of this block has posted its expiries now, each lot once.
    const { rows } = await sql<{ lot: string; rows: number }>`
      select lot_ids[1]::text as lot, count(*)::int as rows from credits.transactions
       where type = 'expiry' group by lot_ids[1] having count(*) > 1`.execute(server.deps.db);
    expect(rows).toEqual([]);
  });
});

describe('packages with a validity', () => {
  it('validityDays is shown and a purchase fills a paid lot expiring that many days after the payment', async () => {
    const upsert = (validityDays: number | null | undefined, id?: string) =>
      server.internalClient().internal.packages.upsert.mutate({
        ...(id ? { id } : {}),
        name: 'Seasonal',
        credits: 100,
        priceEuroCents: 999,
        active: true,
        sortOrder: 1,
        ...(validityDays === undefined ? {} : { validityDays }),
      });
    const pack = await upsert(30);
    expect(pack).toMatchObject({ validityDays: 30 });
    const forever = await upsert(undefined);
    expect(forever).toMatchObject({ validityDays: null });
    const listed = await server.internalClient().credits.packages.query();
    expect(listed.find((p) => p.id === pack.id)).toMatchObject({ validityDays: 30 });
    expect(listed.find((p) => p.id === forever.id)).toMatchObject({ validityDays: null });
    const rest = await call('GET /api/v1/credits/packages');
    expect(rest.body.find((p: { id: string }) => p.id === pack.id)).toMatchObject({ validityDays: 30 });

    const buyer = newUser();
    const client = await server.userClient(buyer);
    await buy(client, pack.id);
    // Changing the package afterwards does not change what was sold (the validity is on the purchase).
    await buy(client, forever.id);
    const lotList = await lotsOf(buyer.id);
    expect(lotList).toHaveLength(2);
    // Same priority: the expiring lot burns first.
    expect(lotList[0]).toMatchObject({ source: 'purchase', category: 'paid', priority: 50, amount: 100 });
    near(lotList[0]!.expiresAt, Date.now() + 30 * DAY_MS, 60_000);
    expect(lotList[1]).toMatchObject({ source: 'purchase', category: 'paid', priority: 50, expiresAt: null });
    expect(await balanceOf(buyer.id)).toMatchObject({
      balance: 200,
      byCategory: { paid: 200, promotional: 0 },
      expiringSoon: { amount: 100, expiresAt: lotList[0]!.expiresAt },
    });
  });
});

/** A PaymentIntent purchase of `packageId` paid and delivered through the local Stripe peer. */
async function buy(client: Client, packageId: string) {
  const started = await client.credits.purchase.mutate({ packageId });
  const row = await server.deps.db
    .selectFrom('credits.purchases')
    .select('stripe_payment_intent_id')
    .where('id', '=', started.purchaseId)
    .executeTakeFirstOrThrow();
  const intent = stripe.succeedPaymentIntent(row.stripe_payment_intent_id!);
  const delivered = await stripe.deliver(server.url, stripe.event('payment_intent.succeeded', intent));
  expect(delivered.status).toBe(200);
  expect(await client.credits.purchaseStatus.query({ purchaseId: started.purchaseId })).toMatchObject({
    status: 'completed',
  });
}

describe('REST routes answer as the procedures do', () => {
  it('lots, a transaction with its lots, the balance; user, service and guild routes', async () => {
    const user = newUser();
    const token = await server.auth.sign(user);
    const client = await server.userClient(user);
    await grant(user.id, 10, { category: 'paid', expiresInDays: 5 });
    await grant(user.id, 10, { priority: 1 });
    const spent = await use(user.id, 15);
    const json = (value: unknown) => JSON.parse(JSON.stringify(value));

    const lots = await call('GET /api/v1/credits/lots', { token });
    expect(lots.status).toBe(200);
    expect(lots.body).toEqual(json(await client.credits.lots.query()));
    const all = await call('GET /api/v1/credits/lots', { token, query: { includeSpent: 'true' } });
    expect(all.body).toEqual(json(await client.credits.lots.query({ includeSpent: true })));
    expect(all.body.items).toHaveLength(2);
    expect(lots.body.items).toHaveLength(1);

    const entry = await call('GET /api/v1/credits/transactions/{transactionId}', {
      token,
      params: { transactionId: spent.transactionId },
    });
    expect(entry.status).toBe(200);
    expect(entry.body).toEqual(
      json(await client.credits.transaction.query({ transactionId: spent.transactionId })),
    );
    expect(entry.body.lots).toHaveLength(2);
    const foreign = await call('GET /api/v1/credits/transactions/{transactionId}', {
      token: await server.auth.sign(newUser()),
      params: { transactionId: spent.transactionId },
    });
    expect(foreign.status).toBe(404);

    const balance = await call('GET /api/v1/credits/balance', { token });
    expect(balance.body).toEqual(json(await client.credits.balance.query()));
    expect(balance.body).toMatchObject({ balance: 5, byCategory: { paid: 5, promotional: 0 } });
    expect(balance.body.expiringSoon).toMatchObject({ amount: 5 });

    const internalLots = await call('GET /api/v1/internal/credits/lots/{userId}', {
      ...service,
      params: { userId: user.id },
    });
    expect(internalLots.body).toEqual(lots.body);
    const internalEntry = await call('GET /api/v1/internal/credits/transactions/{userId}/{transactionId}', {
      ...service,
      params: { userId: user.id, transactionId: spent.transactionId },
    });
    expect(internalEntry.body).toEqual(entry.body);
    const internalBalance = await call('GET /api/v1/internal/credits/balance/{userId}', {
      ...service,
      params: { userId: user.id },
    });
    expect(internalBalance.body).toEqual(balance.body);

    const future = new Date(Date.now() + 2 * DAY_MS).toISOString();
    const granted = await call('POST /api/v1/internal/credits/grant', {
      ...service,
      body: {
        userId: user.id,
        amount: 4,
        reason: 'rest',
        idempotencyKey: randomUUID(),
        expiresAt: future,
        priority: 0,
      },
    });
    expect(granted.status).toBe(200);
    expect((await lotsOf(user.id))[0]).toMatchObject({ amount: 4, priority: 0, expiresAt: new Date(future) });

    const guildId = `guild-${randomUUID()}`;
    server.auth.setRole(guildId, user.id, 'owner');
    await server.internalClient().internal.guildPool.init.mutate({ guildId });
    await client.guild.fund.mutate({ guildId, amount: 6 });
    const poolLots = await call('GET /api/v1/credits/guild/{guildId}/lots', { token, params: { guildId } });
    expect(poolLots.status).toBe(200);
    expect(poolLots.body).toEqual(json(await client.guild.lots.query({ guildId })));
    expect(poolLots.body.items.map((lot: { amount: number }) => lot.amount)).toEqual([4, 2]);
  });
});
