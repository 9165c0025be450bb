import { randomUUID } from 'node:crypto';
import { createDb } from '@mana-credits/db';
import { sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestAuthServer } from './helpers/auth-server.ts';
import { createTestDataDir, type TestDatabase } from './helpers/database.ts';
import type { Client } from './helpers/server.ts';
import { type ServerProcess, spawnServer } from './helpers/server-process.ts';
import { eventually, WebhookReceiver } from './helpers/webhook-receiver.ts';

/**
 * Events out (issue 16) across a crash: the real process (helpers/server-process.ts, as in shutdown.test.ts) is
 * SIGKILLed while a webhook attempt is in flight, and a second process on the same database finishes the work.
 * Runs on Postgres and on a PGlite directory (the two processes open it one after the other; the test reads it
 * only through the second process's API).
 */
const onPostgres = Boolean(process.env.DATABASE_URL);

/**
 * A send may take WEBHOOK_TIMEOUT_MS; the worker's claim lease is then 2 × that + 5 s (domain/events/worker.ts),
 * 11 s here. The test does not wait for all of it: once the process is dead it moves the end of the lease
 * LEASE_LEFT_MS ahead in the database (backdating it, as a clock that ran on would), and checks that the next
 * process still waits for that end.
 */
const TIMEOUT_MS = 3000;
const LEASE_LEFT_MS = 3000;

/** Makes the claimed delivery's lease end `ms` from now (the database's now); returns when, in this process's clock. */
async function shortenLease(database: TestDatabase, ms: number): Promise<number> {
  const handle = await createDb(
    database.url ? { databaseUrl: database.url, poolSize: 1 } : { dataDir: database.env.DATA_DIR },
  );
  try {
    const { rows } = await sql<{ left_ms: number }>`
      update credits.webhook_deliveries
         set next_attempt_at = now() + make_interval(secs => ${ms / 1000}::float8)
       where status = 'pending' and next_attempt_at > now()
      returning round(extract(epoch from next_attempt_at - clock_timestamp()) * 1000)::int as left_ms`.execute(
      handle.db,
    );
    expect(rows).toHaveLength(1);
    return Date.now() + Number(rows[0]!.left_ms);
  } finally {
    await handle.close();
  }
}

const EVENTS_ENV = {
  WEBHOOK_ALLOW_PRIVATE: 'true',
  WEBHOOK_DELIVERY_INTERVAL_MS: '50',
  WEBHOOK_RETRY_SCHEDULE: '200ms,400ms,800ms',
  WEBHOOK_TIMEOUT_MS: String(TIMEOUT_MS),
  LOW_BALANCE_THRESHOLD: '50',
};

let auth: TestAuthServer;
let database: TestDatabase;
let receiver: WebhookReceiver;
beforeAll(async () => {
  auth = await TestAuthServer.start();
  // On PGlite this waits for global-setup.ts's dump, which may still be in the making: a hook, not the test.
  database = await createTestDataDir();
  receiver = await WebhookReceiver.start();
});
afterAll(async () => {
  await receiver?.close();
  await database?.drop();
  await auth?.close();
});

/** Starts the server on `database` and waits until it is ready (migrated, listening). */
async function startServer(database: TestDatabase): Promise<ServerProcess> {
  const server = await spawnServer(database, { authUrl: auth.url, appId: 'events-crash', env: EVENTS_ENV });
  await eventually('the server to be ready', async () => (await fetch(`${server.url}/ready`)).ok);
  return server;
}

const grant = (client: Client, userId: string, amount: number) =>
  client.internal.credits.grant.mutate({
    userId,
    amount,
    reason: 'crash test',
    idempotencyKey: randomUUID(),
  });

describe('webhook delivery across a SIGKILL of the real process', () => {
  it('an attempt in flight is sent again under the same webhook-id by the next process; events the dead one had not relayed are delivered too', async () => {
    receiver.mode = 'hold';
    const first = await startServer(database);
    const endpoint = await first.client.internal.webhooks.create.mutate({ url: receiver.url });
    const alice = `crash-alice-${randomUUID()}`;
    const bob = `crash-bob-${randomUUID()}`;

    await grant(first.client, alice, 100); // balance.recovered (0 → 100, threshold 50)
    const held = await eventually('the first delivery to arrive', () => receiver.received[0]);
    // Its answer is held back: the attempt is in flight, and the worker's run waits for it, so what is written
    // now is committed to the outbox but not yet relayed (numbered and queued for the endpoint).
    await first.client.internal.credits.use.mutate({
      userId: alice,
      amount: 60,
      appId: 'crash',
      description: 'to 40',
      idempotencyKey: randomUUID(),
    }); // balance.low
    await grant(first.client, bob, 100); // balance.recovered

    const killedAt = Date.now();
    first.child.kill('SIGKILL');
    expect(await first.exited).toEqual({ code: null, signal: 'SIGKILL' });
    // Killed before the send could time out (so no result was recorded for it), and nothing else was sent.
    expect(killedAt - held.receivedAt).toBeLessThan(TIMEOUT_MS);
    expect(receiver.received).toHaveLength(1);

    if (onPostgres) {
      // What the dead process left behind: the claimed attempt under its lease, two events never relayed.
      const db = new pg.Client({ connectionString: database.url });
      await db.connect();
      try {
        const { rows: deliveries } = await db.query<{ status: string; attempts: number; leased: boolean }>(
          `select status, attempts, next_attempt_at > now() as leased from credits.webhook_deliveries`,
        );
        expect(deliveries).toEqual([{ status: 'pending', attempts: 1, leased: true }]);
        const { rows: events } = await db.query<{ unrelayed: number }>(
          'select count(*) filter (where position is null)::int as unrelayed from credits.events',
        );
        expect(events).toEqual([{ unrelayed: 2 }]);
      } finally {
        await db.end();
      }
    }

    const leaseEndsAt = await shortenLease(database, LEASE_LEFT_MS);
    receiver.mode = 'ok';
    receiver.release();
    const secondStartedAt = Date.now();
    const second = await startServer(database);
    const secondReadyAt = Date.now();

    const deliveries = await eventually(
      'every delivery to be delivered',
      async () => {
        const page = await second.client.internal.webhooks.deliveries.query({
          webhookId: endpoint.id,
          limit: 100,
        });
        return page.items.length === 3 && page.items.every((item) => item.status === 'delivered')
          ? page.items
          : undefined;
      },
      LEASE_LEFT_MS + 20_000,
    );
    const events = (await second.client.internal.events.list.query({ limit: 100 })).items;
    expect(events.map((event) => `${event.type} ${event.data.userId}`).sort()).toEqual(
      [`balance.low ${alice}`, `balance.recovered ${alice}`, `balance.recovered ${bob}`].sort(),
    );

    // Every request verifies with the standardwebhooks package, and its webhook-id is its body's id.
    const arrivals = receiver.received.map((delivery) => ({
      delivery,
      webhookId: delivery.headers['webhook-id'],
      envelope: receiver.verify(delivery, endpoint.secret),
    }));
    for (const { webhookId, envelope } of arrivals) expect(webhookId).toBe(envelope.id);

    // The attempt cut off by the kill was sent again, by the second process, with the same id and body.
    const heldId = held.headers['webhook-id'];
    expect(heldId).toBe(
      events.find((event) => event.data.userId === alice && event.type === 'balance.recovered')?.id,
    );
    const again = arrivals.filter((arrival) => arrival.webhookId === heldId);
    expect(again).toHaveLength(2);
    expect(again[1]?.delivery.receivedAt).toBeGreaterThan(secondStartedAt);
    // Not before the dead process's lease ran out…
    const resentAt = again[1]?.delivery.receivedAt ?? 0;
    expect(resentAt).toBeGreaterThanOrEqual(leaseEndsAt - 50);
    // …while the two events the dead one never relayed went out without waiting for it (when the second process
    // was up before the lease ended: a slow start on a busy machine may outlast it).
    if (secondReadyAt < leaseEndsAt - 500) {
      const others = arrivals.filter((arrival) => arrival.webhookId !== heldId);
      expect(others).toHaveLength(2);
      for (const other of others) expect(other.delivery.receivedAt).toBeLessThan(resentAt);
    }
    expect(again[1]?.delivery.body).toBe(held.body);
    expect(deliveries.find((item) => item.eventId === heldId)).toMatchObject({
      status: 'delivered',
      attempts: 2,
      lastStatus: 204,
    });

    // Each event ended delivered, once per endpoint, and arrived under its own id only.
    expect(deliveries.map((item) => item.eventId).sort()).toEqual(events.map((event) => event.id).sort());
    expect(deliveries.every((item) => item.kind === 'original')).toBe(true);
    expect(arrivals).toHaveLength(4);
    const idsOf = new Map<string, Set<string>>();
    for (const { envelope } of arrivals) {
      const key = `${envelope.type} ${envelope.data.userId}`;
      idsOf.set(key, (idsOf.get(key) ?? new Set()).add(envelope.id));
    }
    expect([...idsOf.values()].map((ids) => ids.size)).toEqual([1, 1, 1]);
    expect(new Set(arrivals.map((arrival) => arrival.envelope.id))).toEqual(
      new Set(events.map((event) => event.id)),
    );

    second.child.kill('SIGTERM');
    expect(await second.exited).toEqual({ code: 0, signal: null });
    // Two cold starts of the process and what is left of the lease: a few seconds on an idle machine, more on
    // PGlite (each start opens the data directory, and so does shortenLease) or a busy one.
  }, 120_000);
});
