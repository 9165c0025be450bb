import { randomUUID } from 'node:crypto';
import { writeDefaultLowBalanceThreshold } from '@mana-credits/db';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EMITTED_EVENT_TYPES } from '../src/domain/events/types.ts';
import { failure } from './helpers/errors.ts';
import { type Client, newUser, startTestServer, type TestServer } from './helpers/server.ts';
import { TestStripeServer } from './helpers/stripe-server.ts';
import { type Envelope, eventually, WebhookReceiver } from './helpers/webhook-receiver.ts';

// Events out (issue 16) through a real local receiver: every delivery is verified with the standardwebhooks
// package, as a receiver would. Calls run in process (helpers/server.ts: Transport), the concurrent ones over
// HTTP.

let server: TestServer;
let stripe: TestStripeServer;
let receiver: WebhookReceiver;
/** An endpoint receiving every event type, for the whole file. */
let all: { id: string; secret: string };

beforeAll(async () => {
  stripe = await TestStripeServer.start();
  server = await startTestServer(
    {
      STRIPE_SECRET_KEY: stripe.secretKey,
      STRIPE_WEBHOOK_SECRET: stripe.webhookSecret,
      STRIPE_API_URL: stripe.url,
      MEMBERSHIP_CACHE_SECONDS: '0',
      WEBHOOK_ALLOW_PRIVATE: 'true',
      // Every run of the jobs is a query or more even with nothing to do, for the whole file: intervals short
      // enough for the waits below, no shorter.
      WEBHOOK_DELIVERY_INTERVAL_MS: '100',
      WEBHOOK_RETRY_SCHEDULE: '200ms,400ms,800ms,1600ms',
      // Long enough that a loaded machine never times a delivery out: the test below counts every event id once.
      WEBHOOK_TIMEOUT_MS: '8000',
      RESERVATION_SWEEP_SECONDS: '1',
      GIFT_EXPIRY_SWEEP_SECONDS: '1',
      LOT_EXPIRY_SWEEP_SECONDS: '1',
      AUTO_TOP_UP_INTERVAL_MS: '500',
    },
    { transport: 'in-process' },
  );
  receiver = await WebhookReceiver.start();
  all = await internal().internal.webhooks.create.mutate({ url: receiver.url, description: 'everything' });
});
afterAll(async () => {
  await server?.close();
  await receiver?.close();
  await stripe?.close();
});

const internal = () => server.internalClient();

async function grant(userId: string, amount: number) {
  return internal().internal.credits.grant.mutate({
    userId,
    amount,
    reason: 'test funds',
    idempotencyKey: `grant-${randomUUID()}`,
  });
}

/** The events of one account in the outbox, in the order they were written. */
async function eventsOf(account: { userId?: string; guildId?: string }) {
  let query = server.db
    .selectFrom('credits.events')
    .select(['id', 'type', 'data', 'position'])
    .orderBy('seq');
  if (account.userId) query = query.where('user_id', '=', account.userId);
  if (account.guildId) query = query.where('guild_id', '=', account.guildId);
  return query.execute();
}

/**
 * What the file-wide endpoint received (verified) about one account, once `count` have arrived, in commit order
 * (deliveries are sent in parallel, so they may arrive in another order).
 */
async function receivedFor(
  account: { userId?: string; guildId?: string },
  count: number,
): Promise<Envelope[]> {
  const envelopes = await eventually(`${count} deliveries for ${JSON.stringify(account)}`, () => {
    const matching = receiver
      .envelopes(all.secret)
      .filter(
        (envelope) =>
          (account.userId === undefined || envelope.data.userId === account.userId) &&
          (account.guildId === undefined || envelope.data.guildId === account.guildId),
      );
    const unique = [...new Map(matching.map((envelope) => [envelope.id, envelope])).values()];
    return unique.length >= count ? unique : undefined;
  });
  const rows = await server.db
    .selectFrom('credits.events')
    .select(['id', 'position'])
    .where(
      'id',
      'in',
      envelopes.map((envelope) => envelope.id),
    )
    .execute();
  const position = new Map(rows.map((row) => [row.id, row.position ?? 0]));
  return envelopes.sort((a, b) => (position.get(a.id) ?? 0) - (position.get(b.id) ?? 0));
}

describe('balance alerts', () => {
  it('credits.setAlerts: recovered, low and depleted, once each, naming the entry; alerts reads it back', async () => {
    const user = newUser();
    const client = await server.userClient(user);
    expect(await client.credits.alerts.query()).toEqual({ lowBalanceThreshold: null, usesDefault: true });
    expect(await client.credits.setAlerts.mutate({ lowBalanceThreshold: 50 })).toEqual({
      lowBalanceThreshold: 50,
      usesDefault: false,
    });
    const granted = await grant(user.id, 100);
    await client.credits.use.mutate({ amount: 30, appId: 'app', description: 'a' }); // 70: nothing
    const low = await client.credits.use.mutate({ amount: 30, appId: 'app', description: 'b' }); // 40: low
    await client.credits.use.mutate({ amount: 10, appId: 'app', description: 'c' }); // 30: nothing
    const depleted = await client.credits.use.mutate({ amount: 30, appId: 'app', description: 'd' }); // 0

    const events = await receivedFor({ userId: user.id }, 3);
    expect(events.map((event) => event.type)).toEqual([
      'balance.recovered',
      'balance.low',
      'balance.depleted',
    ]);
    expect(events[0]?.data).toMatchObject({
      userId: user.id,
      threshold: 50,
      available: 100,
      previousAvailable: 0,
      amount: 100,
      transactionId: granted.transactionId,
      entryType: 'grant',
    });
    expect(events[1]?.data).toMatchObject({
      available: 40,
      previousAvailable: 70,
      amount: -30,
      transactionId: low.transactionId,
      entryType: 'usage',
    });
    expect(events[2]?.data).toMatchObject({
      available: 0,
      previousAvailable: 30,
      transactionId: depleted.transactionId,
    });
    for (const event of events) {
      expect(event).toEqual({
        id: expect.any(String),
        type: event.type,
        createdAt: expect.any(String),
        data: event.data,
      });
      expect(new Date(event.createdAt).toISOString()).toBe(event.createdAt);
    }
    // The outbox holds exactly these three.
    expect((await eventsOf({ userId: user.id })).map((event) => event.type)).toEqual(
      events.map((event) => event.type),
    );
  });

  it('internal.credits.setAlerts sets a user threshold; null turns alerts off; a refused debit emits nothing', async () => {
    const user = await server.fundedUser(100);
    const client = await server.userClient(user);
    expect(
      await internal().internal.credits.setAlerts.mutate({ userId: user.id, lowBalanceThreshold: 80 }),
    ).toEqual({
      lowBalanceThreshold: 80,
      usesDefault: false,
    });
    expect(await internal().internal.credits.alerts.query({ userId: user.id })).toMatchObject({
      lowBalanceThreshold: 80,
    });
    await failure(client.credits.use.mutate({ amount: 101, appId: 'app', description: 'too much' }));
    expect(await eventsOf({ userId: user.id })).toEqual([]);
    await client.credits.use.mutate({ amount: 30, appId: 'app', description: 'x' });
    expect((await eventsOf({ userId: user.id })).map((event) => event.type)).toEqual(['balance.low']);

    await client.credits.setAlerts.mutate({ lowBalanceThreshold: null });
    await grant(user.id, 100);
    await client.credits.use.mutate({ amount: 170, appId: 'app', description: 'all' });
    expect((await eventsOf({ userId: user.id })).map((event) => event.type)).toEqual(['balance.low']);
    expect(await client.credits.setAlerts.mutate({ lowBalanceThreshold: 'default' })).toEqual({
      lowBalanceThreshold: null,
      usesDefault: true,
    });
  });

  it('refuses a bad threshold with a 400 naming the field', async () => {
    const client = await server.userClient();
    for (const lowBalanceThreshold of [-1, 1.5, 'soon', Number.MAX_SAFE_INTEGER + 2]) {
      const error = await failure(
        client.credits.setAlerts.mutate({ lowBalanceThreshold } as unknown as {
          lowBalanceThreshold: number;
        }),
      );
      expect(error.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'VALIDATION' });
      expect(error.message).toContain('lowBalanceThreshold');
    }
  });

  it('a rolled-back change emits nothing', async () => {
    const user = await server.fundedUser(100);
    await internal().internal.credits.setAlerts.mutate({ userId: user.id, lowBalanceThreshold: 50 });
    const before = await eventsOf({ userId: user.id });
    await expect(
      server.db.transaction().execute(async (trx) => {
        await sql`
          with debit as (
            update credits.balances set balance = balance - 90, total_spent = total_spent + 90
             where user_id = ${user.id} returning balance, reserved)
          insert into credits.transactions (user_id, type, amount, balance_before, balance_after, available_after)
          select ${user.id}, 'usage', -90, balance + 90, balance, balance - reserved from debit`.execute(trx);
        const inside = await trx
          .selectFrom('credits.events')
          .select('type')
          .where('user_id', '=', user.id)
          .execute();
        expect(inside.map((event) => event.type)).toEqual(['balance.low']);
        throw new Error('roll back');
      }),
    ).rejects.toThrow('roll back');
    expect(await eventsOf({ userId: user.id })).toEqual(before);
  });

  it('a burst of 200 concurrent debits across the threshold gives exactly one balance.low', async () => {
    server.httpForThisTest(); // real parallel requests
    const user = await server.fundedUser(250);
    await internal().internal.credits.setAlerts.mutate({ userId: user.id, lowBalanceThreshold: 100 });
    const client = await server.userClient(user);
    const results = await Promise.allSettled(
      Array.from({ length: 200 }, (_, index) =>
        client.credits.use.mutate({
          amount: 1,
          appId: 'burst',
          description: `#${index}`,
          idempotencyKey: `b-${index}`,
        }),
      ),
    );
    expect(results.filter((result) => result.status === 'fulfilled')).toHaveLength(200);
    const events = await eventsOf({ userId: user.id });
    expect(events.map((event) => event.type)).toEqual(['balance.low']);
    expect(events[0]?.data).toMatchObject({
      threshold: 100,
      available: 99,
      previousAvailable: 100,
      amount: -1,
    });
    // The entry it names is the one that took the balance from 100 to 99.
    const entry = await server.db
      .selectFrom('credits.transactions')
      .select(['available_after'])
      .where('id', '=', events[0]?.data.transactionId as string)
      .executeTakeFirstOrThrow();
    expect(entry.available_after).toBe(99);
  });

  it('hysteresis: concurrent debits and credits around the threshold alternate low and recovered, ending where the balance is', async () => {
    server.httpForThisTest(); // real parallel requests
    const user = await server.fundedUser(150);
    await internal().internal.credits.setAlerts.mutate({ userId: user.id, lowBalanceThreshold: 100 });
    const client = await server.userClient(user);
    // Four rounds of 60 concurrent calls, debit-heavy then credit-heavy (net −90, +90, …): each round crosses.
    for (let round = 0; round < 4; round++) {
      const debits = round % 2 === 0 ? 45 : 15;
      await Promise.allSettled(
        Array.from({ length: 60 }, (_, index) =>
          index < debits
            ? client.credits.use.mutate({ amount: 3, appId: 'mix', description: `r${round}-${index}` })
            : grant(user.id, 3),
        ),
      );
    }
    const events = await eventsOf({ userId: user.id });
    expect(events.length).toBeGreaterThanOrEqual(4);
    events.forEach((event, index) => {
      expect(event.type).toBe(index % 2 === 0 ? 'balance.low' : 'balance.recovered');
    });
    const { balance } = await client.credits.balance.query();
    expect(events.at(-1)?.type === 'balance.low').toBe(balance < 100);
  });

  it('holds fire nothing by themselves; the next ledger entry sees them (a commit names its usage entry)', async () => {
    const user = await server.fundedUser(100);
    await internal().internal.credits.setAlerts.mutate({ userId: user.id, lowBalanceThreshold: 50 });
    const reserve = (amount: number) =>
      internal().internal.credits.reserve.mutate({
        userId: user.id,
        amount,
        appId: 'app',
        description: 'hold',
        idempotencyKey: `hold-${randomUUID()}`,
      });
    const hold = await reserve(60); // available 40: no entry, no event
    expect(await eventsOf({ userId: user.id })).toEqual([]);
    const committed = await internal().internal.credits.commit.mutate({ reservationId: hold.reservationId });
    const second = await reserve(30); // available 10
    await internal().internal.credits.release.mutate({ reservationId: second.reservationId }); // 40 again
    await grant(user.id, 20); // 60
    const events = await eventsOf({ userId: user.id });
    expect(events.map((event) => event.type)).toEqual(['balance.low', 'balance.recovered']);
    expect(events[0]?.data).toMatchObject({
      transactionId: committed.transactionId,
      previousAvailable: 100,
      available: 40,
      amount: -60,
    });
    expect(events[1]?.data).toMatchObject({ previousAvailable: 40, available: 60, amount: 20 });
  });

  it('useBatch: one event per account and direction for a whole batch, for each account in it', async () => {
    const user = await server.fundedUser(100);
    const other = await server.fundedUser(30);
    const quiet = await server.fundedUser(30);
    await internal().internal.credits.setAlerts.mutate({ userId: user.id, lowBalanceThreshold: 60 });
    await internal().internal.credits.setAlerts.mutate({ userId: other.id, lowBalanceThreshold: 20 });
    const items = Array.from({ length: 100 }, (_, index) => ({
      userId: user.id,
      amount: 1,
      appId: 'batch',
      description: `#${index}`,
      idempotencyKey: `batch-${index}`,
    }));
    // Interleaved with two other accounts: one crossing its own threshold, one without alerts.
    for (const [index, id] of [other.id, quiet.id].entries()) {
      for (let n = 0; n < 15; n++) {
        items.splice(n * 5 + index, 0, {
          userId: id,
          amount: 1,
          appId: 'batch',
          description: 'o',
          idempotencyKey: `o-${n}`,
        });
      }
    }
    await internal().internal.credits.useBatch.mutate({ items });
    const events = await eventsOf({ userId: user.id });
    expect(events.map((event) => event.type)).toEqual(['balance.low', 'balance.depleted']);
    expect(events[0]?.data).toMatchObject({ available: 59, previousAvailable: 60 });
    const others = await eventsOf({ userId: other.id });
    expect(others.map((event) => [event.type, event.data.available])).toEqual([['balance.low', 19]]);
    expect(await eventsOf({ userId: quiet.id })).toEqual([]);
  });
  it('useBatch with a default threshold: it applies to accounts without a setting, not to one that opted out', async () => {
    // The default (LOW_BALANCE_THRESHOLD) is a row the server writes at start (prepareDatabase); set for this test.
    await writeDefaultLowBalanceThreshold(server.db, 50);
    try {
      const byDefault = await server.fundedUser(60);
      const optedOut = await server.fundedUser(60);
      const own = await server.fundedUser(60);
      await internal().internal.credits.setAlerts.mutate({ userId: optedOut.id, lowBalanceThreshold: null });
      await internal().internal.credits.setAlerts.mutate({ userId: own.id, lowBalanceThreshold: 5 });
      const items = [byDefault, optedOut, own].flatMap((user) =>
        Array.from({ length: 3 }, (_, index) => ({
          userId: user.id,
          amount: 5,
          appId: 'batch',
          description: `#${index}`,
          idempotencyKey: `default-${index}`,
        })),
      );
      await internal().internal.credits.useBatch.mutate({ items });
      // Funding (0 → 60, before the settings below) crossed the default upwards for all three; the batch
      // (60 → 45) crosses it downwards only for the account without a setting of its own.
      const typesOf = async (userId: string) =>
        (await eventsOf({ userId })).map((event) => [event.type, event.data.available]);
      expect(await typesOf(byDefault.id)).toEqual([
        ['balance.recovered', 60],
        ['balance.low', 45],
      ]);
      expect(await typesOf(optedOut.id)).toEqual([['balance.recovered', 60]]);
      expect(await typesOf(own.id)).toEqual([['balance.recovered', 60]]);
    } finally {
      await writeDefaultLowBalanceThreshold(server.db, null);
    }
  });
});

describe('guild pools', () => {
  it('guild.setAlerts (owner/admin): pool low, depleted, recovered; guild.member.limit_reached', async () => {
    const guildId = `guild-${randomUUID()}`;
    await internal().internal.guildPool.init.mutate({ guildId });
    const owner = newUser();
    const member = newUser();
    server.auth.setRole(guildId, owner.id, 'owner');
    server.auth.setRole(guildId, member.id, 'member');
    await grant(owner.id, 1000);
    const ownerClient = await server.userClient(owner);
    const memberClient = await server.userClient(member);

    const refused = await failure(memberClient.guild.setAlerts.mutate({ guildId, lowBalanceThreshold: 10 }));
    expect(refused.data?.code).toBe('FORBIDDEN');
    await ownerClient.guild.setAlerts.mutate({ guildId, lowBalanceThreshold: 100 });
    expect(await memberClient.guild.alerts.query({ guildId })).toEqual({
      lowBalanceThreshold: 100,
      usesDefault: false,
    });
    await ownerClient.guild.setMemberLimits.mutate({
      guildId,
      userId: member.id,
      dailyLimit: 60,
      monthlyLimit: null,
    });

    await ownerClient.guild.fund.mutate({ guildId, amount: 150 }); // recovered
    await memberClient.guild.use.mutate({ guildId, amount: 60, appId: 'app', description: 'x' }); // 90: low; limit reached
    await ownerClient.guild.use.mutate({ guildId, amount: 90, appId: 'app', description: 'y' }); // depleted
    await ownerClient.guild.fund.mutate({ guildId, amount: 200 }); // recovered

    const events = await receivedFor({ guildId }, 5);
    expect(events.map((event) => event.type)).toEqual([
      'guild.pool.recovered',
      'guild.pool.low',
      'guild.member.limit_reached',
      'guild.pool.depleted',
      'guild.pool.recovered',
    ]);
    expect(events[2]?.data).toMatchObject({
      guildId,
      userId: member.id,
      window: 'daily',
      limit: 60,
      used: 60,
      amount: 60,
      transactionId: expect.any(String),
      reservationId: null,
    });
    expect(events[1]?.data).toMatchObject({ guildId, threshold: 100, available: 90, memberId: member.id });
  });
});

/** A user's purchase of a new 100-credit package, paid and credited through the webhook. */
async function paidPurchase() {
  const pkg = await internal().internal.packages.upsert.mutate({
    name: 'Events',
    credits: 100,
    priceEuroCents: 1000,
    active: true,
    sortOrder: 1,
  });
  const user = newUser();
  const client: Client = await server.userClient(user);
  const started = await client.credits.purchase.mutate({ packageId: pkg.id });
  const row = await server.db
    .selectFrom('credits.purchases')
    .selectAll()
    .where('id', '=', started.purchaseId)
    .executeTakeFirstOrThrow();
  const intentId = row.stripe_payment_intent_id as string;
  const paid = stripe.event('payment_intent.succeeded', stripe.succeedPaymentIntent(intentId));
  expect((await stripe.deliver(server.url, paid)).status).toBe(200);
  return { pkg, user, client, started, intentId };
}

describe('gifts, holds and purchases', () => {
  it('gift.redeemed to the creator, gift.expired with the refund', async () => {
    const creator = await server.fundedUser(100);
    const creatorClient = await server.userClient(creator);
    const gift = await creatorClient.gifts.create.mutate({
      type: 'split',
      totalCredits: 30,
      totalPortions: 3,
    });
    const redeemer = newUser();
    const redeemed = await (await server.userClient(redeemer)).gifts.redeem.mutate({ code: gift.code });
    await server.db
      .updateTable('gifts.gift_codes')
      .set({ expires_at: sql<Date>`now() - interval '1 second'` })
      .where('id', '=', gift.id)
      .execute();
    const events = await receivedFor({ userId: creator.id }, 2);
    expect(events.map((event) => event.type)).toEqual(['gift.redeemed', 'gift.expired']);
    expect(events[0]?.data).toMatchObject({
      userId: creator.id,
      giftId: gift.id,
      redeemedBy: redeemer.id,
      credits: redeemed.creditsReceived,
      portion: 1,
      totalPortions: 3,
    });
    expect(events[1]?.data).toMatchObject({
      userId: creator.id,
      giftId: gift.id,
      refunded: 20,
      claimedPortions: 1,
    });
  });

  it('reservation.expired once per hold, by the sweep', async () => {
    const user = await server.fundedUser(100);
    const hold = await internal().internal.credits.reserve.mutate({
      userId: user.id,
      amount: 40,
      appId: 'app',
      description: 'hold',
      ttlSeconds: 1,
      idempotencyKey: `hold-${randomUUID()}`,
    });
    const [event] = await receivedFor({ userId: user.id }, 1);
    expect(event).toMatchObject({
      type: 'reservation.expired',
      data: { userId: user.id, reservationId: hold.reservationId, amount: 40, appId: 'app' },
    });
  });

  it('credits.expiring once per lot, then credits.expired with its expiry entry, by the sweep', async () => {
    const user = newUser();
    const expiresAt = new Date(Date.now() + 2500);
    await internal().internal.credits.grant.mutate({
      userId: user.id,
      amount: 25,
      reason: 'welcome bonus',
      idempotencyKey: `expiring-${randomUUID()}`,
      expiresAt,
    });
    // Only the lot events: the balance crossings of this account are tested above.
    const lotEvents = async (count: number) =>
      eventually(`${count} lot events`, () => {
        const seen = receiver
          .envelopes(all.secret)
          .filter((envelope) => envelope.data.userId === user.id && envelope.type.startsWith('credits.'));
        const unique = [...new Map(seen.map((envelope) => [envelope.id, envelope])).values()];
        return unique.length >= count ? unique : undefined;
      });
    const [expiring, expired] = await lotEvents(2);
    expect(expiring).toMatchObject({
      type: 'credits.expiring',
      data: { userId: user.id, amount: 25, category: 'promotional', source: 'grant' },
    });
    expect(new Date(String(expiring?.data.expiresAt)).getTime()).toBe(expiresAt.getTime());
    expect(expired).toMatchObject({
      type: 'credits.expired',
      data: { userId: user.id, lotId: expiring?.data.lotId, amount: 25, available: 0 },
    });
    const entry = await server.db
      .selectFrom('credits.transactions')
      .select(['type', 'amount'])
      .where('id', '=', String(expired?.data.transactionId))
      .executeTakeFirstOrThrow();
    expect(entry).toEqual({ type: 'expiry', amount: -25 });
    // Later sweeps notice and expire nothing more for it.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(await lotEvents(2)).toHaveLength(2);
  });

  it('purchase.completed and purchase.reversed (with unrecovered)', async () => {
    const { pkg, user, client, started, intentId } = await paidPurchase();
    await client.credits.use.mutate({ amount: 70, appId: 'app', description: 'spent' });
    const charge = stripe.chargeOf(intentId);
    const refund = stripe.event('charge.refunded', stripe.refundCharge(charge.id as string, 1000));
    expect((await stripe.deliver(server.url, refund)).status).toBe(200);

    const events = await receivedFor({ userId: user.id }, 2);
    expect(events.map((event) => event.type)).toEqual(['purchase.completed', 'purchase.reversed']);
    expect(events[0]?.data).toMatchObject({
      userId: user.id,
      purchaseId: started.purchaseId,
      packageId: pkg.id,
      credits: 100,
      priceEuroCents: 1000,
      currency: 'eur',
      transactionId: expect.any(String),
    });
    expect(events[1]?.data).toMatchObject({
      userId: user.id,
      purchaseId: started.purchaseId,
      clawedBack: 30,
      unrecovered: 70,
      totalClawedBack: 30,
      totalUnrecovered: 70,
      transactionId: expect.any(String),
    });
  });
});

describe('a dispute won', () => {
  it('purchase.reinstated gives back what the dispute took', async () => {
    const { user, started, intentId } = await paidPurchase();
    const dispute = stripe.disputeCharge(stripe.chargeOf(intentId).id as string, 400);
    expect((await stripe.deliver(server.url, stripe.event('charge.dispute.created', dispute))).status).toBe(
      200,
    );
    const won = stripe.event('charge.dispute.funds_reinstated', { ...dispute, status: 'won' });
    expect((await stripe.deliver(server.url, won)).status).toBe(200);

    const events = await receivedFor({ userId: user.id }, 3);
    expect(events.map((event) => event.type)).toEqual([
      'purchase.completed',
      'purchase.reversed',
      'purchase.reinstated',
    ]);
    expect(events[2]?.data).toMatchObject({
      userId: user.id,
      purchaseId: started.purchaseId,
      givenBack: 40,
      forgiven: 0,
      totalClawedBack: 0,
      totalUnrecovered: 0,
      transactionId: expect.any(String),
    });
  });
});

describe('auto top-up', () => {
  it('autotopup.failed when the saved card is declined (the job sends the payment)', async () => {
    const pkg = await internal().internal.packages.upsert.mutate({
      name: 'Auto',
      credits: 100,
      priceEuroCents: 1000,
      active: true,
      sortOrder: 1,
    });
    const user = newUser();
    const client: Client = await server.userClient(user);
    const started = await client.credits.autoTopUp.setup.mutate({ packageId: pkg.id, threshold: 50 });
    const setup = stripe.succeedSetupIntent(started.setupIntentId, { behaviour: 'declined' });
    expect((await stripe.deliver(server.url, stripe.event('setup_intent.succeeded', setup))).status).toBe(
      200,
    );
    await grant(user.id, 100);
    await client.credits.use.mutate({ amount: 60, appId: 'app', description: 'spent' });
    const failed = await eventually('autotopup.failed', () =>
      receiver
        .envelopes(all.secret)
        .find((envelope) => envelope.type === 'autotopup.failed' && envelope.data.userId === user.id),
    );
    expect(failed.data).toMatchObject({
      userId: user.id,
      packageId: pkg.id,
      reason: 'card_declined',
      attemptId: expect.any(String),
      purchaseId: expect.any(String),
    });
    expect(await client.credits.autoTopUp.get.query()).toMatchObject({ enabled: false });
  });
});

describe('delivery', () => {
  it('every emitted type reached the receiver, signed (Standard Webhooks), each event id once', async () => {
    const envelopes = await eventually('one of each type', () => {
      const seen = receiver.envelopes(all.secret);
      const types = new Set(seen.map((envelope) => envelope.type));
      return EMITTED_EVENT_TYPES.every((type) => types.has(type)) ? seen : undefined;
    });
    const ids = envelopes.map((envelope) => envelope.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const delivery of receiver.received) {
      expect(delivery.headers['webhook-id']).toBe(JSON.parse(delivery.body).id);
      expect(delivery.headers['webhook-signature']).toMatch(/^v1,[A-Za-z0-9+/]+=*$/);
      expect(delivery.headers['content-type']).toBe('application/json');
    }
    const listed = await internal().internal.webhooks.list.query();
    expect(listed.items.find((item) => item.id === all.id)).toMatchObject({
      enabled: true,
      failingSince: null,
    });
    expect(JSON.stringify(listed)).not.toContain(all.secret);
  });

  it('an endpoint gets only the types it subscribed to; a signature with another secret does not verify', async () => {
    const only = await WebhookReceiver.start();
    try {
      const endpoint = await internal().internal.webhooks.create.mutate({
        url: only.url,
        events: ['balance.low'],
      });
      const user = await server.fundedUser(100);
      await internal().internal.credits.setAlerts.mutate({ userId: user.id, lowBalanceThreshold: 50 });
      await (await server.userClient(user)).credits.use.mutate({
        amount: 100,
        appId: 'app',
        description: 'all',
      });
      const [delivery] = await eventually('the low event', () =>
        only.received.length > 0 ? only.received : undefined,
      );
      expect(only.verify(delivery!, endpoint.secret)).toMatchObject({
        type: 'balance.low',
        data: { userId: user.id },
      });
      expect(() => only.verify(delivery!, all.secret)).toThrow();
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(only.envelopes(endpoint.secret).map((envelope) => envelope.type)).toEqual(['balance.low']);
      await internal().internal.webhooks.delete.mutate({ id: endpoint.id });
    } finally {
      await only.close();
    }
  });

  it('rotateSecret: both secrets sign for 24 h, receivers with either verify', async () => {
    const other = await WebhookReceiver.start();
    try {
      const endpoint = await internal().internal.webhooks.create.mutate({
        url: other.url,
        events: ['balance.low'],
      });
      const rotated = await internal().internal.webhooks.rotateSecret.mutate({ id: endpoint.id });
      expect(rotated.secret).not.toBe(endpoint.secret);
      expect(rotated.secret).toMatch(/^whsec_[A-Za-z0-9+/]+=*$/);
      const expires = rotated.previousSecretExpiresAt?.getTime() ?? 0;
      expect(expires - Date.now()).toBeGreaterThan(23.9 * 3600_000);
      const user = await server.fundedUser(10);
      await internal().internal.credits.setAlerts.mutate({ userId: user.id, lowBalanceThreshold: 5 });
      await (await server.userClient(user)).credits.use.mutate({ amount: 6, appId: 'app', description: 'x' });
      const [delivery] = await eventually('a delivery', () =>
        other.received.length > 0 ? other.received : undefined,
      );
      expect(delivery?.headers['webhook-signature']?.toString().split(' ')).toHaveLength(2);
      expect(other.verify(delivery!, rotated.secret).data.userId).toBe(user.id);
      expect(other.verify(delivery!, endpoint.secret).data.userId).toBe(user.id);
      await internal().internal.webhooks.delete.mutate({ id: endpoint.id });
    } finally {
      await other.close();
    }
  });

  it('receiver down for a while, then up: everything delivered, retried with the same id', async () => {
    const flaky = await WebhookReceiver.start();
    try {
      flaky.mode = 'down';
      const endpoint = await internal().internal.webhooks.create.mutate({
        url: flaky.url,
        events: ['balance.low', 'balance.recovered'],
      });
      const users = await Promise.all(Array.from({ length: 5 }, () => server.fundedUser(100)));
      for (const user of users) {
        await internal().internal.credits.setAlerts.mutate({ userId: user.id, lowBalanceThreshold: 50 });
        await internal().internal.credits.use.mutate({
          userId: user.id,
          amount: 60,
          appId: 'app',
          description: 'x',
        });
      }
      await eventually('failed attempts', async () => {
        const page = await internal().internal.webhooks.deliveries.query({ webhookId: endpoint.id });
        return (
          page.items.length === 5 &&
          page.items.every((item) => item.attempts >= 2 && item.status === 'pending')
        );
      });
      const listed = await internal().internal.webhooks.list.query();
      expect(listed.items.find((item) => item.id === endpoint.id)?.failingSince).toBeInstanceOf(Date);
      flaky.mode = 'ok';
      await eventually('all delivered', async () => {
        const page = await internal().internal.webhooks.deliveries.query({ webhookId: endpoint.id });
        return page.items.every((item) => item.status === 'delivered') ? page : undefined;
      });
      const envelopes = flaky.envelopes(endpoint.secret);
      const ids = new Set(envelopes.map((envelope) => envelope.id));
      expect(ids.size).toBe(5);
      // Never the same event under two ids: one id per user's low event.
      const byUser = new Map<string, Set<string>>();
      for (const envelope of envelopes) {
        const set = byUser.get(envelope.data.userId as string) ?? new Set();
        set.add(envelope.id);
        byUser.set(envelope.data.userId as string, set);
      }
      expect([...byUser.values()].map((set) => set.size)).toEqual([1, 1, 1, 1, 1]);
      expect(
        (await internal().internal.webhooks.list.query()).items.find((item) => item.id === endpoint.id),
      ).toMatchObject({
        enabled: true,
        failingSince: null,
      });
      await internal().internal.webhooks.delete.mutate({ id: endpoint.id });
    } finally {
      await flaky.close();
    }
  });

  it('retries are used up after the schedule; replay sends the event again under the same id', async () => {
    const failing = await WebhookReceiver.start();
    try {
      failing.mode = 'failing';
      const endpoint = await internal().internal.webhooks.create.mutate({
        url: failing.url,
        events: ['balance.low'],
      });
      const user = await server.fundedUser(100);
      await internal().internal.credits.setAlerts.mutate({ userId: user.id, lowBalanceThreshold: 50 });
      await internal().internal.credits.use.mutate({
        userId: user.id,
        amount: 60,
        appId: 'app',
        description: 'x',
      });
      const failed = await eventually('the delivery to fail for good', async () => {
        const page = await internal().internal.webhooks.deliveries.query({ webhookId: endpoint.id });
        return page.items[0]?.status === 'failed' ? page.items[0] : undefined;
      });
      // 4 retries after the first attempt, 500 each time.
      expect(failed).toMatchObject({
        attempts: 5,
        lastStatus: 500,
        lastError: 'answered 500',
        kind: 'original',
      });
      expect(failing.received).toHaveLength(5);
      expect(new Set(failing.received.map((delivery) => delivery.headers['webhook-id'])).size).toBe(1);

      failing.mode = 'ok';
      const replay = await internal().internal.webhooks.replay.mutate({
        eventId: failed.eventId,
        webhookId: endpoint.id,
      });
      expect(replay.deliveries).toHaveLength(1);
      await eventually('the replay', async () => {
        const page = await internal().internal.webhooks.deliveries.query({ webhookId: endpoint.id });
        return page.items.find((item) => item.kind === 'replay')?.status === 'delivered';
      });
      expect(failing.verify(failing.received.at(-1)!, endpoint.secret).id).toBe(failed.eventId);
      const missing = await failure(internal().internal.webhooks.replay.mutate({ eventId: randomUUID() }));
      expect(missing.data).toMatchObject({ code: 'NOT_FOUND', reason: 'EVENT_NOT_FOUND' });
      await internal().internal.webhooks.delete.mutate({ id: endpoint.id });
    } finally {
      await failing.close();
    }
  });

  it('update changes url, types and description; enabled=false pauses, true resumes; delete removes', async () => {
    const endpoint = await internal().internal.webhooks.create.mutate({
      url: receiver.url,
      events: ['gift.expired'],
    });
    const updated = await internal().internal.webhooks.update.mutate({
      id: endpoint.id,
      events: null,
      description: 'all of them',
      enabled: false,
    });
    expect(updated).toMatchObject({
      events: null,
      description: 'all of them',
      enabled: false,
      disabledReason: 'disabled by an operator',
    });
    const enabled = await internal().internal.webhooks.update.mutate({ id: endpoint.id, enabled: true });
    expect(enabled).toMatchObject({ enabled: true, disabledReason: null });
    expect(await internal().internal.webhooks.delete.mutate({ id: endpoint.id })).toEqual({ deleted: true });
    const gone = await failure(internal().internal.webhooks.delete.mutate({ id: endpoint.id }));
    expect(gone.data).toMatchObject({ code: 'NOT_FOUND', reason: 'WEBHOOK_NOT_FOUND' });
    const badTypes = await failure(
      internal().internal.webhooks.create.mutate({
        url: receiver.url,
        events: ['balance.lowish' as 'balance.low'],
      }),
    );
    expect(badTypes.data?.code).toBe('BAD_REQUEST');
    expect(badTypes.message).toContain('events.0');
    const badUrl = await failure(internal().internal.webhooks.create.mutate({ url: 'ftp://example.com/x' }));
    expect(badUrl.message).toContain('url');
  });
});

describe('internal.events.list', () => {
  it('pages every event once in commit order with a cursor, filters by type', async () => {
    await eventually('everything relayed', async () => {
      const { rows } = await sql<{
        n: number;
      }>`select count(*)::int as n from credits.events where position is null`.execute(server.db);
      return rows[0]?.n === 0;
    });
    const total = await server.db
      .selectFrom('credits.events')
      .select(sql<number>`count(*)::int`.as('n'))
      .executeTakeFirstOrThrow();
    const seen: string[] = [];
    let cursor: string | undefined;
    for (;;) {
      const page = await internal().internal.events.list.query({
        limit: 7,
        ...(cursor ? { after: cursor } : {}),
      });
      seen.push(...page.items.map((item) => item.id));
      if (page.items.length === 0) break;
      expect(Number(page.cursor)).toBeGreaterThan(Number(cursor ?? 0));
      cursor = page.cursor;
    }
    expect(seen.length).toBeGreaterThanOrEqual(total.n);
    expect(new Set(seen).size).toBe(seen.length);
    const positions = await server.db
      .selectFrom('credits.events')
      .select(['id', 'position'])
      .where('id', 'in', seen)
      .orderBy('position')
      .execute();
    expect(positions.map((row) => row.id)).toEqual(seen);

    const lows = await internal().internal.events.list.query({ types: ['balance.low'], limit: 1000 });
    expect(lows.items.length).toBeGreaterThan(0);
    expect(lows.items.every((item) => item.type === 'balance.low')).toBe(true);
    const after = await internal().internal.events.list.query({ after: lows.cursor, types: ['balance.low'] });
    expect(after.items).toEqual([]);
    expect(after.cursor).toBe(lows.cursor);
    const bad = await failure(internal().internal.events.list.query({ after: 'x' }));
    expect(bad.message).toContain('after');
  });
});
