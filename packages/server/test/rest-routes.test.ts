import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectLedgerConsistent, ledgerSum } from './helpers/invariants.ts';
import { type Answer, type CallOptions, restCaller } from './helpers/rest.ts';
import { newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';
import { TestStripeServer } from './helpers/stripe-server.ts';

// The REST routes of purchases, guild pools, gifts and reservations, each against a live server with the
// statuses it answers; every answer is checked against the OpenAPI document (helpers/rest.ts).

const GIFT_INFO_LIMIT = 6;

let server: TestServer;
let stripe: TestStripeServer;
let call: (route: string, options?: CallOptions) => Promise<Answer>;

beforeAll(async () => {
  stripe = await TestStripeServer.start();
  server = await startTestServer({
    STRIPE_SECRET_KEY: stripe.secretKey,
    STRIPE_WEBHOOK_SECRET: stripe.webhookSecret,
    STRIPE_API_URL: stripe.url,
    GIFT_INFO_RATE_LIMIT_PER_MINUTE: String(GIFT_INFO_LIMIT),
  });
  ({ call } = await restCaller(server));
});
afterAll(async () => {
  await expectLedgerConsistent(server.deps.db);
  await server?.close();
  await stripe?.close();
});

const service = { serviceKey: SERVICE_KEY };

async function fundedUser(amount: number) {
  const user = newUser();
  if (amount > 0) {
    const grant = await call('POST /api/v1/internal/credits/grant', {
      ...service,
      body: { userId: user.id, amount, reason: 'funds', idempotencyKey: randomUUID() },
    });
    expect(grant.status).toBe(200);
  }
  return { user, token: await server.auth.sign(user) };
}

describe('purchases', () => {
  it('POST purchase, GET purchases, GET purchase/{purchaseId}: 200, 404, 412, 401', async () => {
    const pack = await server.internalClient().internal.packages.upsert.mutate({
      name: 'Standard',
      credits: 100,
      priceEuroCents: 999,
      active: true,
      sortOrder: 1,
    });
    const { token } = await fundedUser(0);
    const started = await call('POST /api/v1/credits/purchase', { token, body: { packageId: pack.id } });
    expect(started.status).toBe(200);
    expect(started.body).toMatchObject({ credits: 100, amount: 999, clientSecret: expect.any(String) });

    const list = await call('GET /api/v1/credits/purchases', { token, query: { limit: '5' } });
    expect(list.status).toBe(200);
    expect(list.body.items.map((item: { id: string }) => item.id)).toEqual([started.body.purchaseId]);

    const status = await call('GET /api/v1/credits/purchase/{purchaseId}', {
      token,
      params: { purchaseId: started.body.purchaseId },
    });
    expect(status.status).toBe(200);
    expect(status.body).toMatchObject({ status: 'pending', credits: 100, completedAt: null });

    const unknown = await call('GET /api/v1/credits/purchase/{purchaseId}', {
      token,
      params: { purchaseId: randomUUID() },
    });
    expect(unknown.status).toBe(404);
    const noPackage = await call('POST /api/v1/credits/purchase', {
      token,
      body: { packageId: randomUUID() },
    });
    expect(noPackage.status).toBe(404);
    await server.internalClient().internal.packages.upsert.mutate({
      id: pack.id,
      name: 'Standard',
      credits: 100,
      priceEuroCents: 999,
      active: false,
      sortOrder: 1,
    });
    const inactive = await call('POST /api/v1/credits/purchase', { token, body: { packageId: pack.id } });
    expect(inactive.status).toBe(412);
    expect(inactive.body.error.reason).toBe('PACKAGE_INACTIVE');
    expect((await call('GET /api/v1/credits/purchases')).status).toBe(401);
  });
});

describe('guild pools', () => {
  it('init, fund, balance, limits, use, transactions with 200, 400, 402, 403, 404, 412', async () => {
    const guildId = `guild-${randomUUID()}`;
    const owner = await fundedUser(100);
    const member = await fundedUser(0);
    const outsider = await fundedUser(0);
    server.auth.setRole(guildId, owner.user.id, 'owner');
    server.auth.setRole(guildId, member.user.id, 'member');
    const path = { guildId };

    const missing = await call('GET /api/v1/credits/guild/{guildId}/balance', {
      token: owner.token,
      params: path,
    });
    expect(missing.status).toBe(404);
    const init = await call('POST /api/v1/internal/guild-pool/init', { ...service, body: { guildId } });
    expect(init.status).toBe(200);
    expect(init.body).toMatchObject({ guildId, balance: 0, created: true });

    const fund = await call('POST /api/v1/credits/guild/{guildId}/fund', {
      token: owner.token,
      params: path,
      body: { amount: 60, idempotencyKey: 'fund-1' },
    });
    expect(fund.status).toBe(200);
    expect(fund.body).toEqual({ poolBalance: 60, personalBalance: 40 });
    const overdraw = await call('POST /api/v1/credits/guild/{guildId}/fund', {
      token: owner.token,
      params: path,
      body: { amount: 41 },
    });
    expect(overdraw.status).toBe(402);
    const inBody = await call('POST /api/v1/credits/guild/{guildId}/fund', {
      token: owner.token,
      params: path,
      body: { guildId, amount: 1 },
    });
    expect(inBody.status).toBe(400);

    const balance = await call('GET /api/v1/credits/guild/{guildId}/balance', {
      token: member.token,
      params: path,
    });
    expect(balance.status).toBe(200);
    expect(balance.body).toMatchObject({ guildId, balance: 60, totalFunded: 60 });
    const outside = await call('GET /api/v1/credits/guild/{guildId}/balance', {
      token: outsider.token,
      params: path,
    });
    expect(outside.status).toBe(403);

    const limits = { guildId, userId: member.user.id };
    const set = await call('PUT /api/v1/credits/guild/{guildId}/members/{userId}/limits', {
      token: owner.token,
      params: limits,
      body: { dailyLimit: 10, monthlyLimit: null },
    });
    expect(set.status).toBe(200);
    expect(set.body).toEqual({
      dailyLimit: 10,
      monthlyLimit: null,
      spentToday: 0,
      spentThisMonth: 0,
      heldToday: 0,
      heldThisMonth: 0,
    });
    const notManager = await call('PUT /api/v1/credits/guild/{guildId}/members/{userId}/limits', {
      token: member.token,
      params: limits,
      body: { dailyLimit: 1000, monthlyLimit: null },
    });
    expect(notManager.status).toBe(403);

    const use = await call('POST /api/v1/credits/guild/{guildId}/use', {
      token: member.token,
      params: path,
      body: { amount: 7, appId: 'chat', description: 'pool reply', idempotencyKey: 'use-1' },
    });
    expect(use.status).toBe(200);
    expect(use.body).toEqual({ transactionId: expect.any(String), poolBalance: 53 });
    const overLimit = await call('POST /api/v1/credits/guild/{guildId}/use', {
      token: member.token,
      params: path,
      body: { amount: 4, appId: 'chat', description: 'too much today' },
    });
    expect(overLimit.status).toBe(412);
    expect(overLimit.body.error).toMatchObject({
      reason: 'DAILY_LIMIT_EXCEEDED',
      details: { limit: 10, spent: 7, requested: 4 },
    });

    const seen = await call('GET /api/v1/credits/guild/{guildId}/members/{userId}/limits', {
      token: member.token,
      params: limits,
    });
    expect(seen.status).toBe(200);
    expect(seen.body).toMatchObject({ dailyLimit: 10, spentToday: 7 });

    const history = await call('GET /api/v1/credits/guild/{guildId}/transactions', {
      token: owner.token,
      params: path,
      query: { limit: '10' },
    });
    expect(history.status).toBe(200);
    expect(
      history.body.items.map((item: { type: string; amount: number }) => [item.type, item.amount]),
    ).toEqual([
      ['usage', -7],
      ['funding', 60],
    ]);
    expect((await call('GET /api/v1/credits/guild/{guildId}/transactions', { params: path })).status).toBe(
      401,
    );
  });
});

describe('gifts', () => {
  it('create, info, redeem, lists, cancel with 200, 402, 403, 404, 409, 429', async () => {
    const creator = await fundedUser(50);
    const friend = await fundedUser(0);
    const created = await call('POST /api/v1/gifts', {
      token: creator.token,
      body: { type: 'simple', totalCredits: 10, message: 'for you', idempotencyKey: 'gift-1' },
    });
    expect(created.status).toBe(200);
    const { code, id } = created.body;
    const tooBig = await call('POST /api/v1/gifts', {
      token: creator.token,
      body: { type: 'simple', totalCredits: 41 },
    });
    expect(tooBig.status).toBe(402);

    const info = await call('GET /api/v1/gifts/{code}', { params: { code } });
    expect(info.status).toBe(200);
    expect(info.body).toMatchObject({ code, type: 'simple', status: 'active', creditsPerPortion: 10 });
    expect((await call('GET /api/v1/gifts/{code}', { params: { code: 'NO-SUCH-GIFT' } })).status).toBe(404);

    const own = await call('POST /api/v1/gifts/{code}/redeem', {
      token: creator.token,
      params: { code },
      body: {},
    });
    expect(own.status).toBe(403);
    const redeemed = await call('POST /api/v1/gifts/{code}/redeem', {
      token: friend.token,
      params: { code },
    });
    expect(redeemed.status).toBe(200);
    expect(redeemed.body).toEqual({ giftId: id, creditsReceived: 10, balance: 10 });
    const again = await call('POST /api/v1/gifts/{code}/redeem', { token: friend.token, params: { code } });
    expect(again.status).toBe(409);

    const mine = await call('GET /api/v1/gifts/me/created', { token: creator.token });
    expect(mine.status).toBe(200);
    expect(mine.body.items).toMatchObject([{ id, status: 'depleted', claimedPortions: 1 }]);
    const received = await call('GET /api/v1/gifts/me/received', {
      token: friend.token,
      query: { limit: '1' },
    });
    expect(received.status).toBe(200);
    expect(received.body.items).toMatchObject([{ giftId: id, creditsReceived: 10 }]);

    const second = await call('POST /api/v1/gifts', {
      token: creator.token,
      body: { type: 'split', totalCredits: 20, totalPortions: 2 },
    });
    const notYours = await call('DELETE /api/v1/gifts/{id}', {
      token: friend.token,
      params: { id: second.body.id },
    });
    expect(notYours.status).toBe(403);
    const cancelled = await call('DELETE /api/v1/gifts/{id}', {
      token: creator.token,
      params: { id: second.body.id },
    });
    expect(cancelled.status).toBe(200);
    expect(cancelled.body).toEqual({ refunded: 20 });
    expect(
      (await call('DELETE /api/v1/gifts/{id}', { token: creator.token, params: { id: randomUUID() } }))
        .status,
    ).toBe(404);
    expect(await ledgerSum(server.deps.db, creator.user.id)).toBe(40);

    // Gift info is rate limited per client: this test has made 2 lookups so far.
    const statuses: number[] = [];
    for (let attempt = 0; attempt < GIFT_INFO_LIMIT; attempt++) {
      statuses.push((await call('GET /api/v1/gifts/{code}', { params: { code } })).status);
    }
    expect(statuses.slice(-2)).toEqual([429, 429]);
  });

  it('POST internal/gifts/redeem-pending redeems gifts waiting for an email: 200, 400, 401', async () => {
    const creator = await fundedUser(30);
    const email = `new-${randomUUID()}@example.test`;
    const gift = await call('POST /api/v1/gifts', {
      token: creator.token,
      body: { type: 'personalized', totalCredits: 12, targetEmail: email },
    });
    expect(gift.status).toBe(200);
    const userId = `user-${randomUUID()}`;
    const pending = await call('POST /api/v1/internal/gifts/redeem-pending', {
      ...service,
      body: { userId, email },
    });
    expect(pending.status).toBe(200);
    expect(pending.body).toEqual({ redeemed: 1, totalCredits: 12 });
    expect(await ledgerSum(server.deps.db, userId)).toBe(12);
    expect(
      (
        await call('POST /api/v1/internal/gifts/redeem-pending', {
          ...service,
          body: { userId, email: 'nope' },
        })
      ).status,
    ).toBe(400);
    expect(
      (await call('POST /api/v1/internal/gifts/redeem-pending', { body: { userId, email } })).status,
    ).toBe(401);
  });
});

describe('reservations', () => {
  it('reserve, commit, release with 200, 402, 404, 409', async () => {
    const { user } = await fundedUser(100);
    const hold = { userId: user.id, appId: 'images', description: 'render' };
    const reserved = await call('POST /api/v1/internal/credits/reserve', {
      ...service,
      body: { ...hold, amount: 40, idempotencyKey: 'hold-1' },
    });
    expect(reserved.status).toBe(200);
    expect(reserved.body.balance).toBe(60);
    const tooMuch = await call('POST /api/v1/internal/credits/reserve', {
      ...service,
      body: { ...hold, amount: 61, idempotencyKey: 'hold-2' },
    });
    expect(tooMuch.status).toBe(402);

    const committed = await call('POST /api/v1/internal/credits/commit', {
      ...service,
      body: { reservationId: reserved.body.reservationId, amount: 25 },
    });
    expect(committed.status).toBe(200);
    expect(committed.body).toMatchObject({ committed: 25, released: 15, balance: 75 });
    const releaseCommitted = await call('POST /api/v1/internal/credits/release', {
      ...service,
      body: { reservationId: reserved.body.reservationId },
    });
    expect(releaseCommitted.status).toBe(409);

    const second = await call('POST /api/v1/internal/credits/reserve', {
      ...service,
      body: { ...hold, amount: 30, idempotencyKey: 'hold-3' },
    });
    const release = await call('POST /api/v1/internal/credits/release', {
      ...service,
      body: { reservationId: second.body.reservationId },
    });
    expect(release.status).toBe(200);
    expect(release.body).toEqual({ released: 30, balance: 75 });
    const unknown = await call('POST /api/v1/internal/credits/commit', {
      ...service,
      body: { reservationId: randomUUID() },
    });
    expect(unknown.status).toBe(404);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(75);
  });
});
