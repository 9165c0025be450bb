import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Answer, type CallOptions, restCaller } from './helpers/rest.ts';
import { newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';
import { eventually, WebhookReceiver } from './helpers/webhook-receiver.ts';

// The REST routes of events out (issue 16), each against a live server; every answer is checked against the
// OpenAPI document (helpers/rest.ts).

let server: TestServer;
let receiver: WebhookReceiver;
let call: (route: string, options?: CallOptions) => Promise<Answer>;
const service = { serviceKey: SERVICE_KEY };

beforeAll(async () => {
  server = await startTestServer({
    WEBHOOK_ALLOW_PRIVATE: 'true',
    WEBHOOK_DELIVERY_INTERVAL_MS: '50',
    MEMBERSHIP_CACHE_SECONDS: '0',
  });
  receiver = await WebhookReceiver.start();
  ({ call } = await restCaller(server));
});
afterAll(async () => {
  await server?.close();
  await receiver?.close();
});

describe('alerts', () => {
  it('GET/PUT credits/alerts, internal/credits/alerts/{userId}, guild/{guildId}/alerts: 200, 400, 403', async () => {
    const user = newUser();
    const token = await server.auth.sign(user);
    expect((await call('GET /api/v1/credits/alerts', { token })).body).toEqual({
      lowBalanceThreshold: null,
      usesDefault: true,
    });
    const set = await call('PUT /api/v1/credits/alerts', { token, body: { lowBalanceThreshold: 25 } });
    expect(set).toMatchObject({ status: 200, body: { lowBalanceThreshold: 25, usesDefault: false } });
    const bad = await call('PUT /api/v1/credits/alerts', { token, body: { lowBalanceThreshold: -5 } });
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toContain('lowBalanceThreshold');
    const viaService = await call('PUT /api/v1/internal/credits/alerts/{userId}', {
      ...service,
      params: { userId: user.id },
      body: { lowBalanceThreshold: 'default' },
    });
    expect(viaService.body).toEqual({ lowBalanceThreshold: null, usesDefault: true });
    expect(
      (
        await call('GET /api/v1/internal/credits/alerts/{userId}', {
          ...service,
          params: { userId: user.id },
        })
      ).status,
    ).toBe(200);

    const guildId = `guild-${randomUUID()}`;
    await server.internalClient().internal.guildPool.init.mutate({ guildId });
    server.auth.setRole(guildId, user.id, 'member');
    const owner = newUser();
    server.auth.setRole(guildId, owner.id, 'owner');
    const ownerToken = await server.auth.sign(owner);
    const refused = await call('PUT /api/v1/credits/guild/{guildId}/alerts', {
      token,
      params: { guildId },
      body: { lowBalanceThreshold: 10 },
    });
    expect(refused.status).toBe(403);
    const pool = await call('PUT /api/v1/credits/guild/{guildId}/alerts', {
      token: ownerToken,
      params: { guildId },
      body: { lowBalanceThreshold: 10 },
    });
    expect(pool.body).toEqual({ lowBalanceThreshold: 10, usesDefault: false });
    expect(
      (await call('GET /api/v1/credits/guild/{guildId}/alerts', { token, params: { guildId } })).body,
    ).toEqual(pool.body);
  });
});

describe('webhooks and events', () => {
  it('create, list, update, deliveries, events, replay, rotate-secret, delete: 200, 400, 401, 404', async () => {
    const created = await call('POST /api/v1/internal/webhooks', {
      ...service,
      body: { url: receiver.url, events: ['balance.low'], description: 'rest' },
    });
    expect(created.status).toBe(200);
    expect(created.body.secret).toMatch(/^whsec_/);
    const id = created.body.id as string;
    expect((await call('POST /api/v1/internal/webhooks', { body: { url: receiver.url } })).status).toBe(401);
    expect(
      (await call('POST /api/v1/internal/webhooks', { ...service, body: { url: 'gopher://x' } })).status,
    ).toBe(400);

    const listed = await call('GET /api/v1/internal/webhooks', service);
    expect(listed.body.items.map((item: { id: string }) => item.id)).toContain(id);
    expect(JSON.stringify(listed.body)).not.toContain(created.body.secret);
    const updated = await call('PUT /api/v1/internal/webhooks/{id}', {
      ...service,
      params: { id },
      body: { description: 'renamed' },
    });
    expect(updated.body).toMatchObject({ id, description: 'renamed', events: ['balance.low'] });
    expect(
      (
        await call('PUT /api/v1/internal/webhooks/{id}', {
          ...service,
          params: { id: randomUUID() },
          body: {},
        })
      ).status,
    ).toBe(404);

    const user = await server.fundedUser(100);
    await server
      .internalClient()
      .internal.credits.setAlerts.mutate({ userId: user.id, lowBalanceThreshold: 50 });
    await server
      .internalClient()
      .internal.credits.use.mutate({ userId: user.id, amount: 60, appId: 'a', description: 'x' });
    const deliveries = await eventually('a delivered delivery', async () => {
      const page = await call('GET /api/v1/internal/webhooks/{webhookId}/deliveries', {
        ...service,
        params: { webhookId: id },
      });
      return page.body.items[0]?.status === 'delivered' ? page : undefined;
    });
    const eventId = deliveries.body.items[0].eventId as string;

    const events = await call('GET /api/v1/internal/events', { ...service, query: { limit: '1000' } });
    expect(events.status).toBe(200);
    expect(events.body.items.map((item: { id: string }) => item.id)).toContain(eventId);
    const filtered = await call('GET /api/v1/internal/events', {
      ...service,
      query: { types: 'balance.low' },
    });
    expect(filtered.status, JSON.stringify(filtered.body)).toBe(200);
    expect(filtered.body.items.every((item: { type: string }) => item.type === 'balance.low')).toBe(true);
    expect((await call('GET /api/v1/internal/events', { ...service, query: { after: '-1' } })).status).toBe(
      400,
    );

    const replay = await call('POST /api/v1/internal/events/{eventId}/replay', {
      ...service,
      params: { eventId },
      body: { webhookId: id },
    });
    expect(replay.body.deliveries).toEqual([{ id: expect.any(String), webhookId: id }]);
    expect(
      (
        await call('POST /api/v1/internal/events/{eventId}/replay', {
          ...service,
          params: { eventId: randomUUID() },
          body: {},
        })
      ).status,
    ).toBe(404);
    const unknownEndpoint = await call('POST /api/v1/internal/events/{eventId}/replay', {
      ...service,
      params: { eventId },
      body: { webhookId: randomUUID() },
    });
    expect(unknownEndpoint.status).toBe(404);
    expect(unknownEndpoint.body).toMatchObject({ error: { reason: 'WEBHOOK_NOT_FOUND' } });
    await eventually('the replay delivered', () =>
      receiver.received.filter((delivery) => delivery.headers['webhook-id'] === eventId).length === 2
        ? true
        : undefined,
    );

    const rotated = await call('POST /api/v1/internal/webhooks/{id}/rotate-secret', {
      ...service,
      params: { id },
      body: {},
    });
    expect(rotated.body.secret).not.toBe(created.body.secret);
    expect(
      (await call('DELETE /api/v1/internal/webhooks/{id}', { ...service, params: { id } })).body,
    ).toEqual({
      deleted: true,
    });
    expect((await call('DELETE /api/v1/internal/webhooks/{id}', { ...service, params: { id } })).status).toBe(
      404,
    );
  });
});
