import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deliverDue, relayPending } from '../src/domain/events/worker.ts';
import { startTestServer, type TestServer } from './helpers/server.ts';
import { WebhookReceiver } from './helpers/webhook-receiver.ts';

// Webhook delivery when the scheduler stops mid-run (found by the review of 2026-12-04): an attempt our own
// shutdown cut short is not the endpoint's failure and must not spend a retry (the last one gave the event up
// unsent) nor start a failing streak.

let server: TestServer;
let receiver: WebhookReceiver;

beforeAll(async () => {
  server = await startTestServer(
    {
      WEBHOOK_ALLOW_PRIVATE: 'true',
      // the job is off: each test drives the relay and the worker by hand
      WEBHOOK_DELIVERY_INTERVAL_MS: '0',
      AUTO_TOP_UP_INTERVAL_MS: '0',
    },
    { transport: 'in-process' },
  );
  receiver = await WebhookReceiver.start();
});
afterAll(async () => {
  await server?.close();
  await receiver?.close();
});

const internal = () => server.internalClient();

/** One committed event of `type`, relayed, with one pending delivery to a fresh endpoint. */
async function pendingDelivery(type: string) {
  const endpoint = await internal().internal.webhooks.create.mutate({
    url: receiver.url,
    events: [type as never],
  });
  const userId = `user-${crypto.randomUUID()}`;
  const event = await server.db
    .insertInto('credits.events')
    .values({ type, user_id: userId, data: JSON.stringify({ userId }) })
    .returning('id')
    .executeTakeFirstOrThrow();
  await relayPending(server.db);
  const delivery = await server.db
    .selectFrom('credits.webhook_deliveries')
    .selectAll()
    .where('webhook_id', '=', endpoint.id)
    .executeTakeFirstOrThrow();
  return { endpoint, eventId: event.id, delivery };
}

describe('webhook delivery and the scheduler stopping', () => {
  it('an attempt cut short by our own shutdown before anything was sent is not a failed attempt: the last retry is not given up', async () => {
    const config = server.deps.config.events;
    const { endpoint, delivery } = await pendingDelivery('balance.low');
    // The delivery has used all its retries but the last (attempts = schedule length): the next claim is the
    // last attempt the schedule allows.
    await sql`update credits.webhook_deliveries set attempts = ${config.webhookRetryScheduleMs.length}
               where id = ${delivery.id}::uuid`.execute(server.db);

    // The scheduler stops (SIGTERM of a rollout) right after the worker claimed the delivery, before its
    // request left: simulated by aborting the run's signal as the claim's answer arrives.
    const stopping = new AbortController();
    const db = server.db.withPlugin({
      transformQuery: (args) => args.node,
      transformResult: async (args) => {
        if (!stopping.signal.aborted && args.result.rows.length > 0) stopping.abort();
        return args.result;
      },
    });
    receiver.clear();
    await deliverDue(db, config, { signal: stopping.signal });

    // Nothing reached the endpoint …
    expect(receiver.received).toHaveLength(0);
    const after = await server.db
      .selectFrom('credits.webhook_deliveries')
      .selectAll()
      .where('id', '=', delivery.id)
      .executeTakeFirstOrThrow();
    const hook = await server.db
      .selectFrom('credits.webhooks')
      .selectAll()
      .where('id', '=', endpoint.id)
      .executeTakeFirstOrThrow();
    // … so the event must still be on its way to it (at least once), and the healthy endpoint is not "failing".
    expect({ status: after.status, lastError: after.last_error, failingSince: hook.failing_since }).toEqual({
      status: 'pending',
      lastError: null,
      failingSince: null,
    });
    // The claim was given back: the attempt is not counted and the delivery is due at once.
    expect(after.attempts).toBe(config.webhookRetryScheduleMs.length);
    expect(after.next_attempt_at.getTime()).toBeLessThanOrEqual(Date.now() + 1000);

    // The next run (this instance restarted, or another one) sends it, as its last attempt, and it arrives.
    await deliverDue(server.db, config);
    expect(receiver.received).toHaveLength(1);
    const delivered = await server.db
      .selectFrom('credits.webhook_deliveries')
      .select(['status', 'attempts'])
      .where('id', '=', delivery.id)
      .executeTakeFirstOrThrow();
    expect(delivered).toEqual({ status: 'delivered', attempts: config.webhookRetryScheduleMs.length + 1 });
  });
});
