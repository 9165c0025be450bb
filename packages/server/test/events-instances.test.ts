import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.ts';
import { configFrom } from '../src/config.ts';
import { type AppDeps, createAppDeps } from '../src/deps.ts';
import { SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';
import { TcpFaultProxy } from './helpers/tcp-proxy.ts';
import { type Envelope, eventually, WebhookReceiver } from './helpers/webhook-receiver.ts';

// Events out across instances and connection loss (issue 16). Postgres only: PGlite is one process' database
// and has no socket to cut.

const databaseUrl = process.env.DATABASE_URL;

const EVENTS_ENV = {
  WEBHOOK_ALLOW_PRIVATE: 'true',
  WEBHOOK_DELIVERY_INTERVAL_MS: '50',
  WEBHOOK_RETRY_SCHEDULE: '200ms,400ms,400ms,400ms,400ms,400ms,400ms,400ms,400ms,400ms',
  WEBHOOK_TIMEOUT_MS: '2000',
};

/** `count` users with 100 credits and threshold 50: one useBatch of 60 each then writes `count` balance.low. */
async function usersReadyToCross(server: TestServer, count: number): Promise<string[]> {
  const ids = Array.from({ length: count }, () => `user-${randomUUID()}`);
  await server.db
    .insertInto('credits.alert_settings')
    .values(ids.map((id) => ({ account_kind: 'user' as const, account_id: id, low_balance_threshold: 50 })))
    .execute();
  for (const id of ids) {
    await server.internalClient().internal.credits.grant.mutate({
      userId: id,
      amount: 100,
      reason: 'test funds',
      idempotencyKey: `fund-${id}`,
    });
  }
  return ids;
}

async function crossAll(server: TestServer, ids: string[]) {
  const { results } = await server.internalClient().internal.credits.useBatch.mutate({
    items: ids.map((id) => ({
      userId: id,
      amount: 60,
      appId: 'cross',
      description: 'x',
      idempotencyKey: `cross-${id}`,
    })),
  });
  expect(results.every((result) => result.ok)).toBe(true);
}

/** Every received envelope about `ids`, verified; checks that no event arrived under two ids. */
function lowsFor(receiver: WebhookReceiver, secret: string, ids: string[]): Map<string, Envelope> {
  const wanted = new Set(ids);
  const byUser = new Map<string, Envelope>();
  for (const envelope of receiver.envelopes(secret)) {
    const userId = envelope.data.userId as string;
    if (envelope.type !== 'balance.low' || !wanted.has(userId)) continue;
    const seen = byUser.get(userId);
    if (seen) expect(envelope).toEqual(seen);
    byUser.set(userId, envelope);
  }
  return byUser;
}

describe.skipIf(!databaseUrl)('two instances on one database', () => {
  let server: TestServer;
  let sibling: { app: FastifyInstance; deps: AppDeps };
  let receiver: WebhookReceiver;

  beforeAll(async () => {
    server = await startTestServer(EVENTS_ENV);
    const deps = await createAppDeps(
      configFrom({
        ...server.database.env,
        ...EVENTS_ENV,
        MANA_CORE_AUTH_URL: server.auth.url,
        MANA_CORE_SERVICE_KEY: SERVICE_KEY,
        DB_POOL_SIZE: '5',
      }),
      { migrate: false },
    );
    sibling = { app: await buildApp(deps, { closeDepsOnClose: true, logger: false }), deps };
    await sibling.app.ready();
    receiver = await WebhookReceiver.start();
  });
  afterAll(async () => {
    await sibling?.app.close();
    await server?.close();
    await receiver?.close();
  });

  it('both deliver, and no event is sent twice (each attempt is claimed by one instance)', async () => {
    receiver.mode = 'slow';
    receiver.delayMs = 100;
    const endpoint = await server.internalClient().internal.webhooks.create.mutate({
      url: receiver.url,
      events: ['balance.low'],
    });
    const ids = await usersReadyToCross(server, 150);
    await crossAll(server, ids);
    await eventually(
      '150 deliveries',
      () => (lowsFor(receiver, endpoint.secret, ids).size === 150 ? true : undefined),
      60_000,
    );
    const deliveries = await eventually('150 recorded as delivered', async () => {
      const rows = await server.db
        .selectFrom('credits.webhook_deliveries')
        .select(['status', 'attempts'])
        .where('webhook_id', '=', endpoint.id)
        .execute();
      return rows.length === 150 && rows.every((row) => row.status === 'delivered') ? rows : undefined;
    });
    // Exactly one request per event: no attempt was sent by both instances.
    expect(receiver.received).toHaveLength(150);
    expect(deliveries.every((row) => row.attempts === 1)).toBe(true);
    const delivered = async (deps: AppDeps) =>
      (await deps.metrics.webhookDeliveries.get()).values.find(
        (value) => value.labels.outcome === 'delivered',
      )?.value ?? 0;
    const [mine, theirs] = [await delivered(server.deps), await delivered(sibling.deps)];
    expect(mine + theirs).toBe(150);
    expect(mine).toBeGreaterThan(0);
    expect(theirs).toBeGreaterThan(0);
    // Each event was numbered once, by one relay, with no gaps.
    const { rows } = await server.db
      .selectFrom('credits.events')
      .select((eb) => [eb.fn.countAll<number>().as('n'), eb.fn.max('position').as('top')])
      .where('position', 'is not', null)
      .execute()
      .then((result) => ({ rows: result }));
    expect(Number(rows[0]?.n)).toBe(Number(rows[0]?.top));
  });
});

describe.skipIf(!databaseUrl)('Postgres connection loss', () => {
  let proxy: TcpFaultProxy;
  let server: TestServer;
  let receiver: WebhookReceiver;

  beforeAll(async () => {
    const target = new URL(databaseUrl!);
    proxy = await TcpFaultProxy.start({ host: target.hostname, port: Number(target.port || 5432) });
    server = await startTestServer(EVENTS_ENV, { proxy });
    receiver = await WebhookReceiver.start();
  });
  afterAll(async () => {
    proxy?.cutResponses(0);
    await server?.close();
    await proxy?.close();
    await receiver?.close();
  });

  it('the relay and the worker ride out cut connections: every event delivered, none under two ids', async () => {
    receiver.mode = 'down';
    const endpoint = await server.internalClient().internal.webhooks.create.mutate({
      url: receiver.url,
      events: ['balance.low'],
    });
    const ids = await usersReadyToCross(server, 40);
    await crossAll(server, ids);
    await eventually('first attempts', async () => {
      const rows = await server.db
        .selectFrom('credits.webhook_deliveries')
        .select('attempts')
        .where('webhook_id', '=', endpoint.id)
        .execute();
      return rows.length === 40 && rows.every((row) => row.attempts > 0);
    });
    // The receiver comes back while a third of Postgres' answers to the server are cut, and all connections are
    // dropped now and then: claims, successes and failures are lost between the database and the worker.
    receiver.mode = 'ok';
    proxy.cutResponses(0.3);
    for (let i = 0; i < 6; i++) {
      await new Promise((resolve) => setTimeout(resolve, 400));
      proxy.cutAll();
    }
    proxy.cutResponses(0);
    await eventually(
      'all delivered',
      async () => {
        const rows = await server.db
          .selectFrom('credits.webhook_deliveries')
          .select('status')
          .where('webhook_id', '=', endpoint.id)
          .execute();
        return rows.every((row) => row.status === 'delivered');
      },
      60_000,
    );
    expect(lowsFor(receiver, endpoint.secret, ids).size).toBe(40);
    expect(proxy.cuts).toBeGreaterThan(0);
    // The server is still serving.
    expect((await fetch(`${server.url}/ready`)).status).toBe(200);
  });
});
