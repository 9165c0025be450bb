import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reconcile } from '../src/domain/audit/reconcile.ts';
import { failure } from './helpers/errors.ts';
import { expectLedgerConsistent, ledgerSum } from './helpers/invariants.ts';
import { type Client, startTestServer, type TestServer } from './helpers/server.ts';
import { TestStripeServer } from './helpers/stripe-server.ts';

// Issue 13.1: keys the service makes itself live in a namespace no caller key can reach. Each test first
// plants every key shape a caller could guess (the old `purchase:<id>`, `clawback:<id>:<n>`, …) through the
// public API, then runs the flow: the credit, the clawback, the gift and the commit still happen once.

let server: TestServer;
let stripe: TestStripeServer;

beforeAll(async () => {
  stripe = await TestStripeServer.start();
  // Calls run in process (helpers/server.ts: Transport).
  server = await startTestServer(
    {
      STRIPE_SECRET_KEY: stripe.secretKey,
      STRIPE_WEBHOOK_SECRET: stripe.webhookSecret,
      STRIPE_API_URL: stripe.url,
    },
    { transport: 'in-process' },
  );
});
afterAll(async () => {
  await expectLedgerConsistent(server.deps.db);
  await server?.close();
  await stripe?.close();
});

const internal = () => server.internalClient().internal.credits;

/** Spends one credit under `key` through the user's API and one under `${key}:svc` through the service API. */
async function plant(client: Client, userId: string, key: string) {
  await client.credits.use.mutate({ amount: 1, appId: 'planter', description: 'plant', idempotencyKey: key });
  await internal().use.mutate({
    userId,
    amount: 1,
    appId: 'planter',
    description: 'plant',
    idempotencyKey: `${key}:svc`,
  });
}

async function ledgerOf(userId: string) {
  return server.deps.db
    .selectFrom('credits.transactions')
    .select(['type', 'amount'])
    .where('user_id', '=', userId)
    .where('type', 'in', ['purchase', 'clawback', 'gift', 'refund'])
    .orderBy('created_at')
    .execute();
}

describe('system keys cannot be taken by callers', () => {
  it('a key in the system namespace is refused as input, naming the field, on every keyed call', async () => {
    const user = await server.fundedUser(10);
    const client = await server.userClient(user);
    const systemShaped = `\u001fpurchase:${randomUUID()}`;
    const refusals = await Promise.all([
      failure(
        client.credits.use.mutate({ amount: 1, appId: 'a', description: 'd', idempotencyKey: systemShaped }),
      ),
      failure(
        internal().use.mutate({
          userId: user.id,
          amount: 1,
          appId: 'a',
          description: 'd',
          idempotencyKey: systemShaped,
        }),
      ),
      failure(
        internal().grant.mutate({ userId: user.id, amount: 1, reason: 'r', idempotencyKey: systemShaped }),
      ),
      failure(
        internal().reserve.mutate({
          userId: user.id,
          amount: 1,
          appId: 'a',
          description: 'd',
          idempotencyKey: systemShaped,
        }),
      ),
    ]);
    for (const refusal of refusals) {
      expect(refusal.data?.httpStatus).toBe(400);
      expect(refusal.data?.reason).toBe('VALIDATION');
      expect(refusal.message).toContain('idempotencyKey');
    }
    const batch = await internal().useBatch.mutate({
      items: [{ userId: user.id, amount: 1, appId: 'a', description: 'd', idempotencyKey: systemShaped }],
    });
    expect(batch.results[0]).toMatchObject({ ok: false, error: { reason: 'VALIDATION' } });
    expect(await ledgerSum(server.deps.db, user.id)).toBe(10);
  });

  it('a planted purchase:<id> and clawback:<id>:<n> change nothing: the purchase is credited and clawed back once', async () => {
    const created = await server.internalClient().internal.packages.upsert.mutate({
      name: 'Planted',
      credits: 100,
      priceEuroCents: 999,
      active: true,
      sortOrder: 1,
    });
    const user = await server.fundedUser(200);
    const client = await server.userClient(user);
    const started = await client.credits.purchase.mutate({ packageId: created.id });
    const id = started.purchaseId;
    for (const key of [`purchase:${id}`, `clawback:${id}:33`, `clawback:${id}:66`, `clawback:${id}:100`]) {
      await plant(client, user.id, key);
    }
    expect(await ledgerSum(server.deps.db, user.id)).toBe(200 - 8);

    const { stripe_payment_intent_id: intentId } = await server.deps.db
      .selectFrom('credits.purchases')
      .select('stripe_payment_intent_id')
      .where('id', '=', id)
      .executeTakeFirstOrThrow();
    const succeeded = stripe.event('payment_intent.succeeded', stripe.succeedPaymentIntent(intentId!));
    expect((await stripe.deliver(server.url, succeeded)).status).toBe(200);
    expect((await stripe.deliver(server.url, succeeded)).status).toBe(200);
    expect(await client.credits.purchaseStatus.query({ purchaseId: id })).toMatchObject({
      status: 'completed',
    });

    const chargeId = stripe.chargeOf(intentId!).id as string;
    const partial = stripe.event('charge.refunded', stripe.refundCharge(chargeId, 333));
    expect((await stripe.deliver(server.url, partial)).status).toBe(200);
    const dispute = stripe.event('charge.dispute.created', stripe.disputeCharge(chargeId, 999));
    expect((await stripe.deliver(server.url, dispute)).status).toBe(200);
    expect((await stripe.deliver(server.url, dispute)).status).toBe(200);

    expect((await ledgerOf(user.id)).map((row) => [row.type, row.amount])).toEqual([
      ['purchase', 100],
      ['clawback', -33],
      ['clawback', -67],
    ]);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(192);
    const report = await reconcile(server.deps.db);
    expect(report.checks.filter((check) => !check.ok)).toEqual([]);
  });

  it('planted gift-shaped keys change nothing: escrow, every claim and the refund happen once', async () => {
    const creator = await server.fundedUser(100);
    const creatorClient = await server.userClient(creator);
    const gift = await creatorClient.gifts.create.mutate({
      type: 'split',
      totalCredits: 30,
      totalPortions: 3,
    });
    for (const key of [`gift-escrow:${gift.id}`, `gift-refund:${gift.id}`, `gift:${gift.id}`]) {
      await plant(creatorClient, creator.id, key);
    }
    const redeemer = await server.fundedUser(10);
    const redeemerClient = await server.userClient(redeemer);
    for (const key of [`gift-redeem:${gift.id}:1`, `gift-redeem:${gift.id}:0`]) {
      await plant(redeemerClient, redeemer.id, key);
    }
    expect(await redeemerClient.gifts.redeem.mutate({ code: gift.code })).toMatchObject({
      creditsReceived: 10,
    });
    expect(await creatorClient.gifts.cancel.mutate({ id: gift.id })).toEqual({ refunded: 20 });
    expect(await creatorClient.gifts.cancel.mutate({ id: gift.id })).toEqual({ refunded: 20 });
    expect((await ledgerOf(redeemer.id)).map((row) => [row.type, row.amount])).toEqual([['gift', 10]]);
    expect((await ledgerOf(creator.id)).map((row) => [row.type, row.amount])).toEqual([
      ['gift', -30],
      ['refund', 20],
    ]);
    expect(await ledgerSum(server.deps.db, creator.id)).toBe(100 - 6 - 30 + 20);
  });

  it('a planted reservation:<id> changes nothing: the commit posts once', async () => {
    const user = await server.fundedUser(100);
    const client = await server.userClient(user);
    const hold = await internal().reserve.mutate({
      userId: user.id,
      amount: 40,
      appId: 'chat',
      description: 'hold',
      idempotencyKey: `hold-${randomUUID()}`,
    });
    await plant(client, user.id, `reservation:${hold.reservationId}`);
    const planted = await failure(
      client.credits.use.mutate({
        amount: 1,
        appId: 'planter',
        description: 'plant',
        idempotencyKey: `\u001freservation:${hold.reservationId}`,
      }),
    );
    expect(planted.data?.reason).toBe('VALIDATION');
    const committed = await internal().commit.mutate({ reservationId: hold.reservationId, amount: 25 });
    expect(committed).toMatchObject({ committed: 25, released: 15 });
    expect(await internal().commit.mutate({ reservationId: hold.reservationId, amount: 25 })).toEqual(
      committed,
    );
    expect(await ledgerSum(server.deps.db, user.id)).toBe(100 - 2 - 25);
  });
});
