import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.ts';
import type { AppDeps } from '../src/deps.ts';
import { MONEY_PROCEDURES } from '../src/trpc/metrics.ts';
import { appRouter } from '../src/trpc/routers/_app.ts';
import { failure } from './helpers/errors.ts';
import { expectLedgerConsistent } from './helpers/invariants.ts';
import { type Client, newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';
import { TestStripeServer } from './helpers/stripe-server.ts';

/**
 * Every money call once, again (a replay) and refused, then the exact change of every money counter: each
 * movement is counted once as `outcome=ok`, a replay again as `outcome=replay` (and in idempotent_replays), a
 * refusal as nothing but a refusal.
 */

let server: TestServer;
let stripe: TestStripeServer;
beforeAll(async () => {
  stripe = await TestStripeServer.start();
  server = await startTestServer({
    MEMBERSHIP_CACHE_SECONDS: '0',
    // Only the sibling apps of the sweep tests sweep; everything else expires on access.
    RESERVATION_SWEEP_SECONDS: '3600',
    GIFT_EXPIRY_SWEEP_SECONDS: '0',
    STRIPE_SECRET_KEY: stripe.secretKey,
    STRIPE_WEBHOOK_SECRET: stripe.webhookSecret,
    STRIPE_API_URL: stripe.url,
  });
  server.auth.expectedServiceKey = SERVICE_KEY;
});
afterEach(async () => {
  await expectLedgerConsistent(server.deps.db);
});
afterAll(async () => {
  await server?.close();
  await stripe?.close();
});

/** The counters every money movement, replay or refusal lands in. */
const WATCHED = [
  'credits_debited_total',
  'credits_credited_total',
  'credits_refunded_total',
  'credits_clawed_back_total',
  'reservations_total',
  'idempotent_replays_total',
  'insufficient_credits_total',
].map((name) => `mana_credits_${name}`);

type Series = Record<string, number>;

/** One series as a key: `debited{account=personal,app=x,type=usage}` (name without prefix and _total). */
function keyOf(name: string, labels: Record<string, string>): string {
  const short = name.replace(/^mana_credits_/, '').replace(/_total$/, '');
  const pairs = Object.entries(labels)
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([k, v]) => `${k}=${v}`);
  return `${short}{${pairs.join(',')}}`;
}

async function watchedSeries(): Promise<Series> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const series: Series = {};
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || !WATCHED.includes(match[1]!)) continue;
    const labels: Record<string, string> = {};
    for (const pair of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1]!] = pair[2]!;
    }
    series[keyOf(match[1]!, labels)] = Number(match[3]);
  }
  return series;
}

/** Runs `work` and answers how every watched series changed (only the ones that did). */
async function deltasOf(work: () => Promise<unknown>): Promise<Series> {
  const before = await watchedSeries();
  await work();
  const after = await watchedSeries();
  const deltas: Series = {};
  for (const [key, value] of Object.entries(after)) {
    const delta = value - (before[key] ?? 0);
    if (delta !== 0) deltas[key] = delta;
  }
  return deltas;
}

const internal = (appId = 'm-service') => server.internalClient({ appId });

async function funded(amount: number) {
  const user = amount > 0 ? await server.fundedUser(amount) : newUser();
  return { user, client: await server.userClient(user) };
}

async function guildWithPool(amount: number) {
  const guildId = `guild-${randomUUID()}`;
  await internal().internal.guildPool.init.mutate({ guildId });
  const owner = await funded(amount);
  server.auth.setRole(guildId, owner.user.id, 'owner');
  if (amount > 0) await owner.client.guild.fund.mutate({ guildId, amount });
  return { guildId, owner };
}

const reserveInput = (userId: string, amount: number, more: Record<string, unknown> = {}) => ({
  userId,
  amount,
  appId: 'm-hold',
  description: 'a call priced afterwards',
  idempotencyKey: `hold-${randomUUID()}`,
  ...more,
});

async function backdateHold(reservationId: string) {
  await sql`update credits.reservations set expires_at = now() - interval '1 second'
             where id = ${reservationId}::uuid`.execute(server.deps.db);
}

async function backdateGift(giftId: string) {
  await sql`update gifts.gift_codes set expires_at = now() - interval '1 second'
             where id = ${giftId}::uuid`.execute(server.deps.db);
}

async function holdStatus(reservationId: string) {
  const { rows } = await sql<{ status: string }>`
    select status from credits.reservations where id = ${reservationId}::uuid`.execute(server.deps.db);
  return rows[0]?.status;
}

async function giftStatus(giftId: string) {
  const { rows } = await sql<{ status: string }>`
    select status from gifts.gift_codes where id = ${giftId}::uuid`.execute(server.deps.db);
  return rows[0]?.status;
}

/** A second app on the same deps (so the same metrics) that only runs its periodic jobs. */
async function sweepingSibling(config: Partial<AppDeps['config']>) {
  const app = await buildApp(
    { ...server.deps, config: { ...server.deps.config, ...config } },
    { logger: false },
  );
  await app.ready();
  return app;
}

describe('every money procedure is in the table', () => {
  it('MONEY_PROCEDURES names only real procedures, and only mutations', () => {
    const procedures = appRouter._def.procedures as unknown as Record<string, { _def: { type: string } }>;
    for (const path of Object.keys(MONEY_PROCEDURES)) {
      expect(procedures[path], path).toBeDefined();
      expect(procedures[path]?._def.type, path).toBe('mutation');
    }
  });
});

describe('spending', () => {
  it('credits.use and internal.credits.use: debited once, the replay as a replay, the refusal as a refusal', async () => {
    const { user, client } = await funded(100);
    const key = `use-${randomUUID()}`;
    const deltas = await deltasOf(async () => {
      const spend = { amount: 10, appId: 'm-web', description: 'x', idempotencyKey: key };
      await client.credits.use.mutate(spend);
      await client.credits.use.mutate(spend);
      await failure(client.credits.use.mutate({ ...spend, amount: 1000, idempotencyKey: `${key}-big` }));
      const viaService = {
        userId: user.id,
        amount: 7,
        appId: 'm-game',
        description: 'y',
        idempotencyKey: key,
      };
      await internal().internal.credits.use.mutate({ ...viaService, idempotencyKey: `${key}-svc` });
      await internal().internal.credits.use.mutate({ ...viaService, idempotencyKey: `${key}-svc` });
      await failure(
        internal().internal.credits.use.mutate({ ...viaService, amount: 500, idempotencyKey: `${key}-poor` }),
      );
    });
    expect(deltas).toEqual({
      'credits_debited{account=personal,app=m-web,outcome=ok,type=usage}': 10,
      'credits_debited{account=personal,app=m-web,outcome=replay,type=usage}': 10,
      'credits_debited{account=personal,app=m-game,outcome=ok,type=usage}': 7,
      'credits_debited{account=personal,app=m-game,outcome=replay,type=usage}': 7,
      'idempotent_replays{procedure=credits.use}': 1,
      'idempotent_replays{procedure=internal.credits.use}': 1,
      'insufficient_credits{app=m-web,procedure=credits.use}': 1,
      'insufficient_credits{app=m-game,procedure=internal.credits.use}': 1,
    });
  });

  it('from a pool (guild.use, credits.use with a guildId): debited from the pool', async () => {
    const { guildId, owner } = await guildWithPool(100);
    const key = `pool-${randomUUID()}`;
    const deltas = await deltasOf(async () => {
      const spend = { guildId, amount: 5, appId: 'm-pool', description: 'x', idempotencyKey: key };
      await owner.client.guild.use.mutate(spend);
      await owner.client.guild.use.mutate(spend);
      await failure(owner.client.guild.use.mutate({ ...spend, amount: 1000, idempotencyKey: `${key}-big` }));
      const viaUse = { ...spend, amount: 6, idempotencyKey: `${key}-use` };
      await owner.client.credits.use.mutate(viaUse);
      await owner.client.credits.use.mutate(viaUse);
      await failure(owner.client.credits.use.mutate({ ...viaUse, amount: 1000, idempotencyKey: `${key}-x` }));
    });
    expect(deltas).toEqual({
      'credits_debited{account=pool,app=m-pool,outcome=ok,type=usage}': 11,
      'credits_debited{account=pool,app=m-pool,outcome=replay,type=usage}': 11,
      'idempotent_replays{procedure=guild.use}': 1,
      'idempotent_replays{procedure=credits.use}': 1,
      'insufficient_credits{app=m-pool,procedure=guild.use}': 1,
      'insufficient_credits{app=m-pool,procedure=credits.use}': 1,
    });
  });

  it('guild.fund: debited from the personal balance and credited to the pool', async () => {
    const { guildId, owner } = await guildWithPool(0);
    await internal().internal.credits.grant.mutate({
      userId: owner.user.id,
      amount: 100,
      reason: 'more',
      idempotencyKey: `more-${randomUUID()}`,
    });
    const key = `fund-${randomUUID()}`;
    const deltas = await deltasOf(async () => {
      await owner.client.guild.fund.mutate({ guildId, amount: 30, idempotencyKey: key });
      await owner.client.guild.fund.mutate({ guildId, amount: 30, idempotencyKey: key });
      await failure(owner.client.guild.fund.mutate({ guildId, amount: 5000 }));
    });
    expect(deltas).toEqual({
      'credits_debited{account=personal,app=unknown,outcome=ok,type=guild_funding}': 30,
      'credits_debited{account=personal,app=unknown,outcome=replay,type=guild_funding}': 30,
      'credits_credited{account=pool,app=unknown,outcome=ok,type=guild_funding}': 30,
      'credits_credited{account=pool,app=unknown,outcome=replay,type=guild_funding}': 30,
      'idempotent_replays{procedure=guild.fund}': 1,
      'insufficient_credits{app=unknown,procedure=guild.fund}': 1,
    });
  });

  it('internal.credits.useBatch: each applied item once, replayed and refused items apart', async () => {
    const { user } = await funded(100);
    const { guildId, owner } = await guildWithPool(100);
    const items = [
      {
        userId: user.id,
        amount: 3,
        appId: 'm-batch',
        description: 'a',
        idempotencyKey: `b1-${randomUUID()}`,
      },
      {
        userId: user.id,
        amount: 1000,
        appId: 'm-batch',
        description: 'b',
        idempotencyKey: `b2-${randomUUID()}`,
      },
      {
        userId: owner.user.id,
        guildId,
        amount: 4,
        appId: 'm-batch',
        description: 'c',
        idempotencyKey: `b3-${randomUUID()}`,
      },
      { userId: user.id, amount: -1, appId: 'm-batch', description: 'd', idempotencyKey: 'bad' },
    ];
    const deltas = await deltasOf(async () => {
      const first = await internal().internal.credits.useBatch.mutate({ items });
      expect(first.results.map((r) => r.ok)).toEqual([true, false, true, false]);
      await internal().internal.credits.useBatch.mutate({ items });
      await failure(
        server.internalClient({ serviceKey: 'wrong-key' }).internal.credits.useBatch.mutate({ items }),
      );
    });
    expect(deltas).toEqual({
      'credits_debited{account=personal,app=m-batch,outcome=ok,type=usage}': 3,
      'credits_debited{account=personal,app=m-batch,outcome=replay,type=usage}': 3,
      'credits_debited{account=pool,app=m-batch,outcome=ok,type=usage}': 4,
      'credits_debited{account=pool,app=m-batch,outcome=replay,type=usage}': 4,
      // The second call replays all three keyed answers: two debits and the refusal recorded under b2's key
      // (a replay, not a second refusal).
      'idempotent_replays{procedure=internal.credits.useBatch}': 3,
      'insufficient_credits{app=m-batch,procedure=internal.credits.useBatch}': 1,
    });
  });
});

describe('grants and refunds', () => {
  it('internal.credits.grant and internal.credits.refund', async () => {
    const { user } = await funded(100);
    const spent = await internal().internal.credits.use.mutate({
      userId: user.id,
      amount: 20,
      appId: 'm-game',
      description: 'to refund',
    });
    const grantKey = `grant-${randomUUID()}`;
    const refundKey = `refund-${randomUUID()}`;
    const deltas = await deltasOf(async () => {
      const grant = { userId: user.id, amount: 50, reason: 'support', idempotencyKey: grantKey };
      await internal('m-support').internal.credits.grant.mutate(grant);
      await internal('m-support').internal.credits.grant.mutate(grant);
      await failure(internal('m-support').internal.credits.grant.mutate({ ...grant, amount: 51 }));
      const refund = {
        userId: user.id,
        transactionId: spent.transactionId,
        amount: 5,
        description: 'sorry',
        idempotencyKey: refundKey,
      };
      await internal().internal.credits.refund.mutate(refund);
      await internal().internal.credits.refund.mutate(refund);
      await failure(
        internal().internal.credits.refund.mutate({ ...refund, amount: 100, idempotencyKey: 'r2' }),
      );
    });
    expect(deltas).toEqual({
      'credits_credited{account=personal,app=m-support,outcome=ok,type=grant}': 50,
      'credits_credited{account=personal,app=m-support,outcome=replay,type=grant}': 50,
      'credits_refunded{app=m-game,outcome=ok,type=usage}': 5,
      'credits_refunded{app=m-game,outcome=replay,type=usage}': 5,
      'idempotent_replays{procedure=internal.credits.grant}': 1,
      'idempotent_replays{procedure=internal.credits.refund}': 1,
    });
  });
});

describe('holds', () => {
  it('reserve, commit and release: lifecycle events once, the commit debits', async () => {
    const { user } = await funded(100);
    const { guildId, owner } = await guildWithPool(100);
    const credits = internal().internal.credits;
    const deltas = await deltasOf(async () => {
      const input = reserveInput(user.id, 30);
      const hold = await credits.reserve.mutate(input);
      await credits.reserve.mutate(input);
      await failure(credits.reserve.mutate(reserveInput(user.id, 10_000)));
      await credits.commit.mutate({ reservationId: hold.reservationId, amount: 20 });
      await credits.commit.mutate({ reservationId: hold.reservationId, amount: 20 });
      await failure(credits.commit.mutate({ reservationId: hold.reservationId, amount: 25 }));

      const other = await credits.reserve.mutate(reserveInput(user.id, 10));
      await credits.release.mutate({ reservationId: other.reservationId });
      await credits.release.mutate({ reservationId: other.reservationId });
      await failure(credits.release.mutate({ reservationId: hold.reservationId })); // committed: CONFLICT

      const poolHold = await credits.reserve.mutate(reserveInput(owner.user.id, 40, { guildId }));
      await credits.commit.mutate({ reservationId: poolHold.reservationId, amount: 15 });
    });
    expect(deltas).toEqual({
      'reservations{event=opened}': 3,
      'reservations{event=committed}': 2,
      'reservations{event=released}': 1,
      'credits_debited{account=personal,app=m-hold,outcome=ok,type=usage}': 20,
      'credits_debited{account=personal,app=m-hold,outcome=replay,type=usage}': 20,
      'credits_debited{account=pool,app=m-hold,outcome=ok,type=usage}': 15,
      'idempotent_replays{procedure=internal.credits.reserve}': 1,
      'idempotent_replays{procedure=internal.credits.commit}': 1,
      'idempotent_replays{procedure=internal.credits.release}': 1,
      'insufficient_credits{app=m-hold,procedure=internal.credits.reserve}': 1,
    });
  });

  it('holds found expired on access are counted once, by whoever returns them, and never when rolled back', async () => {
    const { user, client } = await funded(100);
    const { guildId, owner } = await guildWithPool(100);
    const credits = internal().internal.credits;
    const released = await credits.reserve.mutate(reserveInput(user.id, 10));
    const committed = await credits.reserve.mutate(reserveInput(user.id, 10));
    const spentPast = await credits.reserve.mutate(reserveInput(user.id, 70));
    const poolHold = await credits.reserve.mutate(reserveInput(owner.user.id, 90, { guildId }));
    const batched = await funded(100);
    const batchedPast = await credits.reserve.mutate(reserveInput(batched.user.id, 60));
    for (const hold of [released, committed, spentPast, poolHold, batchedPast]) {
      await backdateHold(hold.reservationId);
    }

    const deltas = await deltasOf(async () => {
      // A release of a hold whose time is up closes it as expired.
      await credits.release.mutate({ reservationId: released.reservationId });
      // A commit finds it expired: refused, but the expiry stands.
      await failure(credits.commit.mutate({ reservationId: committed.reservationId }));
      await failure(credits.commit.mutate({ reservationId: committed.reservationId }));
      // A spend that needs the held credits returns the expired hold first.
      await client.credits.use.mutate({ amount: 95, appId: 'm-web', description: 'all of it' });
      // A pool spend refused even after returning the pool's expired hold: the return is rolled back with it …
      await failure(
        owner.client.guild.use.mutate({ guildId, amount: 500, appId: 'm-pool', description: 'x' }),
      );
      expect(await holdStatus(poolHold.reservationId)).toBe('open');
      // … and counted when a spend that goes through returns it.
      await owner.client.guild.use.mutate({ guildId, amount: 50, appId: 'm-pool', description: 'y' });
      expect(await holdStatus(poolHold.reservationId)).toBe('expired');
      // A batch item (credits.use_batch) that needs the held credits returns the expired hold too.
      await credits.useBatch.mutate({
        items: [
          { userId: batched.user.id, amount: 80, appId: 'm-batch', description: 'z', idempotencyKey: 'b1' },
        ],
      });
    });
    expect(deltas).toEqual({
      'reservations{event=expired}': 5,
      'credits_debited{account=personal,app=m-batch,outcome=ok,type=usage}': 80,
      'credits_debited{account=personal,app=m-web,outcome=ok,type=usage}': 95,
      'credits_debited{account=pool,app=m-pool,outcome=ok,type=usage}': 50,
      'insufficient_credits{app=m-pool,procedure=guild.use}': 1,
    });
  });

  it('the reservation sweep counts the holds it returns, and its runs', async () => {
    const { user } = await funded(100);
    const hold = await internal().internal.credits.reserve.mutate(reserveInput(user.id, 40));
    await backdateHold(hold.reservationId);
    const { rows } = await sql<{ lapsed: number }>`
      select count(*)::int4 as lapsed from credits.reservations
       where status = 'open' and expires_at <= now()`.execute(server.deps.db);
    let runs = 0;
    const deltas = await deltasOf(async () => {
      const sibling = await sweepingSibling({ reservationSweepSeconds: 1 });
      try {
        while ((await holdStatus(hold.reservationId)) !== 'expired') await sleep(100);
      } finally {
        await sibling.close();
      }
      runs = (await server.deps.metrics.jobRuns.get()).values
        .filter((v) => v.labels.job === 'reservation-sweep')
        .reduce((sum, v) => sum + v.value, 0);
    });
    expect(deltas).toEqual({ 'reservations{event=expired}': rows[0]!.lapsed });
    expect(runs).toBeGreaterThanOrEqual(1);
  });
});

describe('gifts', () => {
  async function giftFrom(creator: Client, totalCredits: number, more: Record<string, unknown> = {}) {
    return creator.gifts.create.mutate({ type: 'simple', totalCredits, ...more });
  }

  it('create, redeem, cancel and redeemPending', async () => {
    const creator = await funded(200);
    const recipient = await funded(0);
    const late = newUser();
    const key = `gift-${randomUUID()}`;
    const deltas = await deltasOf(async () => {
      const gift = await giftFrom(creator.client, 60, {
        type: 'split',
        totalPortions: 3,
        idempotencyKey: key,
      });
      await giftFrom(creator.client, 60, { type: 'split', totalPortions: 3, idempotencyKey: key });
      await failure(giftFrom(creator.client, 10_000));

      await recipient.client.gifts.redeem.mutate({ code: gift.code, sourceAppId: 'm-gift' });
      await failure(recipient.client.gifts.redeem.mutate({ code: gift.code, sourceAppId: 'm-gift' }));

      await creator.client.gifts.cancel.mutate({ id: gift.id });
      await creator.client.gifts.cancel.mutate({ id: gift.id });
      await failure(recipient.client.gifts.cancel.mutate({ id: gift.id }));

      await giftFrom(creator.client, 25, { type: 'personalized', targetEmail: late.email });
      await internal().internal.gifts.redeemPending.mutate({ userId: late.id, email: late.email! });
      await internal().internal.gifts.redeemPending.mutate({ userId: late.id, email: late.email! });
    });
    expect(deltas).toEqual({
      'credits_debited{account=personal,app=unknown,outcome=ok,type=gift}': 85,
      'credits_debited{account=personal,app=unknown,outcome=replay,type=gift}': 60,
      'credits_credited{account=personal,app=m-gift,outcome=ok,type=gift}': 20,
      'credits_credited{account=personal,app=unknown,outcome=ok,type=gift}': 25,
      'credits_refunded{app=unknown,outcome=ok,type=gift}': 40,
      'credits_refunded{app=unknown,outcome=replay,type=gift}': 40,
      'idempotent_replays{procedure=gifts.create}': 1,
      'idempotent_replays{procedure=gifts.cancel}': 1,
      'insufficient_credits{app=unknown,procedure=gifts.create}': 1,
    });
  });

  it('gifts found expired on access are refunded and counted once', async () => {
    const creator = await funded(200);
    const recipient = await funded(0);
    const looked = await giftFrom(creator.client, 10);
    const redeemed = await giftFrom(creator.client, 20);
    const cancelled = await giftFrom(creator.client, 30);
    for (const gift of [looked, redeemed, cancelled]) await backdateGift(gift.id);
    const deltas = await deltasOf(async () => {
      await (await server.userClient()).gifts.info.query({ code: looked.code });
      await (await server.userClient()).gifts.info.query({ code: looked.code });
      await failure(recipient.client.gifts.redeem.mutate({ code: redeemed.code }));
      await failure(recipient.client.gifts.redeem.mutate({ code: redeemed.code }));
      await failure(creator.client.gifts.cancel.mutate({ id: cancelled.id }));
      await failure(creator.client.gifts.cancel.mutate({ id: cancelled.id }));
    });
    expect(deltas).toEqual({ 'credits_refunded{app=unknown,outcome=ok,type=gift}': 60 });
  });

  it('the gift expiry sweep counts what it refunds, and its runs', async () => {
    const creator = await funded(100);
    const gift = await giftFrom(creator.client, 45);
    await backdateGift(gift.id);
    const { rows } = await sql<{ due: number }>`
      select coalesce(sum(credits_per_portion * (total_portions - claimed_portions)), 0)::int8 as due
        from gifts.gift_codes where status = 'active' and expires_at <= now()`.execute(server.deps.db);
    let runs = 0;
    const deltas = await deltasOf(async () => {
      const sibling = await sweepingSibling({ giftExpirySweepSeconds: 1 });
      try {
        while ((await giftStatus(gift.id)) !== 'expired') await sleep(100);
      } finally {
        await sibling.close();
      }
      runs = (await server.deps.metrics.jobRuns.get()).values
        .filter((v) => v.labels.job === 'gift-expiry' && v.labels.outcome === 'ok')
        .reduce((sum, v) => sum + v.value, 0);
    });
    expect(deltas).toEqual({ 'credits_refunded{app=unknown,outcome=ok,type=gift}': Number(rows[0]!.due) });
    expect(runs).toBeGreaterThanOrEqual(1);
  });
});

describe('purchases and clawbacks (Stripe webhook)', () => {
  it('a credited purchase and a refund clawed back are counted once, redeliveries not at all', async () => {
    const pack = await internal().internal.packages.upsert.mutate({
      name: 'Metrics pack',
      credits: 100,
      priceEuroCents: 999,
      active: true,
      sortOrder: 1,
    });
    const { client } = await funded(0);
    const started = await client.credits.purchase.mutate({ packageId: pack.id });
    const { rows } = await sql<{ intent: string }>`
      select stripe_payment_intent_id as intent from credits.purchases
       where id = ${started.purchaseId}::uuid`.execute(server.deps.db);
    const intentId = rows[0]!.intent;
    const succeeded = stripe.event('payment_intent.succeeded', stripe.succeedPaymentIntent(intentId));
    const deltas = await deltasOf(async () => {
      expect((await stripe.deliver(server.url, succeeded)).status).toBe(200);
      expect((await stripe.deliver(server.url, succeeded)).status).toBe(200);
      expect((await stripe.deliver(server.url, succeeded, { secret: 'whsec_wrong' })).status).toBe(400);
      const charge = stripe.chargeOf(intentId);
      const refunded = stripe.event('charge.refunded', stripe.refundCharge(charge.id as string, 333));
      expect((await stripe.deliver(server.url, refunded)).status).toBe(200);
      expect((await stripe.deliver(server.url, refunded)).status).toBe(200);
    });
    expect(deltas).toEqual({
      'credits_credited{account=personal,app=stripe,outcome=ok,type=purchase}': 100,
      'credits_clawed_back{app=stripe,outcome=ok}': 33,
    });

    // A dispute of the rest, then won by the merchant: what it took is counted as given back, once.
    const dispute = stripe.disputeCharge(stripe.chargeOf(intentId).id as string, 666);
    const won = stripe.event('charge.dispute.funds_reinstated', { ...dispute, status: 'won' });
    const disputed = await deltasOf(async () => {
      expect((await stripe.deliver(server.url, stripe.event('charge.dispute.created', dispute))).status).toBe(
        200,
      );
      expect((await stripe.deliver(server.url, won)).status).toBe(200);
      expect((await stripe.deliver(server.url, won)).status).toBe(200);
    });
    expect(disputed).toEqual({
      'credits_clawed_back{app=stripe,outcome=ok}': 67,
      'credits_credited{account=personal,app=stripe,outcome=ok,type=reinstated}': 67,
    });
  });
});
