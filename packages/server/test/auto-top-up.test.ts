import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { sql } from 'kysely';
import Stripe from 'stripe';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  AUTO_TOP_UP_GIVE_UP_HOURS,
  AUTO_TOP_UP_SEND_HOURS,
  runAutoTopUps,
} from '../src/domain/stripe/auto-top-up.ts';
import { recordAutoTopUpFailure } from '../src/domain/stripe/auto-top-up-failure.ts';
import { expectLedgerConsistent } from './helpers/invariants.ts';
import { type Answer, type CallOptions, restCaller } from './helpers/rest.ts';
import { type Client, newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';
import { whileAnotherSession } from './helpers/sessions.ts';
import { type TestCardBehaviour, TestStripeServer } from './helpers/stripe-server.ts';
import { eventually } from './helpers/webhook-receiver.ts';

// Auto top-up (issue 19) against the local Stripe-speaking server: saving a card (SetupIntent), the crossing
// that records one attempt, the worker's off-session payment keyed by the attempt id, declines, lost answers,
// webhooks twice and out of order, maxPerMonth. The worker is driven by hand (AUTO_TOP_UP_INTERVAL_MS=0), so
// each test decides when payments are sent. The file ends with the full reconcile (helpers/server.ts).

let server: TestServer;
let stripe: TestStripeServer;
let call: (route: string, options?: CallOptions) => Promise<Answer>;
let packageId: string;

const PACKAGE_CREDITS = 100;
const PACKAGE_PRICE = 999;

beforeAll(async () => {
  stripe = await TestStripeServer.start();
  // Calls run in process (helpers/server.ts: Transport), the concurrent ones over HTTP.
  server = await startTestServer(
    {
      STRIPE_SECRET_KEY: stripe.secretKey,
      STRIPE_WEBHOOK_SECRET: stripe.webhookSecret,
      STRIPE_API_URL: stripe.url,
      AUTO_TOP_UP_INTERVAL_MS: '0',
      WEBHOOK_DELIVERY_INTERVAL_MS: '0',
      DB_POOL_SIZE: '20',
    },
    { transport: 'in-process' },
  );
  ({ call } = await restCaller(server));
  const pack = await server.internalClient().internal.packages.upsert.mutate({
    name: 'Top-up',
    credits: PACKAGE_CREDITS,
    priceEuroCents: PACKAGE_PRICE,
    active: true,
    sortOrder: 1,
  });
  packageId = pack.id;
});
afterEach(async () => {
  stripe.mode = 'ok';
  await expectLedgerConsistent(server.deps.db);
});
afterAll(async () => {
  await server?.close();
  await stripe?.close();
});

const worker = () => runAutoTopUps({ db: server.deps.db, stripe: server.deps.stripe });
const deliver = (event: Record<string, unknown>) => stripe.deliver(server.url, event);
const internal = () => server.internalClient();

async function grant(userId: string, amount: number) {
  await internal().internal.credits.grant.mutate({
    userId,
    amount,
    reason: 'test funds',
    idempotencyKey: `grant-${randomUUID()}`,
  });
}

async function spend(client: Client, amount: number) {
  return client.credits.use.mutate({ amount, appId: 'app', description: 'spend' });
}

async function balanceOf(userId: string) {
  return (await internal().internal.credits.balance.query({ userId })).balance;
}

async function attemptsOf(userId: string) {
  return server.db
    .selectFrom('credits.auto_top_up_attempts')
    .selectAll()
    .where('user_id', '=', userId)
    .orderBy('created_at')
    .execute();
}

async function purchaseCreditsOf(userId: string) {
  return server.db
    .selectFrom('credits.transactions')
    .select(['amount', 'idempotency_key', 'metadata'])
    .where('user_id', '=', userId)
    .where('type', '=', 'purchase')
    .execute();
}

async function eventsOf(userId: string, type: string) {
  return server.db
    .selectFrom('credits.events')
    .select(['id', 'data'])
    .where('user_id', '=', userId)
    .where('type', '=', type)
    .orderBy('seq')
    .execute();
}

/** Lets a leased attempt be claimed again at once (as if its lease ran out after a crash). */
async function expireLeases(userId: string) {
  await sql`update credits.auto_top_up_attempts set next_attempt_at = now() where user_id = ${userId}`.execute(
    server.db,
  );
}

/** A user with `funds` credits whose auto top-up is on with a saved card behaving as `behaviour`. */
async function enrolledUser(options: {
  funds: number;
  threshold: number;
  maxPerMonth?: number;
  behaviour?: TestCardBehaviour;
}) {
  const user = newUser();
  const client = await server.userClient(user);
  if (options.funds > 0) await grant(user.id, options.funds);
  const started = await client.credits.autoTopUp.setup.mutate({
    packageId,
    threshold: options.threshold,
    ...(options.maxPerMonth ? { maxPerMonth: options.maxPerMonth } : {}),
  });
  const setup = stripe.succeedSetupIntent(started.setupIntentId, {
    brand: 'mastercard',
    last4: '4444',
    behaviour: options.behaviour ?? 'ok',
  });
  expect((await deliver(stripe.event('setup_intent.succeeded', setup))).status).toBe(200);
  const paymentMethodId = setup.payment_method as string;
  return { user, client, paymentMethodId };
}

describe('setup, get, disable', () => {
  it('setup_intent.succeeded: a card detached before it arrives saves nothing; a Stripe failure is a 503 retried', async () => {
    const user = newUser();
    const client = await server.userClient(user);
    const gone = await client.credits.autoTopUp.setup.mutate({ packageId, threshold: 10 });
    const succeeded = stripe.succeedSetupIntent(gone.setupIntentId);
    // payment_method.detached overtook setup_intent.succeeded: Stripe still has the method, without a customer.
    const detached = stripe.detachPaymentMethod(succeeded.payment_method as string);
    expect((await deliver(stripe.event('payment_method.detached', detached))).status).toBe(200);
    const answer = await deliver(stripe.event('setup_intent.succeeded', succeeded));
    expect(answer.status).toBe(200);
    expect(await client.credits.autoTopUp.get.query()).toMatchObject({ enabled: false, paymentMethod: null });

    const again = await client.credits.autoTopUp.setup.mutate({ packageId, threshold: 10 });
    const event = stripe.event('setup_intent.succeeded', stripe.succeedSetupIntent(again.setupIntentId));
    stripe.mode = 'refusing';
    const refused = await deliver(event);
    expect(refused.status).toBe(503);
    expect(refused.body).toMatchObject({ error: { reason: 'PAYMENT_PROVIDER_UNAVAILABLE' } });
    expect(JSON.stringify(refused.body)).not.toContain('This request was refused');
    stripe.mode = 'ok';
    expect((await deliver(event)).status).toBe(200);
    expect(await client.credits.autoTopUp.get.query()).toMatchObject({
      enabled: true,
      paymentMethod: { last4: '4242' },
    });
  });

  it('saves a card through a SetupIntent and shows it; disable turns it off (REST routes too)', async () => {
    const user = newUser();
    const client = await server.userClient(user);
    expect(await client.credits.autoTopUp.get.query()).toEqual({
      enabled: false,
      packageId: null,
      threshold: null,
      maxPerMonth: null,
      paymentMethod: null,
      disabledReason: null,
      lastAttempt: null,
    });
    const started = await client.credits.autoTopUp.setup.mutate({ packageId, threshold: 50 });
    expect(started).toMatchObject({
      clientSecret: expect.stringMatching(/^seti_.+_secret_/),
      enabled: false,
    });
    const [created] = stripe.requestsTo('/v1/setup_intents').slice(-1);
    expect(created?.body).toMatchObject({
      usage: 'off_session',
      metadata: { userId: user.id, purpose: 'auto_top_up', packageId },
    });
    expect(await client.credits.autoTopUp.get.query()).toMatchObject({
      enabled: false,
      packageId,
      threshold: 50,
      maxPerMonth: 5,
      paymentMethod: null,
    });

    // A stale SetupIntent of another setup saves nothing.
    const again = await client.credits.autoTopUp.setup.mutate({ packageId, threshold: 60, maxPerMonth: 3 });
    const stale = stripe.succeedSetupIntent(started.setupIntentId);
    await deliver(stripe.event('setup_intent.succeeded', stale));
    expect((await client.credits.autoTopUp.get.query()).enabled).toBe(false);

    const setup = stripe.succeedSetupIntent(again.setupIntentId, { brand: 'visa', last4: '1881' });
    const event = stripe.event('setup_intent.succeeded', setup);
    expect((await deliver(event)).status).toBe(200);
    expect((await deliver(event)).status).toBe(200);
    const token = await server.auth.sign(user);
    const shown = await call('GET /api/v1/credits/auto-top-up', { token });
    expect(shown.status).toBe(200);
    expect(shown.body).toMatchObject({
      enabled: true,
      packageId,
      threshold: 60,
      maxPerMonth: 3,
      paymentMethod: { brand: 'visa', last4: '1881' },
      disabledReason: null,
    });
    const byService = await call('GET /api/v1/internal/credits/auto-top-up/{userId}', {
      serviceKey: SERVICE_KEY,
      params: { userId: user.id },
    });
    expect(byService.body).toEqual(shown.body);

    const disabled = await call('DELETE /api/v1/credits/auto-top-up', { token });
    expect(disabled.status).toBe(200);
    expect(disabled.body).toMatchObject({ enabled: false, disabledReason: 'disabled' });
    // Off: a crossing records nothing.
    await grant(user.id, 100);
    await spend(client, 90);
    expect(await attemptsOf(user.id)).toEqual([]);

    // setup again (over REST) with a new card turns it on; the service may turn it off.
    const third = await call('POST /api/v1/credits/auto-top-up/setup', {
      token,
      body: { packageId, threshold: 60 },
    });
    expect(third.status).toBe(200);
    expect(third.body).toMatchObject({ enabled: false, clientSecret: expect.any(String) });
    const refused = await call('POST /api/v1/credits/auto-top-up/setup', {
      token,
      body: { packageId, threshold: 0 },
    });
    expect(refused.status).toBe(400);
    await deliver(
      stripe.event('setup_intent.succeeded', stripe.succeedSetupIntent(third.body.setupIntentId)),
    );
    expect((await internal().internal.credits.autoTopUp.get.query({ userId: user.id })).enabled).toBe(true);
    const off = await call('DELETE /api/v1/internal/credits/auto-top-up/{userId}', {
      serviceKey: SERVICE_KEY,
      params: { userId: user.id },
    });
    expect(off.body).toMatchObject({ enabled: false });
  });

  it('payment_method.detached stops further attempts', async () => {
    const { user, client, paymentMethodId } = await enrolledUser({ funds: 200, threshold: 100 });
    const detached = stripe.event('payment_method.detached', stripe.detachPaymentMethod(paymentMethodId));
    expect((await deliver(detached)).status).toBe(200);
    expect(await client.credits.autoTopUp.get.query()).toMatchObject({
      enabled: false,
      paymentMethod: null,
      disabledReason: 'payment method removed in Stripe',
    });
    await spend(client, 150);
    expect(await attemptsOf(user.id)).toEqual([]);
  });

  it('refuses an unknown package', async () => {
    const client = await server.userClient();
    await expect(
      client.credits.autoTopUp.setup.mutate({ packageId: randomUUID(), threshold: 10 }),
    ).rejects.toMatchObject({ data: { code: 'NOT_FOUND' } });
  });
});

describe('Stripe conditions that say nothing about the card', () => {
  /** A Stripe-speaking server that answers every call with `status` and Stripe's error body. */
  async function answeringServer(status: number, type: string, code: string): Promise<Server> {
    const http = createServer((req, res) => {
      req.resume();
      req.on('end', () =>
        res
          .writeHead(status, { 'content-type': 'application/json', 'request-id': 'req_x' })
          .end(JSON.stringify({ error: { type, code, message: `answered ${status}` } })),
      );
    });
    await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
    return http;
  }

  const stripeAt = (port: number, key = 'sk_test_x') =>
    new Stripe(key, { host: '127.0.0.1', port, protocol: 'http', maxNetworkRetries: 0, telemetry: false });

  /** Runs the worker with `client` for a user who just went below the threshold; returns what it saw. */
  async function payWith(client: Stripe) {
    const { user, client: userClient } = await enrolledUser({ funds: 100, threshold: 50 });
    await spend(userClient, 60);
    const results = await runAutoTopUps({ db: server.deps.db, stripe: client });
    const view = await userClient.credits.autoTopUp.get.query();
    // Off again, so that the attempt left pending is not paid by a later test's worker run.
    await userClient.credits.autoTopUp.disable.mutate();
    return { user, results: Object.values(results), view };
  }

  it('a rate-limited (429) payment call leaves auto top-up on and the attempt pending, to be sent again', async () => {
    const limited = await answeringServer(429, 'invalid_request_error', 'rate_limit');
    try {
      const { results, view } = await payWith(stripeAt((limited.address() as AddressInfo).port));
      expect({ results, enabled: view.enabled, last: view.lastAttempt?.status }).toEqual({
        results: ['unknown'],
        enabled: true,
        last: 'pending',
      });
    } finally {
      await new Promise((resolve) => limited.close(resolve));
    }
  });

  it('a key Stripe refuses (401: ours, rotated) leaves auto top-up on', async () => {
    const { results, view } = await payWith(stripeAt(Number(new URL(stripe.url).port), 'sk_test_rotated'));
    expect({ results, enabled: view.enabled, reason: view.disabledReason }).toEqual({
      results: ['unknown'],
      enabled: true,
      reason: null,
    });
  });

  it('setup_intent.succeeded naming a payment method Stripe does not have: acknowledged, nothing saved', async () => {
    const client = await server.userClient(newUser());
    const started = await client.credits.autoTopUp.setup.mutate({ packageId, threshold: 10 });
    const setup = stripe.succeedSetupIntent(started.setupIntentId);
    const event = stripe.event('setup_intent.succeeded', { ...setup, payment_method: 'pm_does_not_exist' });
    // resource_missing is final: a 503 would be retried by Stripe for days, changing nothing.
    expect((await deliver(event)).status).toBe(200);
    expect((await client.credits.autoTopUp.get.query()).enabled).toBe(false);
  });
});

describe('a crossing below the threshold', () => {
  // 500 concurrent debits take about a second or two here (coalesced into batches by the server).
  it('a burst of 500 concurrent debits across the threshold gives one attempt and one credit', async () => {
    server.httpForThisTest(); // real parallel requests
    const { user, client } = await enrolledUser({ funds: 1000, threshold: 500 });
    const results = await Promise.allSettled(Array.from({ length: 500 }, () => spend(client, 2)));
    expect(results.filter((result) => result.status === 'fulfilled')).toHaveLength(500);
    expect(await balanceOf(user.id)).toBe(0);
    const [attempt, ...others] = await attemptsOf(user.id);
    expect(others).toEqual([]);
    expect(attempt).toMatchObject({ status: 'pending', package_id: packageId, purchase_id: null });
    // The attempt names the entry that crossed: the one that left fewer than 500 available.
    const crossed = await server.db
      .selectFrom('credits.transactions')
      .select(['available_after', 'amount'])
      .where('id', '=', attempt!.transaction_id)
      .executeTakeFirstOrThrow();
    expect(crossed).toEqual({ available_after: 498, amount: -2 });

    // Several workers at once: one sends it.
    const runs = await Promise.all([worker(), worker(), worker()]);
    expect(runs.flatMap((run) => Object.values(run))).toEqual(['credited']);
    expect(await balanceOf(user.id)).toBe(PACKAGE_CREDITS);
    const [done] = await attemptsOf(user.id);
    expect(done).toMatchObject({ status: 'succeeded', purchase_id: expect.any(String) });
    const intents = stripe.intentsOfPurchase(done!.purchase_id!);
    expect(intents).toHaveLength(1);
    expect(intents[0]).toMatchObject({
      status: 'succeeded',
      off_session: true,
      payment_method: expect.stringMatching(/^pm_/),
      metadata: { userId: user.id, packageId, purchaseId: done!.purchase_id, auto: 'true' },
    });
    const requests = stripe
      .requestsTo('/v1/payment_intents')
      .filter(
        (request) => (request.body.metadata as Record<string, string>)?.purchaseId === done!.purchase_id,
      );
    expect(requests.map((request) => request.idempotencyKey)).toEqual([done!.id]);
    expect(requests[0]?.body).toMatchObject({ confirm: 'true', off_session: 'true' });

    // Stripe's webhook for the same payment, twice: nothing more.
    const succeeded = stripe.event('payment_intent.succeeded', intents[0]!);
    expect((await deliver(succeeded)).status).toBe(200);
    expect((await deliver(stripe.event('payment_intent.succeeded', intents[0]!))).status).toBe(200);
    expect(await purchaseCreditsOf(user.id)).toHaveLength(1);
    expect(await balanceOf(user.id)).toBe(PACKAGE_CREDITS);
    const completed = await eventsOf(user.id, 'purchase.completed');
    expect(completed).toHaveLength(1);
    expect(completed[0]?.data).toMatchObject({ purchaseId: done!.purchase_id, credits: 100, auto: true });
    expect(await client.credits.purchaseStatus.query({ purchaseId: done!.purchase_id! })).toMatchObject({
      status: 'completed',
    });
    expect((await client.credits.autoTopUp.get.query()).lastAttempt).toMatchObject({
      id: done!.id,
      status: 'succeeded',
      purchaseId: done!.purchase_id,
    });
    // Nothing is left to send.
    expect(await worker()).toEqual({});
  });

  it('a manual purchase says auto: false', async () => {
    const user = newUser();
    const client = await server.userClient(user);
    const started = await client.credits.purchase.mutate({ packageId });
    const row = await server.db
      .selectFrom('credits.purchases')
      .select('stripe_payment_intent_id')
      .where('id', '=', started.purchaseId)
      .executeTakeFirstOrThrow();
    await deliver(
      stripe.event('payment_intent.succeeded', stripe.succeedPaymentIntent(row.stripe_payment_intent_id!)),
    );
    const [completed] = await eventsOf(user.id, 'purchase.completed');
    expect(completed?.data).toMatchObject({ purchaseId: started.purchaseId, auto: false });
  });

  it('a crossing while an attempt is in flight records nothing more', async () => {
    const { user, client } = await enrolledUser({ funds: 300, threshold: 200 });
    await spend(client, 150); // 150: crossed
    await grant(user.id, 100); // 250: recovered, the attempt still pending
    await spend(client, 100); // 150: crossed again
    expect(await attemptsOf(user.id)).toHaveLength(1);
    expect(Object.values(await worker())).toEqual(['credited']);
    expect(await balanceOf(user.id)).toBe(250);
  });
});

describe('failures', () => {
  it.each([
    ['declined', 'card_declined'],
    ['requires_action', 'authentication_required'],
  ] as const)('a %s card: zero credits, one autotopup.failed, auto top-up off', async (behaviour, code) => {
    const { user, client } = await enrolledUser({ funds: 100, threshold: 50, behaviour });
    await spend(client, 60);
    expect(Object.values(await worker())).toEqual(['failed']);
    const [attempt] = await attemptsOf(user.id);
    expect(attempt).toMatchObject({ status: 'failed', failure_code: code });
    expect(await purchaseCreditsOf(user.id)).toEqual([]);
    expect(await balanceOf(user.id)).toBe(40);
    const view = await client.credits.autoTopUp.get.query();
    expect(view).toMatchObject({
      enabled: false,
      disabledReason: `payment failed: ${code}`,
      lastAttempt: { id: attempt!.id, status: 'failed', failureCode: code },
    });
    expect(await client.credits.purchaseStatus.query({ purchaseId: attempt!.purchase_id! })).toMatchObject({
      status: 'failed',
    });

    // Stripe's payment_intent.payment_failed for the same payment changes nothing more.
    const [intent] = stripe.intentsOfPurchase(attempt!.purchase_id!);
    expect((await deliver(stripe.event('payment_intent.payment_failed', intent!))).status).toBe(200);
    const failed = await eventsOf(user.id, 'autotopup.failed');
    expect(failed).toHaveLength(1);
    expect(failed[0]?.data).toMatchObject({
      userId: user.id,
      attemptId: attempt!.id,
      purchaseId: attempt!.purchase_id,
      packageId,
      reason: code,
      paymentIntentId: intent!.id,
    });

    // Never charged in a loop: the next crossing records nothing, the worker sends nothing.
    await grant(user.id, 100);
    await spend(client, 100);
    expect(await attemptsOf(user.id)).toHaveLength(1);
    expect(await worker()).toEqual({});
    expect(stripe.intentsOfPurchase(attempt!.purchase_id!)).toHaveLength(1);
  });

  it('a package no longer on sale: nothing is bought, auto top-up off, autotopup.failed', async () => {
    const pack = await internal().internal.packages.upsert.mutate({
      name: 'Retired',
      credits: 50,
      priceEuroCents: 500,
      active: true,
      sortOrder: 2,
    });
    const user = newUser();
    const client = await server.userClient(user);
    await grant(user.id, 100);
    const started = await client.credits.autoTopUp.setup.mutate({ packageId: pack.id, threshold: 50 });
    await deliver(stripe.event('setup_intent.succeeded', stripe.succeedSetupIntent(started.setupIntentId)));
    await internal().internal.packages.upsert.mutate({
      id: pack.id,
      name: 'Retired',
      credits: 50,
      priceEuroCents: 500,
      active: false,
      sortOrder: 2,
    });
    await spend(client, 60);
    expect(Object.values(await worker())).toEqual(['failed']);
    expect((await attemptsOf(user.id))[0]).toMatchObject({
      status: 'failed',
      failure_code: 'package_inactive',
      purchase_id: null,
    });
    expect(await eventsOf(user.id, 'autotopup.failed')).toHaveLength(1);
    expect(await client.credits.autoTopUp.get.query()).toMatchObject({
      enabled: false,
      disabledReason: 'payment failed: package_inactive',
    });
  });

  it('a failure Stripe reports by webhook (a payment still processing) turns it off once', async () => {
    const { user, client } = await enrolledUser({ funds: 100, threshold: 50 });
    await spend(client, 60);
    // The answer is lost: the worker does not know, the attempt stays pending (leased).
    stripe.mode = 'lose-responses';
    expect(Object.values(await worker())).toEqual(['unknown']);
    stripe.mode = 'ok';
    const [attempt] = await attemptsOf(user.id);
    const [intent] = stripe.intentsOfPurchase(attempt!.purchase_id!);
    // Say the bank declined it afterwards: Stripe sends payment_failed (twice).
    const failed = stripe.event(
      'payment_intent.payment_failed',
      stripe.failPaymentIntent(intent!.id as string),
    );
    await deliver(failed);
    await deliver(failed);
    expect(await eventsOf(user.id, 'autotopup.failed')).toHaveLength(1);
    expect((await attemptsOf(user.id))[0]).toMatchObject({ status: 'failed', failure_code: 'card_declined' });
    expect((await client.credits.autoTopUp.get.query()).enabled).toBe(false);
    // The lease runs out: the attempt is no longer pending, nothing is sent again.
    await expireLeases(user.id);
    expect(await worker()).toEqual({});
    // The test server had already charged it before "declining": deliver nothing more; no credits arrived.
    expect(await purchaseCreditsOf(user.id)).toEqual([]);
  });
});

describe('lost answers, crashes and webhooks out of order', () => {
  it('a crash between the attempt record and the Stripe call retries with the same key: one PaymentIntent', async () => {
    const { user, client } = await enrolledUser({ funds: 100, threshold: 50 });
    await spend(client, 60);
    const [recorded] = await attemptsOf(user.id);
    // Stripe accepts and charges, but the worker never hears back (its process "dies" after the call).
    stripe.mode = 'lose-responses';
    expect(Object.values(await worker())).toEqual(['unknown']);
    stripe.mode = 'ok';
    const [leased] = await attemptsOf(user.id);
    expect(leased).toMatchObject({ id: recorded!.id, status: 'pending', purchase_id: expect.any(String) });
    expect(await purchaseCreditsOf(user.id)).toEqual([]);
    // Leased: another worker does not send it again before the lease runs out.
    expect(await worker()).toEqual({});

    await expireLeases(user.id);
    expect(Object.values(await worker())).toEqual(['credited']);
    const purchaseId = leased!.purchase_id!;
    expect(stripe.intentsOfPurchase(purchaseId)).toHaveLength(1);
    const requests = stripe
      .requestsTo('/v1/payment_intents')
      .filter((request) => (request.body.metadata as Record<string, string>)?.purchaseId === purchaseId);
    expect(requests.length).toBeGreaterThanOrEqual(2);
    expect(new Set(requests.map((request) => request.idempotencyKey))).toEqual(new Set([recorded!.id]));
    expect(requests.at(-1)?.replayed).toBe(true);
    expect(await purchaseCreditsOf(user.id)).toHaveLength(1);
    expect(await balanceOf(user.id)).toBe(40 + PACKAGE_CREDITS);
    expect((await attemptsOf(user.id))[0]).toMatchObject({ status: 'succeeded' });
  });

  it('a webhook delivered before the worker heard back, twice and under two event ids, credits once', async () => {
    const { user, client } = await enrolledUser({ funds: 100, threshold: 50 });
    await spend(client, 60);
    stripe.mode = 'lose-responses';
    expect(Object.values(await worker())).toEqual(['unknown']);
    stripe.mode = 'ok';
    const [attempt] = await attemptsOf(user.id);
    const [intent] = stripe.intentsOfPurchase(attempt!.purchase_id!);
    // The webhook comes first (the worker never stored the intent's id: the metadata finds the purchase).
    const first = stripe.event('payment_intent.succeeded', intent!);
    const [a, b, c] = await Promise.all([
      deliver(first),
      deliver(first),
      deliver(stripe.event('payment_intent.succeeded', intent!)),
    ]);
    expect([a?.status, b?.status, c?.status]).toEqual([200, 200, 200]);
    expect(await purchaseCreditsOf(user.id)).toHaveLength(1);
    expect((await attemptsOf(user.id))[0]).toMatchObject({ status: 'succeeded' });
    // A stale failure after the success changes nothing.
    await deliver(
      stripe.event('payment_intent.payment_failed', { ...intent!, status: 'requires_payment_method' }),
    );
    expect(await eventsOf(user.id, 'autotopup.failed')).toEqual([]);
    expect((await client.credits.autoTopUp.get.query()).enabled).toBe(true);
    // The worker's retry (same key) finds it credited.
    await expireLeases(user.id);
    expect(await worker()).toEqual({});
    expect(await purchaseCreditsOf(user.id)).toHaveLength(1);
    expect(await balanceOf(user.id)).toBe(40 + PACKAGE_CREDITS);
    const completed = await eventsOf(user.id, 'purchase.completed');
    expect(completed.map((event) => event.data)).toEqual([expect.objectContaining({ auto: true })]);
  });
});

describe('several workers (one per instance)', () => {
  it('each claims one attempt at a time: while one waits on Stripe, another pays the next', async () => {
    const first = await enrolledUser({ funds: 100, threshold: 50 });
    const second = await enrolledUser({ funds: 100, threshold: 50 });
    await spend(first.client, 60);
    await spend(second.client, 60);
    const ids = [...(await attemptsOf(first.user.id)), ...(await attemptsOf(second.user.id))].map(
      (attempt) => attempt.id,
    );
    expect(ids).toHaveLength(2);

    stripe.hold(); // Stripe is slow: payment calls wait unanswered
    let busy: Promise<Record<string, string>>;
    let other: Promise<Record<string, string>>;
    try {
      busy = worker();
      await eventually('the first payment to be sent', () => stripe.heldCount === 1);
      // A worker that took every due attempt at once would leave this one nothing to send.
      other = worker();
      await eventually('a second payment, by the other worker', () => stripe.heldCount === 2);
    } finally {
      stripe.release();
    }
    const results = { ...(await busy), ...(await other) };
    expect(ids.map((id) => results[id])).toEqual(['credited', 'credited']);
    for (const { user } of [first, second]) {
      expect(await balanceOf(user.id)).toBe(40 + PACKAGE_CREDITS);
      expect((await attemptsOf(user.id)).map((attempt) => attempt.status)).toEqual(['succeeded']);
    }
  });
});

describe('a payment whose outcome never arrived', () => {
  it('is looked up in Stripe after a while and credited by the same path', async () => {
    const { user, client } = await enrolledUser({ funds: 100, threshold: 50 });
    await spend(client, 60);
    stripe.mode = 'lose-responses';
    expect(Object.values(await worker())).toEqual(['unknown']);
    stripe.mode = 'ok';
    // As if Stripe's answer had been stored but the process died before the credit, and no webhook came.
    const [attempt] = await attemptsOf(user.id);
    const [intent] = stripe.intentsOfPurchase(attempt!.purchase_id!);
    await sql`update credits.auto_top_up_attempts
                 set status = 'processing', payment_intent_id = ${intent!.id as string},
                     updated_at = now() - interval '1 hour'
               where id = ${attempt!.id}`.execute(server.db);
    expect(await worker()).toEqual({ [attempt!.id]: 'credited' });
    expect(await purchaseCreditsOf(user.id)).toHaveLength(1);
    expect((await attemptsOf(user.id))[0]).toMatchObject({ status: 'succeeded' });
    expect(stripe.intentsOfPurchase(attempt!.purchase_id!)).toHaveLength(1);
  });
});

describe('an attempt none of whose sends was answered', () => {
  /**
   * Makes the user's attempt and its purchase (made right before the first send, which the windows count from)
   * `hours` old, and lets the attempt be claimed at once.
   */
  async function ageAttempt(userId: string, hours: number) {
    const age = sql`now() - make_interval(mins => ${Math.round(hours * 60)})`;
    await sql`update credits.auto_top_up_attempts set created_at = ${age}, next_attempt_at = now()
               where user_id = ${userId}`.execute(server.db);
    await sql`update credits.purchases set created_at = ${age}
               where id in (select purchase_id from credits.auto_top_up_attempts where user_id = ${userId})`.execute(
      server.db,
    );
  }
  const paymentCalls = () => stripe.requestsTo('/v1/payment_intents').length;
  const searches = () => stripe.requestsTo('/v1/payment_intents/search').length;

  it(`is not sent after ${AUTO_TOP_UP_SEND_HOURS} h, only looked up; with no payment found it fails at ${AUTO_TOP_UP_GIVE_UP_HOURS} h`, async () => {
    const { user, client } = await enrolledUser({ funds: 100, threshold: 50 });
    await spend(client, 60);
    stripe.mode = 'failing'; // every send answered 500: nobody knows whether a payment was made
    expect(Object.values(await worker())).toEqual(['unknown']);
    const [attempt] = await attemptsOf(user.id);
    const purchaseId = attempt!.purchase_id!;
    expect(attempt).toMatchObject({ status: 'pending', purchase_id: expect.any(String) });
    stripe.mode = 'ok';

    // Past its sending time: Stripe would take a send now (this test server keeps no 500 for the key), but
    // none is made; the lookup finds nothing and the attempt waits for its give-up time.
    await ageAttempt(user.id, AUTO_TOP_UP_SEND_HOURS + 0.5);
    const sent = paymentCalls();
    expect(await worker()).toEqual({ [attempt!.id]: 'unknown' });
    expect(paymentCalls()).toBe(sent);
    expect(searches()).toBe(1);
    expect(stripe.intentsOfPurchase(purchaseId)).toEqual([]);
    expect((await attemptsOf(user.id))[0]).toMatchObject({ status: 'pending' });

    await ageAttempt(user.id, AUTO_TOP_UP_GIVE_UP_HOURS + 0.5);
    expect(await worker()).toEqual({ [attempt!.id]: 'failed' });
    expect(paymentCalls()).toBe(sent);
    expect((await attemptsOf(user.id))[0]).toMatchObject({
      status: 'failed',
      failure_code: 'payment_provider_unavailable',
    });
    expect(await client.credits.autoTopUp.get.query()).toMatchObject({
      enabled: false,
      disabledReason: 'payment failed: payment_provider_unavailable',
      lastAttempt: { status: 'failed', failureCode: 'payment_provider_unavailable' },
    });
    expect(await client.credits.purchaseStatus.query({ purchaseId })).toMatchObject({ status: 'failed' });
    const failed = await eventsOf(user.id, 'autotopup.failed');
    expect(failed.map((event) => event.data)).toEqual([
      expect.objectContaining({ attemptId: attempt!.id, reason: 'payment_provider_unavailable' }),
    ]);
    expect(await purchaseCreditsOf(user.id)).toEqual([]);
    expect(await balanceOf(user.id)).toBe(40);
    await expireLeases(user.id);
    expect(await worker()).toEqual({});
  });

  it('a payment one of them made is found by its purchase and credited, and not sent again', async () => {
    const { user, client } = await enrolledUser({ funds: 100, threshold: 50 });
    await spend(client, 60);
    stripe.mode = 'lose-responses'; // Stripe charges the card, every answer is lost
    expect(Object.values(await worker())).toEqual(['unknown']);
    stripe.mode = 'ok';
    const [attempt] = await attemptsOf(user.id);
    const [intent] = stripe.intentsOfPurchase(attempt!.purchase_id!);
    expect(intent).toMatchObject({ status: 'succeeded' });

    await ageAttempt(user.id, AUTO_TOP_UP_GIVE_UP_HOURS + 0.5);
    const sent = paymentCalls();
    expect(await worker()).toEqual({ [attempt!.id]: 'credited' });
    expect(paymentCalls()).toBe(sent);
    expect((await attemptsOf(user.id))[0]).toMatchObject({
      status: 'succeeded',
      payment_intent_id: intent!.id,
    });
    expect(await purchaseCreditsOf(user.id)).toHaveLength(1);
    expect(await balanceOf(user.id)).toBe(40 + PACKAGE_CREDITS);
    expect(await eventsOf(user.id, 'autotopup.failed')).toEqual([]);
    expect((await client.credits.autoTopUp.get.query()).enabled).toBe(true);
  });
});

describe('an attempt that may have been sent, then auto top-up turned off', () => {
  // Found by a review: an attempt whose send got no answer was closed skipped when the user turned auto top-up
  // off (or removed the card) before the next claim, as if nothing had been sent; nothing asked Stripe about
  // it, so with its webhook lost a card charged gave no credits.
  it.each(['disable', 'card detached'] as const)(
    'after %s, the payment Stripe made is found and credited',
    async (how) => {
      const { user, client, paymentMethodId } = await enrolledUser({ funds: 100, threshold: 50 });
      await spend(client, 60);
      stripe.mode = 'lose-responses'; // Stripe charges the card; the worker never hears back
      expect(Object.values(await worker())).toEqual(['unknown']);
      stripe.mode = 'ok';
      const [attempt] = await attemptsOf(user.id);
      if (how === 'disable') await client.credits.autoTopUp.disable.mutate();
      else {
        const detached = stripe.event('payment_method.detached', stripe.detachPaymentMethod(paymentMethodId));
        expect((await deliver(detached)).status).toBe(200);
      }
      const sent = stripe.requestsTo('/v1/payment_intents').length;
      await expireLeases(user.id);
      expect(await worker()).toEqual({ [attempt!.id]: 'credited' });
      expect(stripe.requestsTo('/v1/payment_intents').length).toBe(sent); // looked up, not sent again
      expect((await attemptsOf(user.id))[0]).toMatchObject({ status: 'succeeded' });
      expect(await balanceOf(user.id)).toBe(40 + PACKAGE_CREDITS);
    },
  );

  it('none made: it waits for the give-up time, then closes skipped (not failed: the user turned it off)', async () => {
    const { user, client } = await enrolledUser({ funds: 100, threshold: 50 });
    await spend(client, 60);
    stripe.mode = 'failing';
    expect(Object.values(await worker())).toEqual(['unknown']);
    stripe.mode = 'ok';
    const [attempt] = await attemptsOf(user.id);
    await client.credits.autoTopUp.disable.mutate();
    await expireLeases(user.id);
    expect(await worker()).toEqual({ [attempt!.id]: 'unknown' });
    await sql`update credits.purchases set created_at = now() - interval '23 hours 30 minutes'
               where id = ${attempt!.purchase_id!}::uuid`.execute(server.db);
    await expireLeases(user.id);
    expect(await worker()).toEqual({ [attempt!.id]: 'skipped' });
    expect((await attemptsOf(user.id))[0]).toMatchObject({
      status: 'skipped',
      failure_code: 'auto_top_up_disabled',
    });
    expect(await eventsOf(user.id, 'autotopup.failed')).toEqual([]);
    expect(stripe.intentsOfPurchase(attempt!.purchase_id!)).toEqual([]);
  });

  it('the windows count from its first send, not from when it was recorded (an attempt first sent late)', async () => {
    const { user, client } = await enrolledUser({ funds: 100, threshold: 50 });
    await spend(client, 60);
    // No worker ran for over 23 h; the first send, then, gets no answer.
    await sql`update credits.auto_top_up_attempts set created_at = now() - interval '23 hours 5 minutes'
               where user_id = ${user.id}`.execute(server.db);
    stripe.mode = 'lose-responses';
    const [attempt] = await attemptsOf(user.id);
    expect(await worker()).toEqual({ [attempt!.id]: 'unknown' });
    stripe.mode = 'ok';
    // Minutes later, with Stripe's search not showing the payment yet (it lags), it is not given up as "no
    // payment was made": it is sent again with its key, and Stripe's stored answer says it was paid.
    const real = server.deps.stripe!;
    const lagging = Object.assign(Object.create(real) as typeof real, {
      paymentIntents: Object.assign(Object.create(real.paymentIntents) as typeof real.paymentIntents, {
        search: async () => ({
          object: 'search_result',
          data: [],
          has_more: false,
          next_page: null,
          url: '',
        }),
      }),
    });
    await expireLeases(user.id);
    expect(await runAutoTopUps({ db: server.deps.db, stripe: lagging })).toEqual({
      [attempt!.id]: 'credited',
    });
    expect((await client.credits.autoTopUp.get.query()).enabled).toBe(true);
  });
});

describe('maxPerMonth', () => {
  it('holds under concurrent debits and workers', async () => {
    server.httpForThisTest(); // real parallel requests
    const { user, client } = await enrolledUser({ funds: 300, threshold: 200, maxPerMonth: 2 });
    // Rounds of concurrent debits with workers running among them; grants bring the balance back up so it can
    // cross again and again.
    for (let round = 0; round < 5; round += 1) {
      const balance = await balanceOf(user.id);
      if (balance < 600) await grant(user.id, 600 - balance);
      // 500 of the 600 leave: the balance crosses below 200 at least once per round.
      await Promise.all([
        ...Array.from({ length: 50 }, () => spend(client, 10)),
        worker(),
        worker(),
        worker(),
      ]);
      await Promise.all([worker(), worker()]);
    }
    const attempts = await attemptsOf(user.id);
    expect(attempts.map((attempt) => attempt.status)).toEqual(['succeeded', 'succeeded']);
    expect(await purchaseCreditsOf(user.id)).toHaveLength(2);
    expect(await eventsOf(user.id, 'purchase.completed')).toHaveLength(2);
    // Crossings did happen after the cap: balance.low-style crossings counted from the ledger.
    const { rows } = await sql<{ crossings: number }>`
      select count(*)::int as crossings from (
        select available_after, lag(available_after, 1, 0::int8) over (order by created_at, id) as before
          from credits.transactions where user_id = ${user.id}) t
       where before >= 200 and available_after < 200`.execute(server.db);
    expect(rows[0]!.crossings).toBeGreaterThan(2);
  });
});

// Two sessions at once: Postgres only.
describe.runIf(Boolean(process.env.DATABASE_URL))(
  'a failure recorded by the worker and by the webhook at once',
  () => {
    // payment_intent.payment_failed locks the purchase, then closes the attempt; the worker, refused by Stripe for
    // the same decline, closed the attempt first, then failed the purchase: the two deadlocked.
    it('the worker locks the purchase first: it waits for the webhook, then finds the attempt closed', async () => {
      const user = newUser();
      const purchase = await server.db
        .insertInto('credits.purchases')
        .values({ user_id: user.id, package_id: packageId, credits: 100, price_euro_cents: 999 })
        .returning('id')
        .executeTakeFirstOrThrow();
      const attempt = await server.db
        .insertInto('credits.auto_top_up_attempts')
        .values({
          user_id: user.id,
          package_id: packageId,
          status: 'processing',
          transaction_id: randomUUID(),
          purchase_id: purchase.id,
          next_attempt_at: sql`now() + interval '1 hour'`,
        })
        .returning(['id', 'user_id', 'package_id', 'purchase_id'])
        .executeTakeFirstOrThrow();
      const recorded = await whileAnotherSession(
        server.database.url!,
        // the webhook: its purchase first …
        ['select 1 from credits.purchases where id = $1 for update', [purchase.id]],
        () =>
          server.db.transaction().execute((trx) =>
            recordAutoTopUpFailure(trx, attempt, {
              code: 'card_declined',
              message: null,
              paymentIntentId: null,
            }),
          ),
        // … then the attempt, which it closes
        ["update credits.auto_top_up_attempts set status = 'failed' where id = $1", [attempt.id]],
      );
      expect(recorded).toBe(false); // the webhook recorded the end first
    });
  },
);
