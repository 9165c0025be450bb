import { randomBytes, randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { failure } from './helpers/errors.ts';
import { expectLedgerConsistent, ledgerSum } from './helpers/invariants.ts';
import { type Client, newUser, startTestServer, type TestServer } from './helpers/server.ts';
import { TestStripeServer } from './helpers/stripe-server.ts';

const SHOP = 'https://shop.example.test';
const APP = 'https://app.example.test';

let server: TestServer;
let stripe: TestStripeServer;

beforeAll(async () => {
  stripe = await TestStripeServer.start();
  // Calls run in process (helpers/server.ts: Transport), the concurrent ones over HTTP.
  server = await startTestServer(
    {
      STRIPE_SECRET_KEY: stripe.secretKey,
      STRIPE_WEBHOOK_SECRET: stripe.webhookSecret,
      STRIPE_API_URL: stripe.url,
      CHECKOUT_ALLOWED_ORIGINS: SHOP,
      CORS_ORIGINS: APP,
    },
    { transport: 'in-process' },
  );
});
afterEach(async () => {
  stripe.mode = 'ok';
  await expectLedgerConsistent(server.deps.db);
});
afterAll(async () => {
  await server?.close();
  await stripe?.close();
});

type PackageFields = Partial<{
  name: string;
  credits: number;
  priceEuroCents: number;
  stripePriceId: string;
  active: boolean;
  validityDays: number;
}>;

async function createPackage(fields: PackageFields = {}) {
  return server.internalClient().internal.packages.upsert.mutate({
    name: 'Standard',
    credits: 100,
    priceEuroCents: 999,
    active: true,
    sortOrder: 1,
    ...fields,
  });
}

async function buyer() {
  const user = newUser();
  return { user, client: await server.userClient(user) };
}

async function balanceOf(userId: string) {
  return (await server.internalClient().internal.credits.balance.query({ userId })).balance;
}

async function purchaseRow(purchaseId: string) {
  return server.deps.db
    .selectFrom('credits.purchases')
    .selectAll()
    .where('id', '=', purchaseId)
    .executeTakeFirstOrThrow();
}

async function ledgerOf(userId: string) {
  return server.deps.db
    .selectFrom('credits.transactions')
    .select(['type', 'amount', 'idempotency_key'])
    .where('user_id', '=', userId)
    .orderBy('created_at')
    .execute();
}

async function eventRecorded(eventId: string) {
  const row = await server.deps.db
    .selectFrom('credits.stripe_events')
    .select('id')
    .where('id', '=', eventId)
    .executeTakeFirst();
  return row !== undefined;
}

const deliver = (event: Record<string, unknown>, options?: Parameters<TestStripeServer['deliver']>[2]) =>
  stripe.deliver(server.url, event, options);

/** A PaymentIntent purchase whose payment Stripe has confirmed (the event is returned, not yet delivered). */
async function paidIntentPurchase(client: Client, packageId: string) {
  const started = await client.credits.purchase.mutate({ packageId });
  const { stripe_payment_intent_id: intentId } = await purchaseRow(started.purchaseId);
  const intent = stripe.succeedPaymentIntent(intentId!);
  return { started, intentId: intentId!, succeeded: stripe.event('payment_intent.succeeded', intent) };
}

/** A purchase credited through the webhook; returns what the refund and dispute tests need. */
async function completedPurchase(client: Client, packageId: string) {
  const paid = await paidIntentPurchase(client, packageId);
  expect((await deliver(paid.succeeded)).status).toBe(200);
  return { ...paid, charge: stripe.chargeOf(paid.intentId) };
}

describe('internal.packages.upsert', () => {
  it('creates a package, replaces it by id, and only active ones are listed and sold', async () => {
    const created = await createPackage({ name: 'Upsert me', credits: 50, priceEuroCents: 499 });
    expect(created).toMatchObject({
      name: 'Upsert me',
      credits: 50,
      priceEuroCents: 499,
      active: true,
      stripePriceId: null,
    });
    const updated = await server.internalClient().internal.packages.upsert.mutate({
      id: created.id,
      name: 'Upsert me',
      credits: 60,
      priceEuroCents: 599,
      active: false,
      sortOrder: 2,
    });
    expect(updated).toMatchObject({ id: created.id, credits: 60, priceEuroCents: 599, active: false });
    const listed = await (await server.userClient()).credits.packages.query();
    expect(listed.map((p) => p.id)).not.toContain(created.id);

    const { client } = await buyer();
    const error = await failure(client.credits.purchase.mutate({ packageId: created.id }));
    expect(error.data).toMatchObject({ code: 'PRECONDITION_FAILED', reason: 'PACKAGE_INACTIVE' });
    const missing = await failure(client.credits.purchase.mutate({ packageId: randomUUID() }));
    expect(missing.data).toMatchObject({ code: 'NOT_FOUND', reason: 'PACKAGE_NOT_FOUND' });
  });

  it('refuses a price Stripe cannot charge, naming the field', async () => {
    const error = await failure(createPackage({ priceEuroCents: 10 }));
    expect(error.data?.code).toBe('BAD_REQUEST');
    expect(error.message).toContain('priceEuroCents');
  });

  it('needs the service key', async () => {
    const error = await failure(
      server.rawClient({}).internal.packages.upsert.mutate({
        name: 'x',
        credits: 1,
        priceEuroCents: 100,
        active: true,
        sortOrder: 0,
      }),
    );
    expect(error.data?.code).toBe('UNAUTHORIZED');
  });
});

describe('credits.purchase: PaymentIntent mode', () => {
  it('creates the PaymentIntent, and the webhook credits the purchase once it is paid', async () => {
    const pack = await createPackage({ credits: 100, priceEuroCents: 999 });
    const { user, client } = await buyer();
    const started = await client.credits.purchase.mutate({ packageId: pack.id });
    expect(started).toMatchObject({ amount: 999, currency: 'eur', credits: 100 });
    expect(started.clientSecret).toMatch(/^pi_.+_secret_/);
    expect(started.checkoutUrl).toBeUndefined();

    const [created] = stripe
      .requestsTo('/v1/payment_intents')
      .filter(
        (r) =>
          r.body.metadata && (r.body.metadata as Record<string, string>).purchaseId === started.purchaseId,
      );
    expect(created?.idempotencyKey).toBe(`purchase:${started.purchaseId}:payment_intent`);
    expect(created?.body).toMatchObject({
      amount: '999',
      currency: 'eur',
      allowed_payment_method_types: ['card', 'sepa_debit'],
      metadata: { userId: user.id, packageId: pack.id, purchaseId: started.purchaseId },
    });
    const row = await purchaseRow(started.purchaseId);
    expect(created?.body.customer).toBe(row.stripe_customer_id);
    expect(stripe.customers.get(row.stripe_customer_id!)?.metadata).toEqual({ userId: user.id });
    expect(await client.credits.purchaseStatus.query({ purchaseId: started.purchaseId })).toMatchObject({
      id: started.purchaseId,
      status: 'pending',
      credits: 100,
      priceEuroCents: 999,
      completedAt: null,
    });
    expect(await balanceOf(user.id)).toBe(0);

    const intent = stripe.succeedPaymentIntent(row.stripe_payment_intent_id!);
    const response = await deliver(stripe.event('payment_intent.succeeded', intent));
    expect(response).toEqual({ status: 200, body: { received: true } });

    const status = await client.credits.purchaseStatus.query({ purchaseId: started.purchaseId });
    expect(status.status).toBe('completed');
    expect(status.completedAt).toBeInstanceOf(Date);
    expect(await balanceOf(user.id)).toBe(100);
    expect(await ledgerOf(user.id)).toEqual([
      { type: 'purchase', amount: 100, idempotency_key: `\u001fpurchase:${started.purchaseId}` },
    ]);
    expect((await purchaseRow(started.purchaseId)).stripe_charge_id).toBe(intent.latest_charge);
  });

  it('creates the Stripe customer once per user, even when purchases start at once', async () => {
    server.httpForThisTest(); // real parallel requests
    const pack = await createPackage();
    const { user, client } = await buyer();
    const customersBefore = stripe.customers.size;
    const started = await Promise.all(
      Array.from({ length: 5 }, () => client.credits.purchase.mutate({ packageId: pack.id })),
    );
    expect(stripe.customers.size).toBe(customersBefore + 1);
    const stored = await server.deps.db
      .selectFrom('credits.stripe_customers')
      .selectAll()
      .where('user_id', '=', user.id)
      .execute();
    expect(stored).toHaveLength(1);
    for (const { purchaseId } of started) {
      expect((await purchaseRow(purchaseId)).stripe_customer_id).toBe(stored[0]?.stripe_customer_id);
    }
  });

  it('a lost Stripe response is retried with the same key: one PaymentIntent, not two', async () => {
    const pack = await createPackage();
    const { client } = await buyer();
    await client.credits.purchase.mutate({ packageId: pack.id }); // the customer exists from here on
    const intentsBefore = stripe.paymentIntents.size;
    stripe.mode = 'lose-first-response';
    const started = await client.credits.purchase.mutate({ packageId: pack.id });
    expect(stripe.paymentIntents.size).toBe(intentsBefore + 1);
    const attempts = stripe.requests.filter(
      (r) => r.idempotencyKey === `purchase:${started.purchaseId}:payment_intent`,
    );
    expect(attempts.map((a) => a.replayed)).toEqual([false, true]);
    const row = await purchaseRow(started.purchaseId);
    expect(stripe.paymentIntents.get(row.stripe_payment_intent_id!)?.client_secret).toBe(
      started.clientSecret,
    );
  });
});

describe('credits.purchase: Checkout mode', () => {
  it('a package whose Stripe price no longer matches its price is refused, the session closed unpaid', async () => {
    // Found by a review: the Session charged the Stripe Price (9.99) while the purchase expected the package's
    // new price (12.99): the payment arrived, did not match, and was never credited.
    stripe.prices.set('price_stale', { unit_amount: 999, currency: 'eur' });
    const pack = await createPackage({ credits: 130, priceEuroCents: 1299, stripePriceId: 'price_stale' });
    const { user, client } = await buyer();
    const refused = await failure(
      client.credits.purchase.mutate({
        packageId: pack.id,
        mode: 'checkout',
        successUrl: `${SHOP}/ok`,
        cancelUrl: `${SHOP}/cancel`,
      }),
    );
    expect(refused.data).toMatchObject({
      code: 'PRECONDITION_FAILED',
      reason: 'PACKAGE_PRICE_MISMATCH',
      details: { field: 'stripePriceId' },
    });
    const [purchase] = (await client.credits.purchases.query({ limit: 1 })).items;
    expect(purchase).toMatchObject({ status: 'failed', priceEuroCents: 1299 });
    const session = stripe.sessions.get((await purchaseRow(purchase!.id)).stripe_checkout_session_id!);
    expect(session).toMatchObject({ status: 'expired', amount_total: 999 });
    expect(await balanceOf(user.id)).toBe(0);
  });

  it("keeps Stripe's {CHECKOUT_SESSION_ID} template literal in a redirect URL's path", async () => {
    const pack = await createPackage({ credits: 10, priceEuroCents: 100 });
    const { client } = await buyer();
    const successUrl = `${SHOP}/checkout/done/{CHECKOUT_SESSION_ID}`;
    const started = await client.credits.purchase.mutate({
      packageId: pack.id,
      mode: 'checkout',
      successUrl,
      cancelUrl: `${SHOP}/cancel`,
    });
    const session = stripe.sessions.get((await purchaseRow(started.purchaseId)).stripe_checkout_session_id!);
    expect(session?.success_url).toBe(successUrl);
  });

  it('creates a Session with inline price data, and checkout.session.completed credits it', async () => {
    const pack = await createPackage({ name: 'Checkout pack', credits: 250, priceEuroCents: 1999 });
    const { user, client } = await buyer();
    const started = await client.credits.purchase.mutate({
      packageId: pack.id,
      mode: 'checkout',
      successUrl: `${SHOP}/done?session={CHECKOUT_SESSION_ID}`,
      cancelUrl: `${APP}/cancelled`,
    });
    expect(started).toMatchObject({ amount: 1999, currency: 'eur', credits: 250 });
    expect(started.checkoutUrl).toMatch(/^https:\/\/checkout\.stripe\.test\//);
    expect(started.clientSecret).toBeUndefined();

    const row = await purchaseRow(started.purchaseId);
    const request = stripe.requests.find(
      (r) => r.idempotencyKey === `purchase:${started.purchaseId}:checkout`,
    );
    const metadata = { userId: user.id, packageId: pack.id, purchaseId: started.purchaseId };
    expect(request?.body).toMatchObject({
      mode: 'payment',
      customer: row.stripe_customer_id,
      client_reference_id: started.purchaseId,
      line_items: [
        {
          price_data: { currency: 'eur', unit_amount: '1999', product_data: { name: 'Checkout pack' } },
          quantity: '1',
        },
      ],
      success_url: `${SHOP}/done?session={CHECKOUT_SESSION_ID}`,
      cancel_url: `${APP}/cancelled`,
      metadata,
      payment_intent_data: { metadata },
    });

    const { session } = stripe.completeSession(row.stripe_checkout_session_id!, 'paid');
    expect((await deliver(stripe.event('checkout.session.completed', session))).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(250);
    const completed = await purchaseRow(started.purchaseId);
    expect(completed.status).toBe('completed');
    expect(completed.stripe_payment_intent_id).toBe(session.payment_intent);
  });

  it('uses the package Stripe price; a delayed (SEPA) payment credits only when it succeeds', async () => {
    stripe.prices.set('price_standard_eur', { unit_amount: 999, currency: 'eur' });
    const pack = await createPackage({ stripePriceId: 'price_standard_eur' });
    const { user, client } = await buyer();
    const started = await client.credits.purchase.mutate({
      packageId: pack.id,
      mode: 'checkout',
      successUrl: `${SHOP}/ok`,
      cancelUrl: `${SHOP}/no`,
    });
    const request = stripe.requests.find(
      (r) => r.idempotencyKey === `purchase:${started.purchaseId}:checkout`,
    );
    expect(request?.body.line_items).toEqual([{ price: 'price_standard_eur', quantity: '1' }]);

    const sessionId = (await purchaseRow(started.purchaseId)).stripe_checkout_session_id!;
    const { session: unpaid } = stripe.completeSession(sessionId, 'unpaid');
    expect((await deliver(stripe.event('checkout.session.completed', unpaid))).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(0);
    expect((await purchaseRow(started.purchaseId)).status).toBe('pending');

    const { session: paid } = stripe.settleSession(sessionId, true);
    expect((await deliver(stripe.event('checkout.session.async_payment_succeeded', paid))).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(100);
    expect((await purchaseRow(started.purchaseId)).status).toBe('completed');
  });

  it('a delayed payment that fails marks the purchase failed; an expired session cancels it', async () => {
    const pack = await createPackage();
    const { user, client } = await buyer();
    const input = {
      packageId: pack.id,
      mode: 'checkout' as const,
      successUrl: `${SHOP}/ok`,
      cancelUrl: `${SHOP}/no`,
    };
    const failing = await client.credits.purchase.mutate(input);
    const failingSession = (await purchaseRow(failing.purchaseId)).stripe_checkout_session_id!;
    stripe.completeSession(failingSession, 'unpaid');
    const { session: failed } = stripe.settleSession(failingSession, false);
    expect((await deliver(stripe.event('checkout.session.async_payment_failed', failed))).status).toBe(200);
    expect((await purchaseRow(failing.purchaseId)).status).toBe('failed');

    const expiring = await client.credits.purchase.mutate(input);
    const expired = stripe.expireSession(
      (await purchaseRow(expiring.purchaseId)).stripe_checkout_session_id!,
    );
    expect((await deliver(stripe.event('checkout.session.expired', expired))).status).toBe(200);
    expect((await purchaseRow(expiring.purchaseId)).status).toBe('cancelled');
    expect(await balanceOf(user.id)).toBe(0);
  });

  it('refuses redirect URLs on a foreign origin (no open redirects), writing nothing', async () => {
    const pack = await createPackage();
    const { user, client } = await buyer();
    const requestsBefore = stripe.requests.length;
    const cases = [
      { successUrl: 'https://evil.example/phish', cancelUrl: `${SHOP}/no`, field: 'successUrl' },
      {
        successUrl: `${SHOP}/ok`,
        cancelUrl: 'https://shop.example.test.evil.example/no',
        field: 'cancelUrl',
      },
      { successUrl: 'javascript:alert(1)', cancelUrl: `${SHOP}/no`, field: 'successUrl' },
      { successUrl: 'http://shop.example.test/ok', cancelUrl: `${SHOP}/no`, field: 'successUrl' },
      { successUrl: '/relative', cancelUrl: `${SHOP}/no`, field: 'successUrl' },
      { cancelUrl: `${SHOP}/no`, field: 'successUrl' },
    ];
    for (const { field, ...urls } of cases) {
      const error = await failure(
        client.credits.purchase.mutate({ packageId: pack.id, mode: 'checkout', ...urls }),
      );
      expect(error.data?.code, JSON.stringify(urls)).toBe('BAD_REQUEST');
      expect(error.data?.details).toEqual({ field });
      expect(error.message).toContain(field);
    }
    expect(stripe.requests.length).toBe(requestsBefore);
    const rows = await server.deps.db
      .selectFrom('credits.purchases')
      .select('id')
      .where('user_id', '=', user.id)
      .execute();
    expect(rows).toEqual([]);
  });
});

describe('credits.purchase: Stripe unavailable or not configured', () => {
  it('Stripe failing with 500: SERVICE_UNAVAILABLE and the purchase stays pending (outcome unknown)', async () => {
    const pack = await createPackage();
    const { user, client } = await buyer();
    await client.credits.purchase.mutate({ packageId: pack.id });
    stripe.mode = 'failing';
    const error = await failure(client.credits.purchase.mutate({ packageId: pack.id }));
    expect(error.data).toMatchObject({ code: 'SERVICE_UNAVAILABLE', reason: 'PAYMENT_PROVIDER_UNAVAILABLE' });
    const rows = await server.deps.db
      .selectFrom('credits.purchases')
      .select(['status', 'stripe_payment_intent_id'])
      .where('user_id', '=', user.id)
      .orderBy('created_at')
      .execute();
    expect(rows).toHaveLength(2);
    expect(rows[1]).toEqual({ status: 'pending', stripe_payment_intent_id: null });
  });

  it('Stripe refusing the call: SERVICE_UNAVAILABLE and the purchase is failed', async () => {
    const pack = await createPackage();
    const { user, client } = await buyer();
    await client.credits.purchase.mutate({ packageId: pack.id });
    stripe.mode = 'refusing';
    const error = await failure(client.credits.purchase.mutate({ packageId: pack.id }));
    expect(error.data?.code).toBe('SERVICE_UNAVAILABLE');
    const statuses = await server.deps.db
      .selectFrom('credits.purchases')
      .select('status')
      .where('user_id', '=', user.id)
      .orderBy('created_at')
      .execute();
    expect(statuses.map((s) => s.status)).toEqual(['pending', 'failed']);
  });

  it('Stripe unreachable before the customer exists: SERVICE_UNAVAILABLE, nothing written', async () => {
    const pack = await createPackage();
    const { user, client } = await buyer();
    stripe.mode = 'unreachable';
    const error = await failure(client.credits.purchase.mutate({ packageId: pack.id }));
    expect(error.data?.code).toBe('SERVICE_UNAVAILABLE');
    expect(error.message).not.toContain('ECONNRESET');
    const purchases = await server.deps.db
      .selectFrom('credits.purchases')
      .select('id')
      .where('user_id', '=', user.id)
      .execute();
    const customers = await server.deps.db
      .selectFrom('credits.stripe_customers')
      .select('user_id')
      .where('user_id', '=', user.id)
      .execute();
    expect({ purchases, customers }).toEqual({ purchases: [], customers: [] });
  });

  it('without STRIPE_SECRET_KEY the server starts and purchases answer PAYMENTS_NOT_CONFIGURED', async () => {
    const bare = await startTestServer();
    try {
      const client = await bare.userClient();
      const error = await failure(client.credits.purchase.mutate({ packageId: randomUUID() }));
      expect(error.data).toMatchObject({ code: 'PRECONDITION_FAILED', reason: 'PAYMENTS_NOT_CONFIGURED' });
      const webhook = await stripe.deliver(bare.url, stripe.event('payment_intent.succeeded', {}));
      expect(webhook.status).toBe(503);
    } finally {
      await bare.close();
    }
  });
});

describe('credits.purchases and credits.purchaseStatus', () => {
  it('lists the caller’s purchases newest first, page by page', async () => {
    const pack = await createPackage();
    const { client } = await buyer();
    const ids: string[] = [];
    for (let i = 0; i < 3; i++)
      ids.push((await client.credits.purchase.mutate({ packageId: pack.id })).purchaseId);
    const first = await client.credits.purchases.query({ limit: 2 });
    expect(first.items.map((p) => p.id)).toEqual([ids[2], ids[1]]);
    expect(first.items[0]).toMatchObject({
      packageId: pack.id,
      status: 'pending',
      currency: 'eur',
      clawedBackCredits: 0,
      unrecoveredCredits: 0,
      returnedCredits: 0,
    });
    const second = await client.credits.purchases.query({ limit: 2, cursor: first.nextCursor! });
    expect(second).toEqual({ items: [expect.objectContaining({ id: ids[0] })], nextCursor: null });
  });

  it("another user's purchase is NOT_FOUND", async () => {
    const pack = await createPackage();
    const { client: owner } = await buyer();
    const { client: stranger } = await buyer();
    const { purchaseId } = await owner.credits.purchase.mutate({ packageId: pack.id });
    const error = await failure(stranger.credits.purchaseStatus.query({ purchaseId }));
    expect(error.data).toMatchObject({ code: 'NOT_FOUND', httpStatus: 404 });
    expect((await stranger.credits.purchases.query()).items).toEqual([]);
  });
});

describe('webhook: exactly once', () => {
  it('20 concurrent deliveries of one event credit once', async () => {
    const pack = await createPackage({ credits: 100 });
    const { user, client } = await buyer();
    const { started, succeeded } = await paidIntentPurchase(client, pack.id);
    const responses = await Promise.all(Array.from({ length: 20 }, () => deliver(succeeded)));
    expect(responses.map((r) => r.status)).toEqual(Array(20).fill(200));
    expect(await balanceOf(user.id)).toBe(100);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(100);
    expect((await purchaseRow(started.purchaseId)).status).toBe('completed');
  });

  it('payment_intent.succeeded and checkout.session.completed for one payment credit once', async () => {
    const pack = await createPackage({ credits: 300, priceEuroCents: 2499 });
    const { user, client } = await buyer();
    const started = await client.credits.purchase.mutate({
      packageId: pack.id,
      mode: 'checkout',
      successUrl: `${SHOP}/ok`,
      cancelUrl: `${SHOP}/no`,
    });
    const { session, intent } = stripe.completeSession(
      (await purchaseRow(started.purchaseId)).stripe_checkout_session_id!,
      'paid',
    );
    const responses = await Promise.all([
      deliver(stripe.event('checkout.session.completed', session)),
      deliver(stripe.event('payment_intent.succeeded', intent)),
      deliver(stripe.event('checkout.session.completed', session)),
      deliver(stripe.event('payment_intent.succeeded', intent)),
    ]);
    expect(responses.map((r) => r.status)).toEqual([200, 200, 200, 200]);
    expect(await balanceOf(user.id)).toBe(300);
    expect((await ledgerOf(user.id)).filter((row) => row.type === 'purchase')).toHaveLength(1);
    const row = await purchaseRow(started.purchaseId);
    expect(row).toMatchObject({
      status: 'completed',
      stripe_payment_intent_id: intent.id,
      stripe_charge_id: intent.latest_charge,
    });
  });

  it('a failure after success leaves the purchase completed', async () => {
    const pack = await createPackage({ credits: 100 });
    const { user, client } = await buyer();
    const { started, intentId } = await completedPurchase(client, pack.id);
    const failed = stripe.failPaymentIntent(intentId);
    expect((await deliver(stripe.event('payment_intent.payment_failed', failed))).status).toBe(200);
    expect((await purchaseRow(started.purchaseId)).status).toBe('completed');
    expect(await balanceOf(user.id)).toBe(100);
  });

  it('a failed attempt marks the purchase failed; a later successful retry still completes it', async () => {
    const pack = await createPackage({ credits: 100 });
    const { user, client } = await buyer();
    const started = await client.credits.purchase.mutate({ packageId: pack.id });
    const intentId = (await purchaseRow(started.purchaseId)).stripe_payment_intent_id!;
    await deliver(stripe.event('payment_intent.payment_failed', stripe.failPaymentIntent(intentId)));
    expect((await purchaseRow(started.purchaseId)).status).toBe('failed');
    await deliver(stripe.event('payment_intent.succeeded', stripe.succeedPaymentIntent(intentId)));
    expect((await purchaseRow(started.purchaseId)).status).toBe('completed');
    expect(await balanceOf(user.id)).toBe(100);
  });

  it('a paid amount or currency that differs from the purchase is not credited', async () => {
    const pack = await createPackage({ credits: 100, priceEuroCents: 999 });
    const { user, client } = await buyer();
    const { started, succeeded } = await paidIntentPurchase(client, pack.id);
    const object = (succeeded.data as { object: Record<string, unknown> }).object;
    const cheaper = stripe.event('payment_intent.succeeded', { ...object, amount: 99, amount_received: 99 });
    const dollars = stripe.event('payment_intent.succeeded', { ...object, currency: 'usd' });
    const mismatches = async () =>
      (await server.deps.metrics.webhookEvents.get()).values
        .filter((value) => value.labels.outcome === 'amount_mismatch')
        .reduce((sum, value) => sum + value.value, 0);
    const before = await mismatches();
    expect((await deliver(cheaper)).status).toBe(200);
    expect((await deliver(dollars)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(0);
    expect((await purchaseRow(started.purchaseId)).status).toBe('pending');
    expect(await ledgerOf(user.id)).toEqual([]);
    // Money in, nothing credited: counted apart, and kept on the purchase (the latest one) for the buyer to see.
    expect((await mismatches()) - before).toBe(2);
    const [listed] = (await client.credits.purchases.query()).items;
    expect(listed).toMatchObject({
      id: started.purchaseId,
      status: 'pending',
      unmatchedPayment: {
        amount: 999,
        currency: 'usd',
        paymentIntentId: object.id,
        checkoutSessionId: null,
        receivedAt: expect.any(Date),
      },
    });
    // The payment that matches still credits it.
    expect((await deliver(succeeded)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(100);
  });

  it('events that are not ours or of types we do not handle are acknowledged and change nothing', async () => {
    const pack = await createPackage();
    const { user, client } = await buyer();
    const started = await client.credits.purchase.mutate({ packageId: pack.id });
    const foreign = stripe.event('payment_intent.succeeded', {
      id: 'pi_someone_else',
      object: 'payment_intent',
      amount: 999,
      amount_received: 999,
      currency: 'eur',
      latest_charge: 'ch_someone_else',
      metadata: { purchaseId: started.purchaseId, userId: 'another-user' },
    });
    expect((await deliver(foreign)).status).toBe(200);
    expect(
      (await deliver(stripe.event('customer.created', { id: 'cus_x', object: 'customer' }))).status,
    ).toBe(200);
    expect((await purchaseRow(started.purchaseId)).status).toBe('pending');
    expect(await balanceOf(user.id)).toBe(0);
  });
});

describe('webhook: signature', () => {
  it('refuses a bad signature, a stale timestamp, a re-serialised body or no signature with 400, changing nothing', async () => {
    const pack = await createPackage();
    const { user, client } = await buyer();
    const { started, succeeded } = await paidIntentPurchase(client, pack.id);
    const attempts = [
      await deliver(succeeded, { secret: 'whsec_not_the_right_one' }),
      await deliver(succeeded, { timestamp: Math.floor(Date.now() / 1000) - 600 }),
      await deliver(succeeded, { payload: JSON.stringify(succeeded) }),
      await deliver(succeeded, { signature: null }),
      await deliver(succeeded, { signature: 'garbage' }),
    ];
    for (const attempt of attempts) {
      expect(attempt.status).toBe(400);
      expect(attempt.body).toMatchObject({ error: { reason: 'INVALID_SIGNATURE' } });
    }
    expect(await eventRecorded(succeeded.id as string)).toBe(false);
    expect((await purchaseRow(started.purchaseId)).status).toBe('pending');
    expect(await balanceOf(user.id)).toBe(0);

    expect((await deliver(succeeded)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(100);
  });

  it('amounts or currencies a handler cannot apply answer 400 naming the field and record nothing; the event applies once well-formed', async () => {
    const pack = await createPackage({ credits: 100 });
    const { user, client } = await buyer();
    const { started, charge, succeeded } = await completedPurchase(client, pack.id);
    const chargeId = charge.id as string;
    const intent = (succeeded.data as { object: Record<string, unknown> }).object;
    const without = (object: Record<string, unknown>, field: string) => {
      const copy = { ...object };
      delete copy[field];
      return copy;
    };
    const dispute = stripe.disputeCharge(chargeId, 500);
    // Each used to fail inside the handler (NaN credits, toLowerCase of undefined): a 500 Stripe retries for days.
    const malformed: Array<[Record<string, unknown>, string]> = [
      [stripe.event('charge.refunded', { ...charge, amount_refunded: 499.5 }), 'data.object.amount_refunded'],
      [stripe.event('charge.refunded', without(charge, 'amount_refunded')), 'data.object.amount_refunded'],
      [stripe.event('charge.dispute.created', without(dispute, 'currency')), 'data.object.currency'],
      [stripe.event('charge.dispute.created', without(dispute, 'amount')), 'data.object.amount'],
      [stripe.event('payment_intent.succeeded', { ...intent, currency: 978 }), 'data.object.currency'],
    ];
    for (const [event, field] of malformed) {
      const response = await deliver(event);
      expect({ status: response.status, body: response.body }).toMatchObject({
        status: 400,
        body: { error: { reason: 'VALIDATION', details: { field } } },
      });
      expect(await eventRecorded(event.id as string)).toBe(false);
    }
    expect(await balanceOf(user.id)).toBe(100);

    const [broken] = malformed[0]!;
    const fixed = stripe.event('charge.refunded', stripe.refundCharge(chargeId, 999), broken.id as string);
    expect((await deliver(fixed)).status).toBe(200);
    expect(await eventRecorded(broken.id as string)).toBe(true);
    expect(await balanceOf(user.id)).toBe(0);
    expect((await purchaseRow(started.purchaseId)).clawed_back_credits).toBe(100);
  });
});

describe('webhook: signed but malformed events', () => {
  it('a signed event whose ids or texts cannot be stored answers 400 naming the field, changing nothing', async () => {
    const pack = await createPackage();
    const { user, client } = await buyer();
    const { started, succeeded } = await paidIntentPurchase(client, pack.id);
    const intent = (succeeded.data as { object: Record<string, unknown> }).object;
    const noise = randomBytes(1500).toString('base64');
    const cases: [Record<string, unknown>, string][] = [
      [{ ...succeeded, id: 'evt_\u0000x' }, 'id'],
      [{ ...succeeded, id: `evt_${noise}` }, 'id'],
      [{ ...succeeded, data: { object: null } }, 'data.object'],
      [{ ...succeeded, data: { object: { ...intent, id: undefined } } }, 'data.object.id'],
      [
        { ...succeeded, data: { object: { ...intent, latest_charge: `ch_${noise}` } } },
        'data.object.latest_charge',
      ],
      [
        { ...succeeded, data: { object: { ...intent, metadata: { userId: 'a\u0000b' } } } },
        'data.object.metadata.userId',
      ],
      [
        stripe.event('payment_intent.payment_failed', {
          ...intent,
          last_payment_error: { message: 'x\u0000' },
        }),
        'data.object.last_payment_error.message',
      ],
    ];
    for (const [event, field] of cases) {
      const response = await deliver(event);
      expect(response.status, field).toBe(400);
      expect(response.body, field).toMatchObject({ error: { reason: 'VALIDATION', details: { field } } });
      expect((response.body as { error: { message: string } }).error.message.startsWith(`${field}: `)).toBe(
        true,
      );
    }
    expect(await eventRecorded(succeeded.id as string)).toBe(false);
    expect((await purchaseRow(started.purchaseId)).status).toBe('pending');
    // A type we do not act on is not looked into (an endpoint may be subscribed to more): 200, ignored.
    const upcoming = stripe.event('invoice.upcoming', {
      object: 'invoice',
      id: null,
      customer: `cus_${noise}`,
    });
    expect((await deliver(upcoming)).status).toBe(200);
    // Metadata we do not read may be as long as Stripe allows.
    const longMetadata = { ...intent, metadata: { ...(intent.metadata as object), note: 'n'.repeat(500) } };
    expect(
      (await deliver(stripe.event('payment_intent.payment_failed', { ...longMetadata, id: 'pi_elsewhere' })))
        .status,
    ).toBe(200);
    // The well-formed event still applies.
    expect((await deliver(succeeded)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(100);
  });
});

describe('webhook: refunds and disputes', () => {
  it('partial refunds claw back the proportional share, cumulatively and once each', async () => {
    const pack = await createPackage({ credits: 100, priceEuroCents: 999 });
    const { user, client } = await buyer();
    const { started, charge } = await completedPurchase(client, pack.id);
    const chargeId = charge.id as string;

    const first = stripe.event('charge.refunded', stripe.refundCharge(chargeId, 333));
    expect((await deliver(first)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(67); // floor(100 × 333 / 999) = 33
    expect((await deliver(first)).status).toBe(200); // redelivery
    expect(await balanceOf(user.id)).toBe(67);

    const second = stripe.event('charge.refunded', stripe.refundCharge(chargeId, 333)); // cumulative 666
    expect((await deliver(second)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(34); // 66 in total

    // A late copy of the first refund under another event id claims nothing more.
    const stale = stripe.event('charge.refunded', { ...(first.data as { object: object }).object });
    expect((await deliver(stale)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(34);

    const last = stripe.event('charge.refunded', stripe.refundCharge(chargeId, 333)); // cumulative 999
    expect((await deliver(last)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(0);

    const ledger = await ledgerOf(user.id);
    expect(ledger.map((row) => [row.type, row.amount])).toEqual([
      ['purchase', 100],
      ['clawback', -33],
      ['clawback', -33],
      ['clawback', -34],
    ]);
    expect(await client.credits.purchases.query()).toMatchObject({
      items: [{ id: started.purchaseId, status: 'completed', clawedBackCredits: 100, unrecoveredCredits: 0 }],
    });
    const balance = await client.credits.balance.query();
    expect(balance).toMatchObject({ balance: 0, totalEarned: 0 });
  });

  it('a refund after the credits were spent takes what is left and records the remainder', async () => {
    const pack = await createPackage({ credits: 100, priceEuroCents: 999 });
    const { user, client } = await buyer();
    const { started, charge } = await completedPurchase(client, pack.id);
    await client.credits.use.mutate({ amount: 80, appId: 'chat', description: 'spent it' });

    const refunded = stripe.event('charge.refunded', stripe.refundCharge(charge.id as string, 999));
    expect((await deliver(refunded)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(0);
    const row = await purchaseRow(started.purchaseId);
    expect(row).toMatchObject({ clawed_back_credits: 20, unrecovered_credits: 80, status: 'completed' });
    expect((await ledgerOf(user.id)).at(-1)).toMatchObject({ type: 'clawback', amount: -20 });

    // More credits later do not reopen a settled refund.
    expect((await deliver(refunded)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(0);
  });

  /**
   * A purchase of 100 credits (1000 cents, 30 days of validity) of which `used` are spent, 50 granted credits
   * that never expire, then the purchase's lot runs out (30 days later: backdated here).
   */
  async function expiredPurchase(used: number) {
    const pack = await createPackage({ credits: 100, priceEuroCents: 1000, validityDays: 30 });
    const { user, client } = await buyer();
    const { started, charge } = await completedPurchase(client, pack.id);
    if (used > 0) await client.credits.use.mutate({ amount: used, appId: 'chat', description: 'used some' });
    await server.internalClient().internal.credits.grant.mutate({
      userId: user.id,
      amount: 50,
      reason: 'other credits, never expiring',
      idempotencyKey: randomUUID(),
    });
    await sql`update credits.lots set expires_at = now() - interval '1 second'
               where account_id = ${user.id} and source = 'purchase'`.execute(server.deps.db);
    await sql`update credits.balances set next_lot_expiry = now() - interval '1 second'
               where user_id = ${user.id}`.execute(server.deps.db);
    const refund = (cents: number) =>
      deliver(stripe.event('charge.refunded', stripe.refundCharge(charge.id as string, cents)));
    return { user, purchaseId: started.purchaseId, refund };
  }

  it('credits of the purchase that expired unspent count as taken back: a refund does not take other credits instead', async () => {
    const { user, purchaseId, refund } = await expiredPurchase(0);
    // A refund of half the money: its 50 credits expired already (with the other 50).
    expect((await refund(500)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(50);
    // The rest of the money (cumulative 1000): all 100 credits expired; the 50 granted ones stay the buyer's.
    expect((await refund(500)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(50);
    expect(await purchaseRow(purchaseId)).toMatchObject({ clawed_back_credits: 0, unrecovered_credits: 0 });
    const types = (await ledgerOf(user.id)).map((row) => row.type);
    expect(types).toContain('expiry');
    expect(types).not.toContain('clawback');
  });

  it('a refund after part of the purchase expired takes back only the part that did not', async () => {
    const { user, purchaseId, refund } = await expiredPurchase(40);
    // 60 expired unspent; the 40 used are owed back, from the granted credits.
    expect((await refund(1000)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(10);
    expect(await purchaseRow(purchaseId)).toMatchObject({ clawed_back_credits: 40, unrecovered_credits: 0 });
  });

  it('a refund takes back the purchase’s own credits first, not the grants the burn order spends first', async () => {
    // Found by a review: the clawback burned the granted credits (priority 10) and left the purchase's lot
    // whole; when that lot expired, its expiry counted toward what was owed again — 150 credits taken for a
    // 100-credit purchase.
    const pack = await createPackage({ credits: 100, priceEuroCents: 1000, validityDays: 30 });
    const { user, client } = await buyer();
    await server.internalClient().internal.credits.grant.mutate({
      userId: user.id,
      amount: 100,
      reason: 'other credits, never expiring',
      idempotencyKey: randomUUID(),
    });
    const { started, charge } = await completedPurchase(client, pack.id);
    const refund = (cents: number) =>
      deliver(stripe.event('charge.refunded', stripe.refundCharge(charge.id as string, cents)));
    expect((await refund(500)).status).toBe(200);
    const lots = await server.internalClient().internal.credits.lots.query({ userId: user.id });
    expect(lots.items.map((lot) => [lot.source, lot.remaining]).sort()).toEqual([
      ['grant', 100],
      ['purchase', 50],
    ]);
    // The purchase's validity ends (backdated), then the rest of the money goes back: nothing more is owed.
    await sql`update credits.lots set expires_at = now() - interval '1 second'
               where account_id = ${user.id} and source = 'purchase'`.execute(server.deps.db);
    await sql`update credits.balances set next_lot_expiry = now() - interval '1 second'
               where user_id = ${user.id}`.execute(server.deps.db);
    expect((await refund(500)).status).toBe(200); // cumulative: 1000 of 1000
    expect(await balanceOf(user.id)).toBe(100);
    expect(await purchaseRow(started.purchaseId)).toMatchObject({
      clawed_back_credits: 50,
      unrecovered_credits: 0,
    });
  });

  it('a hold whose time is up is returned before the clawback: its credits are taken back, not left to the buyer', async () => {
    const pack = await createPackage({ credits: 100, priceEuroCents: 1000 });
    const { user, client } = await buyer();
    const { started, charge } = await completedPurchase(client, pack.id);
    await server.internalClient().internal.credits.reserve.mutate({
      userId: user.id,
      amount: 100,
      appId: 'chat',
      description: 'holds it all',
      idempotencyKey: randomUUID(),
    });
    await sql`update credits.reservations set expires_at = now() - interval '1 second'
               where user_id = ${user.id} and status = 'open'`.execute(server.deps.db);
    expect(
      (await deliver(stripe.event('charge.refunded', stripe.refundCharge(charge.id as string, 1000)))).status,
    ).toBe(200);
    expect(await purchaseRow(started.purchaseId)).toMatchObject({
      clawed_back_credits: 100,
      unrecovered_credits: 0,
    });
    expect(await balanceOf(user.id)).toBe(0);
    await expect(
      client.credits.use.mutate({ amount: 1, appId: 'chat', description: 'x' }),
    ).rejects.toMatchObject({
      data: { reason: 'INSUFFICIENT_CREDITS' },
    });
  });

  it.each([
    [
      '5 cents refunded (a share of 0 credits), then 994 disputed',
      [
        ['refund', 5],
        ['dispute', 994],
      ],
    ],
    [
      '994 disputed, then 5 cents refunded',
      [
        ['dispute', 994],
        ['refund', 5],
      ],
    ],
    [
      '333 refunded, 5 more (still 33 credits), then 661 disputed',
      [
        ['refund', 333],
        ['refund', 5],
        ['dispute', 661],
      ],
    ],
  ] as const)(
    'all the money returned takes back every credit, even by refunds that add no credit of their own: %s',
    async (_name, steps) => {
      // A refund whose cumulative amount did not raise the refunds' own share of credits was not recorded, so its
      // money was missing from the share of all the money returned: 99 credits taken back for 999 of 999 cents.
      const pack = await createPackage({ credits: 100, priceEuroCents: 999 });
      const { user, client } = await buyer();
      const { started, charge } = await completedPurchase(client, pack.id);
      const chargeId = charge.id as string;
      for (const [kind, cents] of steps) {
        // refundCharge refunds `cents` more: the event carries the cumulative amount, as Stripe's does
        const object =
          kind === 'refund' ? stripe.refundCharge(chargeId, cents) : stripe.disputeCharge(chargeId, cents);
        const type = kind === 'refund' ? 'charge.refunded' : 'charge.dispute.created';
        expect((await deliver(stripe.event(type, object))).status).toBe(200);
      }
      expect(await purchaseRow(started.purchaseId)).toMatchObject({
        clawed_back_credits: 100,
        unrecovered_credits: 0,
      });
      expect(await balanceOf(user.id)).toBe(0);
    },
  );

  it('a dispute claws back the disputed share once, even when Stripe sends it again', async () => {
    const pack = await createPackage({ credits: 100, priceEuroCents: 1000 });
    const { user, client } = await buyer();
    const { started, charge } = await completedPurchase(client, pack.id);
    const dispute = stripe.disputeCharge(charge.id as string, 250);
    expect((await deliver(stripe.event('charge.dispute.created', dispute))).status).toBe(200);
    expect((await deliver(stripe.event('charge.dispute.created', dispute))).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(75);
    expect((await purchaseRow(started.purchaseId)).clawed_back_credits).toBe(25);
    // A refund of the whole charge afterwards takes only what the dispute did not: never more than bought.
    const refunded = stripe.event('charge.refunded', stripe.refundCharge(charge.id as string, 1000));
    expect((await deliver(refunded)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(0);
    expect((await purchaseRow(started.purchaseId)).clawed_back_credits).toBe(100);
  });

  it('a refund and a dispute that together return all the money take back every credit (shares rounded once)', async () => {
    const pack = await createPackage({ credits: 100, priceEuroCents: 999 });
    const { user, client } = await buyer();
    const { started, charge } = await completedPurchase(client, pack.id);
    const chargeId = charge.id as string;
    // 333 cents → 33.3 credits, 666 cents → 66.6: rounded down apart, 99; all 999 cents went back.
    expect((await deliver(stripe.event('charge.refunded', stripe.refundCharge(chargeId, 333)))).status).toBe(
      200,
    );
    expect(await balanceOf(user.id)).toBe(67);
    const dispute = stripe.disputeCharge(chargeId, 666);
    expect((await deliver(stripe.event('charge.dispute.created', dispute))).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(0);
    expect(await purchaseRow(started.purchaseId)).toMatchObject({
      clawed_back_credits: 100,
      unrecovered_credits: 0,
    });
  });

  it('a dispute the merchant wins gives back what it took, once, and a later dispute takes again', async () => {
    const pack = await createPackage({ credits: 100, priceEuroCents: 1000 });
    const { user, client } = await buyer();
    const { started, charge } = await completedPurchase(client, pack.id);
    const chargeId = charge.id as string;
    const dispute = stripe.disputeCharge(chargeId, 400);
    expect((await deliver(stripe.event('charge.dispute.created', dispute))).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(60);
    // Won: Stripe gives the money back and says so twice (funds_reinstated, then closed as won).
    const won = { ...dispute, status: 'won' };
    const reinstated = stripe.event('charge.dispute.funds_reinstated', won);
    const deliveries = await Promise.all(Array.from({ length: 20 }, () => deliver(reinstated)));
    expect(deliveries.map((delivery) => delivery?.status)).toEqual(Array(20).fill(200));
    expect((await deliver(stripe.event('charge.dispute.closed', won))).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(100);
    expect(await purchaseRow(started.purchaseId)).toMatchObject({
      clawed_back_credits: 0,
      unrecovered_credits: 0,
      returned_credits: 40,
    });
    expect((await client.credits.purchases.query({ limit: 1 })).items[0]).toMatchObject({
      id: started.purchaseId,
      clawedBackCredits: 0,
      returnedCredits: 40,
    });
    const given = (await ledgerOf(user.id)).filter((row) => row.type === 'clawback');
    expect(given.map((row) => row.amount)).toEqual([-40, 40]);
    const reinstatedEvents = await server.deps.db
      .selectFrom('credits.events')
      .select('data')
      .where('user_id', '=', user.id)
      .where('type', '=', 'purchase.reinstated')
      .execute();
    expect(reinstatedEvents.map((event) => event.data)).toEqual([
      expect.objectContaining({ purchaseId: started.purchaseId, givenBack: 40, forgiven: 0 }),
    ]);
    // A later refund of everything takes all 100 back (its clawback numbered past the first one's).
    expect((await deliver(stripe.event('charge.refunded', stripe.refundCharge(chargeId, 1000)))).status).toBe(
      200,
    );
    expect(await balanceOf(user.id)).toBe(0);
    expect(await purchaseRow(started.purchaseId)).toMatchObject({
      clawed_back_credits: 100,
      returned_credits: 40,
    });
  });

  it('a dispute won before its chargeback is reported takes nothing; one lost gives nothing back', async () => {
    const pack = await createPackage({ credits: 100, priceEuroCents: 1000 });
    const { user, client } = await buyer();
    const { started, charge } = await completedPurchase(client, pack.id);
    const early = stripe.disputeCharge(charge.id as string, 300);
    // Out of order: the win arrives first, the dispute's creation after it.
    expect(
      (await deliver(stripe.event('charge.dispute.funds_reinstated', { ...early, status: 'won' }))).status,
    ).toBe(200);
    expect((await deliver(stripe.event('charge.dispute.created', early))).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(100);
    const lost = stripe.disputeCharge(charge.id as string, 200);
    expect((await deliver(stripe.event('charge.dispute.created', lost))).status).toBe(200);
    expect((await deliver(stripe.event('charge.dispute.closed', { ...lost, status: 'lost' }))).status).toBe(
      200,
    );
    expect(await balanceOf(user.id)).toBe(80);
    expect(await purchaseRow(started.purchaseId)).toMatchObject({
      clawed_back_credits: 20,
      returned_credits: 0,
    });
  });

  it('credits given back by a won dispute that then expire count as the purchase’s expired credits', async () => {
    const pack = await createPackage({ credits: 100, priceEuroCents: 1000, validityDays: 30 });
    const { user, client } = await buyer();
    await server.internalClient().internal.credits.grant.mutate({
      userId: user.id,
      amount: 50,
      reason: 'other credits, never expiring',
      idempotencyKey: randomUUID(),
    });
    const { started, charge } = await completedPurchase(client, pack.id);
    const dispute = stripe.disputeCharge(charge.id as string, 400);
    expect((await deliver(stripe.event('charge.dispute.created', dispute))).status).toBe(200);
    const won = stripe.event('charge.dispute.funds_reinstated', { ...dispute, status: 'won' });
    expect((await deliver(won)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(150);
    // The purchase's validity ends: its 60 and the 40 given back expire (backdated), the grant stays.
    await sql`update credits.lots set expires_at = now() - interval '1 second'
               where account_id = ${user.id} and source = 'purchase'`.execute(server.deps.db);
    await sql`update credits.balances set next_lot_expiry = now() - interval '1 second'
               where user_id = ${user.id}`.execute(server.deps.db);
    // All the money back afterwards: every purchase credit expired, so nothing more is taken.
    expect(
      (await deliver(stripe.event('charge.refunded', stripe.refundCharge(charge.id as string, 1000)))).status,
    ).toBe(200);
    expect(await balanceOf(user.id)).toBe(50);
    expect(await purchaseRow(started.purchaseId)).toMatchObject({
      clawed_back_credits: 0,
      unrecovered_credits: 0,
    });
  });

  it('a dispute won after its credits could not be taken forgives the unrecovered ones first', async () => {
    const pack = await createPackage({ credits: 100, priceEuroCents: 1000, validityDays: 30 });
    const { user, client } = await buyer();
    const { started, charge } = await completedPurchase(client, pack.id);
    await client.credits.use.mutate({ amount: 70, appId: 'chat', description: 'spent most' });
    const dispute = stripe.disputeCharge(charge.id as string, 500);
    expect((await deliver(stripe.event('charge.dispute.created', dispute))).status).toBe(200);
    // 50 owed: 30 taken, 20 unrecovered.
    expect(await purchaseRow(started.purchaseId)).toMatchObject({
      clawed_back_credits: 30,
      unrecovered_credits: 20,
    });
    expect(
      (await deliver(stripe.event('charge.dispute.funds_reinstated', { ...dispute, status: 'won' }))).status,
    ).toBe(200);
    expect(await purchaseRow(started.purchaseId)).toMatchObject({
      clawed_back_credits: 0,
      unrecovered_credits: 0,
      returned_credits: 30,
    });
    expect(await balanceOf(user.id)).toBe(30);
    // The credits given back keep the purchase's expiry.
    const lots = await server.internalClient().internal.credits.lots.query({ userId: user.id });
    const expiries = new Set(
      lots.items.filter((lot) => lot.remaining > 0).map((lot) => lot.expiresAt?.toString()),
    );
    expect(expiries.size).toBe(1);
    expect([...expiries][0]).toBeDefined();
  });

  it('an inquiry (warning_* status) takes nothing; when it escalates, funds_withdrawn takes the share once', async () => {
    const pack = await createPackage({ credits: 100, priceEuroCents: 1000 });
    const { user, client } = await buyer();
    const { started, charge } = await completedPurchase(client, pack.id);
    const dispute = stripe.disputeCharge(charge.id as string, 400);
    const inquiry = { ...dispute, status: 'warning_needs_response' };
    expect((await deliver(stripe.event('charge.dispute.created', inquiry))).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(100);
    // Escalated: Stripe withdraws the funds. A chargeback announced by created and funds_withdrawn counts once.
    const withdrawn = stripe.event('charge.dispute.funds_withdrawn', dispute);
    expect((await deliver(withdrawn)).status).toBe(200);
    expect((await deliver(stripe.event('charge.dispute.created', dispute))).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(60);
    expect((await purchaseRow(started.purchaseId)).clawed_back_credits).toBe(40);
  });

  it('a refund that arrives before the payment confirmation is settled when the purchase is credited', async () => {
    const pack = await createPackage({ credits: 100, priceEuroCents: 1000 });
    const { user, client } = await buyer();
    const { started, intentId, succeeded } = await paidIntentPurchase(client, pack.id);
    const charge = stripe.chargeOf(intentId);
    const refunded = stripe.event('charge.refunded', stripe.refundCharge(charge.id as string, 400));
    expect((await deliver(refunded)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(0);
    expect((await purchaseRow(started.purchaseId)).status).toBe('pending');

    expect((await deliver(succeeded)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(60);
    expect((await ledgerOf(user.id)).map((row) => [row.type, row.amount])).toEqual([
      ['purchase', 100],
      ['clawback', -40],
    ]);
  });

  it('a refund and a dispute that overtake the payment of a purchase whose intent id was never stored still claw back once', async () => {
    const pack = await createPackage({ credits: 100, priceEuroCents: 1000 });
    const { user, client } = await buyer();
    const paid = await paidIntentPurchase(client, pack.id);
    // As if the answer of the PaymentIntent creation had been lost: the purchase does not know its intent.
    await server.deps.db
      .updateTable('credits.purchases')
      .set({ stripe_payment_intent_id: null })
      .where('id', '=', paid.started.purchaseId)
      .execute();
    const chargeId = stripe.chargeOf(paid.intentId).id as string;
    const refund = stripe.event('charge.refunded', stripe.refundCharge(chargeId, 300));
    const dispute = stripe.event('charge.dispute.created', stripe.disputeCharge(chargeId, 200));
    expect((await deliver(refund)).status).toBe(200);
    expect((await deliver(dispute)).status).toBe(200);
    expect((await deliver(paid.succeeded)).status).toBe(200);
    expect((await deliver(refund)).status).toBe(200);
    expect((await ledgerOf(user.id)).map((row) => [row.type, row.amount])).toEqual([
      ['purchase', 100],
      ['clawback', -50],
    ]);
    expect(await purchaseRow(paid.started.purchaseId)).toMatchObject({
      status: 'completed',
      stripe_payment_intent_id: paid.intentId,
      clawed_back_credits: 50,
    });
    // A charge of an intent this account does not have is not ours (acknowledged, nothing changes).
    const foreign = stripe.event('charge.refunded', {
      ...stripe.chargeOf(paid.intentId),
      id: 'ch_foreign',
      payment_intent: 'pi_unknown',
    });
    expect((await deliver(foreign)).status).toBe(200);
    expect(await balanceOf(user.id)).toBe(50);
  });

  it('concurrent refund and dispute events for one charge never take more than was bought', async () => {
    const pack = await createPackage({ credits: 100, priceEuroCents: 1000 });
    const { user, client } = await buyer();
    const { started, charge } = await completedPurchase(client, pack.id);
    const chargeId = charge.id as string;
    const refund = stripe.event('charge.refunded', stripe.refundCharge(chargeId, 1000));
    const dispute = stripe.event('charge.dispute.created', stripe.disputeCharge(chargeId));
    const responses = await Promise.all([
      ...Array.from({ length: 5 }, () => deliver(refund)),
      ...Array.from({ length: 5 }, () => deliver(dispute)),
    ]);
    expect(responses.every((r) => r.status === 200)).toBe(true);
    expect(await balanceOf(user.id)).toBe(0);
    expect(await purchaseRow(started.purchaseId)).toMatchObject({
      clawed_back_credits: 100,
      unrecovered_credits: 0,
    });
    const { count } = await server.deps.db
      .selectFrom('credits.transactions')
      .select(sql<number>`count(*)::int4`.as('count'))
      .where('user_id', '=', user.id)
      .where('type', '=', 'clawback')
      .executeTakeFirstOrThrow();
    expect(count).toBe(1);
  });
});
