import { queueReplay, recordDeliveryFailure, recordDeliverySuccess, relayEvents } from '@mana-credits/db';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isPrivateAddress } from '../src/domain/events/address-policy.ts';
import { retryDelayMs, sendDelivery } from '../src/domain/events/delivery.ts';
import { failure } from './helpers/errors.ts';
import { startTestServer, type TestServer } from './helpers/server.ts';
import { whileAnotherSession } from './helpers/sessions.ts';
import { eventually, WebhookReceiver } from './helpers/webhook-receiver.ts';

// Where webhooks may go (no SSRF), when an endpoint is disabled, and what the metrics say (issue 16).

let receiver: WebhookReceiver;
beforeAll(async () => {
  receiver = await WebhookReceiver.start();
});
afterAll(async () => {
  await receiver?.close();
});

describe('address policy', () => {
  it('refuses loopback, private, link-local, reserved and mapped addresses; lets public ones through', () => {
    for (const address of [
      '127.0.0.1',
      '127.255.0.9',
      '10.1.2.3',
      '172.16.0.1',
      '172.31.255.255',
      '192.168.1.1',
      '169.254.169.254',
      '100.64.0.1',
      '0.0.0.0',
      '224.0.0.1',
      '255.255.255.255',
      '::1',
      '::',
      'fe80::1',
      'fd00::1',
      'fc12:3456::1',
      'ff02::1',
      '::ffff:127.0.0.1',
      '::ffff:7f00:1',
      '::ffff:10.0.0.1',
      '64:ff9b::a9fe:a9fe',
      '2002:7f00:1::',
      '::127.0.0.1',
      '::808:808',
      'not-an-address',
    ]) {
      expect(isPrivateAddress(address), address).toBe(true);
    }
    for (const address of [
      '1.1.1.1',
      '8.8.8.8',
      '172.32.0.1',
      '93.184.216.34',
      '2606:4700:4700::1111',
      '::ffff:8.8.8.8',
    ]) {
      expect(isPrivateAddress(address), address).toBe(false);
    }
  });

  it('a delivery is checked where it connects: loopback by address or by name is blocked, nothing is sent', async () => {
    receiver.clear();
    const port = new URL(receiver.url).port;
    for (const url of [
      receiver.url,
      `http://localhost:${port}/hooks`,
      `http://[::ffff:127.0.0.1]:${port}/hooks`,
    ]) {
      const result = await sendDelivery(url, '{}', {}, { timeoutMs: 2000, allowPrivate: false });
      expect(result.outcome, url).toBe('blocked');
      expect(result.error, url).toMatch(/private, loopback or reserved/);
    }
    expect(receiver.received).toHaveLength(0);
    const allowed = await sendDelivery(receiver.url, '{}', {}, { timeoutMs: 2000, allowPrivate: true });
    expect(allowed).toEqual({ outcome: 'delivered', status: 204, error: null });
  });

  it('a slow endpoint times out; a redirect is not followed', async () => {
    receiver.mode = 'slow';
    receiver.delayMs = 1000;
    const slow = await sendDelivery(receiver.url, '{}', {}, { timeoutMs: 200, allowPrivate: true });
    expect(slow).toMatchObject({ outcome: 'timeout', status: null });
    receiver.mode = 'ok';
    const nowhere = await sendDelivery(
      'http://127.0.0.1:1/x',
      '{}',
      {},
      { timeoutMs: 2000, allowPrivate: true },
    );
    expect(nowhere.outcome).toBe('unreachable');
  });

  it('retry delays follow the schedule with ±20 % jitter, then give up', () => {
    const schedule = [5000, 60_000];
    expect(retryDelayMs(1, schedule, () => 0)).toBe(4000);
    expect(retryDelayMs(1, schedule, () => 0.999_999)).toBe(6000);
    expect(retryDelayMs(2, schedule, () => 0.5)).toBe(60_000);
    expect(retryDelayMs(3, schedule)).toBeNull();
  });
});

describe('endpoints on a server without WEBHOOK_ALLOW_PRIVATE', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ WEBHOOK_DELIVERY_INTERVAL_MS: '50' });
  });
  afterAll(async () => {
    await server?.close();
  });

  it('create and update refuse private targets with a 400 naming url', async () => {
    const internal = server.internalClient();
    for (const url of [
      receiver.url,
      'http://localhost/hook',
      'http://[::1]:8080/hook',
      'http://169.254.169.254/latest/meta-data',
      'https://10.0.0.5/hook',
      'http://[::ffff:127.0.0.1]/hook',
      'http://0.0.0.0/',
    ]) {
      const error = await failure(internal.internal.webhooks.create.mutate({ url }));
      expect(error.data, url).toMatchObject({ code: 'BAD_REQUEST', reason: 'WEBHOOK_URL_REFUSED' });
      expect(error.message, url).toMatch(/^url: /);
    }
    for (const url of [
      'ftp://example.com/',
      'javascript:alert(1)',
      'http://user:pw@example.com/',
      '/relative',
      'https://93.184.215.14:0/',
      // ~1,000 characters as typed, over 2048 once the spaces are percent-encoded
      `https://93.184.215.14/${' '.repeat(1000)}x`,
    ]) {
      const error = await failure(internal.internal.webhooks.create.mutate({ url }));
      expect(error.data, url).toMatchObject({ code: 'BAD_REQUEST', reason: 'VALIDATION' });
      expect(error.message, url).toContain('url');
    }
    // What is stored is the URL as it is read and connected to.
    for (const [typed, stored] of [
      ['HTTPS://93.184.215.14', 'https://93.184.215.14/'],
      ['https:93.184.215.14/hooks', 'https://93.184.215.14/hooks'],
      ['https://@93.184.215.14/a b', 'https://93.184.215.14/a%20b'],
      ['https://93.184.215.14\\@evil.test/', 'https://93.184.215.14/@evil.test/'],
    ]) {
      const created = await internal.internal.webhooks.create.mutate({ url: typed! });
      expect(created.url, typed).toBe(stored);
      await internal.internal.webhooks.delete.mutate({ id: created.id });
    }
    // An endpoint written straight into the table (e.g. by an older release) is still refused at delivery.
    const row = await server.db
      .insertInto('credits.webhooks')
      .values({ url: receiver.url, secret: 'whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ=' })
      .returning('id')
      .executeTakeFirstOrThrow();
    const update = await failure(
      internal.internal.webhooks.update.mutate({ id: row.id, url: 'http://127.0.0.2/' }),
    );
    expect(update.data?.reason).toBe('WEBHOOK_URL_REFUSED');
    receiver.clear();
    const user = await server.fundedUser(10);
    await internal.internal.credits.setAlerts.mutate({ userId: user.id, lowBalanceThreshold: 5 });
    await internal.internal.credits.use.mutate({ userId: user.id, amount: 10, appId: 'a', description: 'x' });
    // An attempt is counted when it is claimed, its error once it ends: wait for the ended attempt.
    const delivery = await eventually('an ended attempt', async () => {
      const page = await internal.internal.webhooks.deliveries.query({ webhookId: row.id });
      return page.items.find((item) => item.attempts > 0 && item.lastError !== null);
    });
    expect(delivery.lastError).toMatch(/private, loopback or reserved/);
    expect(receiver.received).toHaveLength(0);
    await internal.internal.webhooks.delete.mutate({ id: row.id });
  });
});

describe('disabling a failing endpoint, and the metrics', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({
      WEBHOOK_ALLOW_PRIVATE: 'true',
      WEBHOOK_DELIVERY_INTERVAL_MS: '50',
      WEBHOOK_RETRY_SCHEDULE: '100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms',
      // 0.72 s
      WEBHOOK_DISABLE_AFTER_HOURS: '0.0002',
    });
  });
  afterAll(async () => {
    await server?.close();
  });

  it('an endpoint failing longer than WEBHOOK_DISABLE_AFTER_HOURS is disabled and says so; enabling it sends what waited', async () => {
    const internal = server.internalClient();
    const failing = await WebhookReceiver.start();
    try {
      failing.mode = 'failing';
      const endpoint = await internal.internal.webhooks.create.mutate({ url: failing.url });
      const user = await server.fundedUser(100);
      await internal.internal.credits.setAlerts.mutate({ userId: user.id, lowBalanceThreshold: 50 });
      await internal.internal.credits.use.mutate({
        userId: user.id,
        amount: 60,
        appId: 'a',
        description: 'x',
      });
      const disabled = await eventually('the endpoint disabled', async () => {
        const { items } = await internal.internal.webhooks.list.query();
        const found = items.find((item) => item.id === endpoint.id);
        return found?.enabled === false ? found : undefined;
      });
      expect(disabled.disabledReason).toMatch(/^failing since .*, last error: answered 500$/);
      expect(disabled.disabledAt).toBeInstanceOf(Date);
      const attempts = failing.received.length;
      // Nothing more is sent while disabled.
      await new Promise((resolve) => setTimeout(resolve, 400));
      expect(failing.received.length).toBe(attempts);
      const [pending] = (await internal.internal.webhooks.deliveries.query({ webhookId: endpoint.id })).items;
      expect(pending?.status).toBe('pending');

      failing.mode = 'ok';
      await internal.internal.webhooks.update.mutate({ id: endpoint.id, enabled: true });
      await eventually('delivered after enabling', async () => {
        const page = await internal.internal.webhooks.deliveries.query({ webhookId: endpoint.id });
        return page.items.every((item) => item.status === 'delivered');
      });
      expect(failing.envelopes(endpoint.secret).at(-1)?.type).toBe('balance.low');

      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      expect(metrics).toMatch(/mana_credits_events_written_total\{type="balance\.low"\} [1-9]/);
      expect(metrics).toMatch(/mana_credits_webhook_deliveries_total\{outcome="delivered"\} [1-9]/);
      expect(metrics).toMatch(/mana_credits_webhook_deliveries_total\{outcome="rejected"\} [1-9]/);
      expect(metrics).toMatch(/mana_credits_webhook_endpoints_disabled_total 1/);
      expect(metrics).toMatch(/mana_credits_events_oldest_undelivered_seconds 0\n/);
      await internal.internal.webhooks.delete.mutate({ id: endpoint.id });
    } finally {
      await failing.close();
    }
  });

  it('the oldest undelivered event age grows while an endpoint cannot be reached', async () => {
    const internal = server.internalClient();
    const down = await WebhookReceiver.start();
    try {
      down.mode = 'down';
      const endpoint = await internal.internal.webhooks.create.mutate({
        url: down.url,
        events: ['balance.low'],
      });
      const user = await server.fundedUser(100);
      await internal.internal.credits.setAlerts.mutate({ userId: user.id, lowBalanceThreshold: 50 });
      await internal.internal.credits.use.mutate({
        userId: user.id,
        amount: 60,
        appId: 'a',
        description: 'x',
      });
      await eventually('a visible age', async () => {
        const metrics = await (await fetch(`${server.url}/metrics`)).text();
        const age = Number(/mana_credits_events_oldest_undelivered_seconds ([\d.e+-]+)/.exec(metrics)?.[1]);
        return age > 0.3;
      });
      await internal.internal.webhooks.delete.mutate({ id: endpoint.id });
    } finally {
      await down.close();
    }
  });
});

// Two sessions at once: Postgres only.
describe.runIf(Boolean(process.env.DATABASE_URL))(
  'an endpoint deleted while the delivery job works on it',
  () => {
    let server: TestServer;
    beforeAll(async () => {
      // the app's own delivery job stays idle (its first run finds nothing): the test runs each step itself
      server = await startTestServer({ WEBHOOK_DELIVERY_INTERVAL_MS: '600000' });
    });
    afterAll(async () => {
      await server?.close();
    });
    /** A disabled endpoint (nothing is sent to it) and an event not relayed yet. */
    async function endpointAndEvent() {
      const webhook = await server.db
        .insertInto('credits.webhooks')
        .values({
          url: 'https://example.com/hook',
          secret: 'whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ=',
          enabled: false,
        })
        .returning('id')
        .executeTakeFirstOrThrow();
      const event = await server.db
        .insertInto('credits.events')
        .values({ type: 'balance.low', data: JSON.stringify({}) })
        .returning('id')
        .executeTakeFirstOrThrow();
      return { webhookId: webhook.id, eventId: event.id };
    }

    /** Runs `work` while another session deletes the endpoint: its row locked first, then the delete (cascade). */
    const whileDeleting = <T>(webhookId: string, work: () => Promise<T>) =>
      whileAnotherSession(
        server.database.url!,
        ['select 1 from credits.webhooks where id = $1 for update', [webhookId]],
        work,
        ['delete from credits.webhooks where id = $1', [webhookId]],
      );

    // Deleting an endpoint locks its row, then its deliveries (cascade). Recording an attempt locked them the
    // other way round, so the two could deadlock and Postgres aborted one: perhaps the caller's delete, a 500.
    it('recording an attempt takes the endpoint row first: the delete goes through, the record finds nothing left', async () => {
      const outcomes: ('failure' | 'success')[] = ['failure', 'success'];
      for (const outcome of outcomes) {
        const { webhookId, eventId } = await endpointAndEvent();
        const delivery = await server.db
          .insertInto('credits.webhook_deliveries')
          .values({
            webhook_id: webhookId,
            event_id: eventId,
            attempts: 1,
            next_attempt_at: sql`now() + interval '1 hour'`,
          })
          .returning('id')
          .executeTakeFirstOrThrow();
        const attempt = { id: delivery.id, webhookId, attempt: 1 };
        if (outcome === 'success') {
          // a failing endpoint: a success clears its streak, so the record writes the endpoint row
          await server.db
            .updateTable('credits.webhooks')
            .set({ failing_since: sql`now()` })
            .where('id', '=', webhookId)
            .execute();
        }
        await whileDeleting(webhookId, async () => {
          if (outcome === 'success') await recordDeliverySuccess(server.db, attempt, 200);
          else
            await recordDeliveryFailure(server.db, attempt, {
              status: null,
              error: 'refused',
              retryInMs: 60_000,
              disableAfterMs: 3_600_000,
            });
        });
        const left = await server.db
          .selectFrom('credits.webhook_deliveries')
          .select('id')
          .where('webhook_id', '=', webhookId)
          .execute();
        expect(left, outcome).toEqual([]);
      }
    });

    // The relay fanned an event out to every endpoint it read; one deleted before the insert's foreign key check
    // failed the whole relay (retried on the next run, logged as a failed job meanwhile).
    it('a replay to an endpoint deleted meanwhile queues nothing (it failed on the foreign key, a 500)', async () => {
      const { webhookId, eventId } = await endpointAndEvent();
      const queued = await whileDeleting(webhookId, () => queueReplay(server.db, eventId, webhookId));
      expect(queued).toEqual([]);
    });

    it('the relay skips an endpoint deleted while it fans out', async () => {
      const { webhookId, eventId } = await endpointAndEvent();
      const relayed = await whileDeleting(webhookId, () => relayEvents(server.db));
      expect(relayed.map((event) => event.id)).toContain(eventId);
      const deliveries = await server.db
        .selectFrom('credits.webhook_deliveries')
        .select('id')
        .where('event_id', '=', eventId)
        .where('webhook_id', '=', webhookId)
        .execute();
      expect(deliveries).toEqual([]);
    });
  },
);
