import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import Stripe from 'stripe';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { runAutoTopUps } from '../src/domain/stripe/auto-top-up.ts';
import { expectLedgerConsistent } from './helpers/invariants.ts';
import { newUser, startTestServer, type TestServer } from './helpers/server.ts';
import { TestStripeServer } from './helpers/stripe-server.ts';

// Stripe conditions that say nothing about the customer's payment — rate limiting, a key Stripe refuses, an id
// Stripe does not know — must not be recorded as one (auto top-up switched off) nor answered with a status that
// Stripe retries for days when a retry cannot help.

const SHOP = 'https://shop.example.test';

let server: TestServer;
let stripe: TestStripeServer;

beforeAll(async () => {
  stripe = await TestStripeServer.start();
  server = await startTestServer(
    {
      STRIPE_SECRET_KEY: stripe.secretKey,
      STRIPE_WEBHOOK_SECRET: stripe.webhookSecret,
      STRIPE_API_URL: stripe.url,
      CHECKOUT_ALLOWED_ORIGINS: SHOP,
      AUTO_TOP_UP_INTERVAL_MS: '0',
      WEBHOOK_DELIVERY_INTERVAL_MS: '0',
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

const deliver = (event: Record<string, unknown>) => stripe.deliver(server.url, event);
const internal = () => server.internalClient();

async function createPackage(credits = 100, priceEuroCents = 999, stripePriceId?: string) {
  return internal().internal.packages.upsert.mutate({
    name: `p-${randomUUID().slice(0, 8)}`,
    credits,
    priceEuroCents,
    active: true,
    sortOrder: 1,
    ...(stripePriceId ? { stripePriceId } : {}),
  });
}

async function enrolledUser(funds: number, threshold: number, packageId: string) {
  const user = newUser();
  const client = await server.userClient(user);
  await internal().internal.credits.grant.mutate({
    userId: user.id,
    amount: funds,
    reason: 'test funds',
    idempotencyKey: `grant-${randomUUID()}`,
  });
  const started = await client.credits.autoTopUp.setup.mutate({ packageId, threshold });
  const setup = stripe.succeedSetupIntent(started.setupIntentId);
  expect((await deliver(stripe.event('setup_intent.succeeded', setup))).status).toBe(200);
  return { user, client };
}

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

function stripeClientFor(http: Server) {
  const { port } = http.address() as AddressInfo;
  return new Stripe('sk_test_x', {
    host: '127.0.0.1',
    port,
    protocol: 'http',
    maxNetworkRetries: 2,
    telemetry: false,
  });
}

describe('auto top-up: a transient Stripe condition is not a failed payment', () => {
  it('a rate-limited (429) payment call leaves auto top-up on and the attempt to be retried', async () => {
    const pack = await createPackage(100, 999);
    const { user, client } = await enrolledUser(100, 50, pack.id);
    await client.credits.use.mutate({ amount: 60, appId: 'app', description: 'spend' });
    const limited = await answeringServer(429, 'invalid_request_error', 'rate_limit');
    try {
      const results = await runAutoTopUps({ db: server.deps.db, stripe: stripeClientFor(limited) });
      const view = await client.credits.autoTopUp.get.query();
      // Nothing was charged and Stripe only asked us to slow down: the attempt should stay pending (retried
      // after its lease) and auto top-up should stay on.
      expect({
        results: Object.values(results),
        enabled: view.enabled,
        last: view.lastAttempt?.status,
      }).toEqual({ results: ['unknown'], enabled: true, last: 'pending' });
    } finally {
      await new Promise((resolve) => limited.close(resolve));
      await server.db
        .updateTable('credits.auto_top_up')
        .set({ enabled: false })
        .where('user_id', '=', user.id)
        .execute();
    }
  });

  it('an invalid API key (401, our misconfiguration) does not turn the user’s auto top-up off', async () => {
    const pack = await createPackage(100, 999);
    const { user, client } = await enrolledUser(100, 50, pack.id);
    await client.credits.use.mutate({ amount: 60, appId: 'app', description: 'spend' });
    const wrongKey = new Stripe('sk_test_rotated', {
      host: '127.0.0.1',
      port: Number(new URL(stripe.url).port),
      protocol: 'http',
      maxNetworkRetries: 0,
      telemetry: false,
    });
    await runAutoTopUps({ db: server.deps.db, stripe: wrongKey });
    const view = await client.credits.autoTopUp.get.query();
    expect({ enabled: view.enabled, reason: view.disabledReason }).toEqual({ enabled: true, reason: null });
    await server.db
      .updateTable('credits.auto_top_up')
      .set({ enabled: false })
      .where('user_id', '=', user.id)
      .execute();
  });
});

describe('a setup_intent.succeeded naming what Stripe does not have', () => {
  it('naming a payment method Stripe does not have: acknowledged, nothing saved (resource_missing is final)', async () => {
    const pack = await createPackage(100, 999);
    const user = newUser();
    const client = await server.userClient(user);
    const started = await client.credits.autoTopUp.setup.mutate({ packageId: pack.id, threshold: 10 });
    const setup = stripe.succeedSetupIntent(started.setupIntentId);
    const event = stripe.event('setup_intent.succeeded', { ...setup, payment_method: 'pm_does_not_exist' });
    const response = await deliver(event);
    // resource_missing is final: retrying for three days changes nothing.
    expect(response.status).toBeLessThan(500);
    expect((await client.credits.autoTopUp.get.query()).enabled).toBe(false);
  });
});
