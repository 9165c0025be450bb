import { randomUUID } from 'node:crypto';
import { TRPCClientError } from '@trpc/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bucketCount, bucketStart } from '../src/domain/history/range.ts';
import type { OpenApiDocument } from '../src/http/rest/openapi.ts';
import { seedGuildHistory, seedPersonalHistory } from './helpers/history.ts';
import { expectLedgerConsistent } from './helpers/invariants.ts';
import { type Answer, type CallOptions, restCaller } from './helpers/rest.ts';
import { newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';

// The history reads of issue 18 — balanceAt, usage (personal, guild, internal) and the statement (JSON pages
// and CSV) — against seeded, dated history, over tRPC and REST (every REST answer checked against the
// OpenAPI document by helpers/rest.ts).

let server: TestServer;
let call: (route: string, options?: CallOptions) => Promise<Answer>;

beforeAll(async () => {
  // Calls run in process (helpers/server.ts: Transport); REST and CSV over HTTP.
  server = await startTestServer({}, { transport: 'in-process' });
  ({ call } = await restCaller(server));
});
afterAll(async () => {
  await expectLedgerConsistent(server.deps.db);
  await server?.close();
});

interface Refusal {
  data: { code: string; reason: string; details?: { issues?: { field: string; message: string }[] } };
}

async function failure(promise: Promise<unknown>): Promise<Refusal> {
  const error = await promise.then(
    () => {
      throw new Error('expected the call to fail');
    },
    (caught: unknown) => caught,
  );
  if (!(error instanceof TRPCClientError)) throw error;
  return error as unknown as Refusal;
}

const FORMULA = '=HYPERLINK("http://evil.example","click")';
const QUOTED = 'tea, "earl grey"\nhot';

/** A month boundary in the middle: Jan 31 22:00 UTC … Feb 3. Indexes are referred to by the tests. */
async function seededUser() {
  const user = newUser();
  const ids = await seedPersonalHistory(server.db, user.id, [
    { at: '2026-01-15T10:00:00Z', type: 'grant', amount: 1000 }, // 0
    { at: '2026-01-31T22:30:00Z', type: 'usage', amount: -10, appId: 'chat', description: 'first' }, // 1
    { at: '2026-01-31T23:10:00Z', type: 'usage', amount: -20, appId: 'images', description: QUOTED }, // 2
    { at: '2026-01-31T23:50:00Z', type: 'usage', amount: -5, appId: 'chat', description: '-5 credits' }, // 3
    { at: '2026-02-01T00:05:00Z', type: 'usage', amount: -7, appId: 'chat', description: '@mention' }, // 4
    { at: '2026-02-01T01:00:00Z', type: 'refund', amount: 5, appId: 'chat', refunds: 3 }, // 5
    { at: '2026-02-03T12:00:00Z', type: 'usage', amount: -100, appId: '=cmd', description: FORMULA }, // 6
    { at: '2026-02-03T12:00:01Z', type: 'usage', amount: -1, appId: 'chat', description: '\tTAB+1' }, // 7
  ]);
  return { user, ids, client: await server.userClient(user), token: await server.auth.sign(user) };
}

describe('UTC buckets', () => {
  it('counts the buckets a half-open range touches', () => {
    const at = (iso: string) => new Date(iso);
    expect(bucketStart(at('2026-01-31T23:59:59.999Z'), 'day')).toEqual(at('2026-01-31T00:00:00Z'));
    expect(bucketStart(at('2026-02-14T05:30:00Z'), 'month')).toEqual(at('2026-02-01T00:00:00Z'));
    expect(bucketCount(at('2026-01-01T00:00:00Z'), at('2026-01-01T01:00:00Z'), 'hour')).toBe(1);
    expect(bucketCount(at('2026-01-01T00:30:00Z'), at('2026-01-01T01:30:00Z'), 'hour')).toBe(2);
    expect(bucketCount(at('2026-01-31T00:00:00Z'), at('2026-03-01T00:00:00Z'), 'month')).toBe(2);
    expect(bucketCount(at('2025-12-31T23:00:00Z'), at('2026-01-01T00:00:01Z'), 'month')).toBe(2);
    expect(bucketCount(at('2026-01-01T00:00:00Z'), at('2027-01-01T00:00:00Z'), 'day')).toBe(365);
  });
});

describe('credits.balanceAt', () => {
  it('an instant takes its whole millisecond: an entry dated inside it, or at its own createdAt, is included', async () => {
    // The ledger dates entries in microseconds, the API in milliseconds: `at` = the createdAt the API showed
    // for an entry (or the entry's exact microsecond, cut to its millisecond) answered the balance before it.
    const user = newUser();
    const [id] = await seedPersonalHistory(server.db, user.id, [
      { at: '2026-03-01T10:00:00.123456Z', type: 'grant', amount: 100 },
    ]);
    const client = await server.userClient(user);
    const [entry] = (await client.credits.transactions.query({ limit: 1 })).items;
    expect(entry!.createdAt).toEqual(new Date('2026-03-01T10:00:00.123Z'));
    for (const at of [entry!.createdAt, '2026-03-01T10:00:00.123456Z', '2026-03-01T10:00:00.123999Z']) {
      expect(await client.credits.balanceAt.query({ at })).toMatchObject({
        balance: 100,
        lastTransactionId: id,
      });
    }
    expect(await client.credits.balanceAt.query({ at: '2026-03-01T10:00:00.122Z' })).toMatchObject({
      balance: 0,
      lastTransactionId: null,
    });
  });

  it('answers 0 before the first entry, the balance after the last entry at or before `at`, and now', async () => {
    const { user, ids, client } = await seededUser();
    const before = await client.credits.balanceAt.query({ at: new Date('2026-01-01T00:00:00Z') });
    expect(before).toEqual({ balance: 0, at: new Date('2026-01-01T00:00:00Z'), lastTransactionId: null });
    const exactly = await client.credits.balanceAt.query({ at: '2026-01-15T10:00:00Z' });
    expect(exactly).toMatchObject({ balance: 1000, lastTransactionId: ids[0] });
    expect(exactly.at).toEqual(new Date('2026-01-15T10:00:00Z'));
    const between = await client.credits.balanceAt.query({ at: '2026-01-31T23:00:00+00:00' });
    expect(between).toMatchObject({ balance: 990, lastTransactionId: ids[1] });
    const offset = await client.credits.balanceAt.query({ at: '2026-02-01T01:30:00+01:00' });
    expect(offset).toMatchObject({ balance: 958, lastTransactionId: ids[4] });
    const atRefund = await client.credits.balanceAt.query({ at: '2026-02-01T02:00:00+01:00' });
    expect(atRefund).toMatchObject({ balance: 963, lastTransactionId: ids[5] });
    const after = await client.credits.balanceAt.query({ at: new Date('2030-01-01T00:00:00Z') });
    expect(after).toMatchObject({ balance: 862, lastTransactionId: ids[7] });
    expect((await client.credits.balance.query()).balance).toBe(862);

    // A spend now shows at now, not before.
    await client.credits.use.mutate({ amount: 2, appId: 'chat', description: 'now' });
    const now = await client.credits.balanceAt.query({ at: new Date(Date.now() + 1000) });
    expect(now.balance).toBe(860);
    expect(
      await server.internalClient().internal.credits.balanceAt.query({ userId: user.id, at: new Date() }),
    ).toMatchObject({ balance: 860 });
  });

  it('takes entries dated by the same microsecond together, whatever their order', async () => {
    const user = newUser();
    const ids = await seedPersonalHistory(server.db, user.id, [
      { at: '2026-03-01T00:00:00Z', type: 'grant', amount: 100 },
      { at: '2026-03-01T00:00:00Z', type: 'usage', amount: -30, appId: 'chat' },
      { at: '2026-03-01T00:00:00Z', type: 'usage', amount: -20, appId: 'chat' },
    ]);
    const client = await server.userClient(user);
    expect(await client.credits.balanceAt.query({ at: '2026-03-01T00:00:00Z' })).toMatchObject({
      balance: 50,
      lastTransactionId: ids[2],
    });
    expect(await client.credits.balanceAt.query({ at: '2026-02-28T23:59:59.999Z' })).toMatchObject({
      balance: 0,
      lastTransactionId: null,
    });
  });

  it('refuses a malformed instant, naming the field; the internal twin needs the service key', async () => {
    const { user, client } = await seededUser();
    for (const at of ['yesterday', '2026-01-01', '2026-01-01T00:00:00', '1969-12-31T23:59:59Z']) {
      const refused = await failure(client.credits.balanceAt.query({ at }));
      expect(refused.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'VALIDATION' });
      expect(refused.data.details?.issues?.[0]?.field).toBe('at');
    }
    const internal = await server.internalClient().internal.credits.balanceAt.query({
      userId: user.id,
      at: '2026-01-31T23:30:00Z',
    });
    expect(internal).toMatchObject({ balance: 970 });
    const noKey = await failure(
      server.rawClient({}).internal.credits.balanceAt.query({ userId: user.id, at: new Date() }),
    );
    expect(noKey.data.code).toBe('UNAUTHORIZED');
    const wrongKey = await failure(
      server
        .internalClient({ serviceKey: 'wrong-key-0123456789abcdefghijklmnop' })
        .internal.credits.balanceAt.query({ userId: user.id, at: new Date() }),
    );
    expect(wrongKey.data.code).toBe('UNAUTHORIZED');
  });
});

describe('credits.usage', () => {
  it('sums usage per UTC hour, day and month across a month boundary (refunds not netted)', async () => {
    const { client } = await seededUser();
    const hours = await client.credits.usage.query({
      from: '2026-01-31T22:00:00Z',
      to: '2026-02-01T02:00:00Z',
      granularity: 'hour',
    });
    expect(hours.series).toEqual([
      { start: new Date('2026-01-31T22:00:00Z'), credits: 10, count: 1 },
      { start: new Date('2026-01-31T23:00:00Z'), credits: 25, count: 2 },
      { start: new Date('2026-02-01T00:00:00Z'), credits: 7, count: 1 },
    ]);
    const days = await client.credits.usage.query({
      from: '2026-01-31T00:00:00Z',
      to: '2026-02-04T00:00:00Z',
      granularity: 'day',
    });
    expect(days.series).toEqual([
      { start: new Date('2026-01-31T00:00:00Z'), credits: 35, count: 3 },
      { start: new Date('2026-02-01T00:00:00Z'), credits: 7, count: 1 },
      { start: new Date('2026-02-03T00:00:00Z'), credits: 101, count: 2 },
    ]);
    const months = await client.credits.usage.query({
      from: '2026-01-01T00:00:00Z',
      to: '2026-03-01T00:00:00Z',
      granularity: 'month',
    });
    expect(months.series).toEqual([
      { start: new Date('2026-01-01T00:00:00Z'), credits: 35, count: 3 },
      { start: new Date('2026-02-01T00:00:00Z'), credits: 108, count: 3 },
    ]);
  });

  it('groups by app, counts only [from, to) of a partly covered bucket, and sees only the caller', async () => {
    const { client } = await seededUser();
    await seededUser(); // someone else's usage in the same buckets
    const byApp = await client.credits.usage.query({
      from: '2026-01-31T00:00:00Z',
      to: '2026-02-02T00:00:00Z',
      granularity: 'day',
      groupBy: 'app',
    });
    expect(byApp.series).toEqual([
      { start: new Date('2026-01-31T00:00:00Z'), appId: 'chat', credits: 15, count: 2 },
      { start: new Date('2026-01-31T00:00:00Z'), appId: 'images', credits: 20, count: 1 },
      { start: new Date('2026-02-01T00:00:00Z'), appId: 'chat', credits: 7, count: 1 },
    ]);
    const partial = await client.credits.usage.query({
      from: '2026-01-31T23:00:00Z',
      to: '2026-02-01T00:00:00Z',
      granularity: 'day',
    });
    expect(partial.series).toEqual([{ start: new Date('2026-01-31T00:00:00Z'), credits: 25, count: 2 }]);
    const empty = await client.credits.usage.query({
      from: '2025-01-01T00:00:00Z',
      to: '2025-02-01T00:00:00Z',
      granularity: 'day',
    });
    expect(empty.series).toEqual([]);
  });

  it('refuses more than 1000 buckets or from >= to with a 400 naming `to`', async () => {
    const { client, token } = await seededUser();
    const tooMany = await failure(
      client.credits.usage.query({
        from: '2026-01-01T00:00:00Z',
        to: '2026-03-01T00:00:00Z',
        granularity: 'hour',
      }),
    );
    expect(tooMany.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'VALIDATION' });
    expect(tooMany.data.details?.issues).toEqual([
      { field: 'to', message: expect.stringContaining('spans 1416 hour buckets; at most 1000') },
    ]);
    // Exactly 1000 hours is allowed.
    const limit = await client.credits.usage.query({
      from: '2026-01-01T00:00:00Z',
      to: new Date(Date.UTC(2026, 0, 1) + 1000 * 3_600_000),
      granularity: 'hour',
    });
    expect(limit.series.length).toBeGreaterThan(0);
    const backwards = await failure(
      client.credits.usage.query({
        from: '2026-02-01T00:00:00Z',
        to: '2026-02-01T00:00:00Z',
        granularity: 'day',
      }),
    );
    expect(backwards.data.details?.issues).toEqual([{ field: 'to', message: 'must be after from' }]);
    const week = await failure(
      client.credits.usage.query({
        from: '2026-02-01T00:00:00Z',
        to: '2026-02-02T00:00:00Z',
        granularity: 'week' as 'day',
      }),
    );
    expect(week.data.details?.issues?.[0]?.field).toBe('granularity');

    const rest = await call('GET /api/v1/credits/usage', {
      token,
      query: { from: '2026-01-01T00:00:00Z', to: '2026-03-01T00:00:00Z', granularity: 'hour' },
    });
    expect(rest.status).toBe(400);
    expect(rest.body.error.reason).toBe('VALIDATION');
    expect(rest.body.error.message).toMatch(/^Invalid input: to: the range spans 1416 hour buckets/);
  });
});

describe('guild.usage', () => {
  it('answers owners and admins per member and app; refuses plain members and outsiders', async () => {
    const guildId = `guild-${randomUUID()}`;
    const [owner, admin, member, outsider] = [newUser(), newUser(), newUser(), newUser()];
    server.auth.setRole(guildId, owner.id, 'owner');
    server.auth.setRole(guildId, admin.id, 'admin');
    server.auth.setRole(guildId, member.id, 'member');
    await seedGuildHistory(server.db, guildId, owner.id, '2026-01-01T00:00:00Z', [
      { at: '2026-01-31T23:30:00Z', userId: member.id, amount: 10, appId: 'chat' },
      { at: '2026-01-31T23:45:00Z', userId: admin.id, amount: 40, appId: 'images' },
      { at: '2026-02-01T00:15:00Z', userId: member.id, amount: 5, appId: 'images' },
      { at: '2026-02-01T08:00:00Z', userId: member.id, amount: 1, appId: 'chat' },
    ]);
    const range = { guildId, from: '2026-01-31T00:00:00Z', to: '2026-02-02T00:00:00Z' };
    const ownerClient = await server.userClient(owner);
    const days = await ownerClient.guild.usage.query({ ...range, granularity: 'day' });
    expect(days.series).toEqual([
      { start: new Date('2026-01-31T00:00:00Z'), credits: 50, count: 2 },
      { start: new Date('2026-02-01T00:00:00Z'), credits: 6, count: 2 },
    ]);
    const adminClient = await server.userClient(admin);
    const byMember = await adminClient.guild.usage.query({
      ...range,
      granularity: 'month',
      groupBy: 'member',
    });
    const expected = (userId: string, credits: number, count: number, start: string) => ({
      start: new Date(start),
      userId,
      credits,
      count,
    });
    const inOrder = <T extends { start: Date; userId: string }>(points: T[]) =>
      points.sort((a, b) => a.start.getTime() - b.start.getTime() || (a.userId < b.userId ? -1 : 1));
    expect(byMember.series).toEqual(
      inOrder([
        expected(admin.id, 40, 1, '2026-01-01T00:00:00Z'),
        expected(member.id, 10, 1, '2026-01-01T00:00:00Z'),
        expected(member.id, 6, 2, '2026-02-01T00:00:00Z'),
      ]),
    );
    const top = await adminClient.guild.usage.query({
      ...range,
      granularity: 'month',
      groupBy: 'member',
      limit: 1,
    });
    expect(top.series).toEqual([expected(admin.id, 40, 1, '2026-01-01T00:00:00Z')]);
    const byApp = await ownerClient.guild.usage.query({ ...range, granularity: 'hour', groupBy: 'app' });
    expect(byApp.series).toEqual([
      { start: new Date('2026-01-31T23:00:00Z'), appId: 'chat', credits: 10, count: 1 },
      { start: new Date('2026-01-31T23:00:00Z'), appId: 'images', credits: 40, count: 1 },
      { start: new Date('2026-02-01T00:00:00Z'), appId: 'images', credits: 5, count: 1 },
      { start: new Date('2026-02-01T08:00:00Z'), appId: 'chat', credits: 1, count: 1 },
    ]);

    const refused = await failure(
      (await server.userClient(member)).guild.usage.query({ ...range, granularity: 'day' }),
    );
    expect(refused.data).toMatchObject({ code: 'FORBIDDEN', reason: 'GUILD_ROLE_REQUIRED' });
    const stranger = await failure(
      (await server.userClient(outsider)).guild.usage.query({ ...range, granularity: 'day' }),
    );
    expect(stranger.data).toMatchObject({ code: 'FORBIDDEN', reason: 'NOT_A_GUILD_MEMBER' });

    const rest = await call('GET /api/v1/credits/guild/{guildId}/usage', {
      token: await server.auth.sign(member),
      params: { guildId },
      query: { from: range.from, to: range.to, granularity: 'day' },
    });
    expect(rest.status).toBe(403);
    const restOwner = await call('GET /api/v1/credits/guild/{guildId}/usage', {
      token: await server.auth.sign(owner),
      params: { guildId },
      query: { from: range.from, to: range.to, granularity: 'day', groupBy: 'member', limit: '1' },
    });
    expect(restOwner.status).toBe(200);
    expect(restOwner.body.series).toEqual([
      { start: '2026-01-31T00:00:00.000Z', userId: admin.id, credits: 40, count: 1 },
    ]);
  });

  it('answers 404 for a guild without a pool and bounds the range', async () => {
    const guildId = `guild-${randomUUID()}`;
    const owner = newUser();
    server.auth.setRole(guildId, owner.id, 'owner');
    const client = await server.userClient(owner);
    const missing = await failure(
      client.guild.usage.query({
        guildId,
        from: '2026-01-01T00:00:00Z',
        to: '2026-02-01T00:00:00Z',
        granularity: 'day',
      }),
    );
    expect(missing.data).toMatchObject({ code: 'NOT_FOUND', reason: 'GUILD_POOL_NOT_FOUND' });
    const tooMany = await failure(
      client.guild.usage.query({
        guildId,
        from: '2000-01-01T00:00:00Z',
        to: '2026-02-01T00:00:00Z',
        granularity: 'day',
      }),
    );
    expect(tooMany.data.details?.issues?.[0]?.field).toBe('to');
  });
});

describe('internal.usage', () => {
  // 2031: a year no other test of this file writes, since this read sees every user.
  it('totals, per app, per user (top spenders) and of one app, with the service key only', async () => {
    const [a, b, c] = [newUser(), newUser(), newUser()];
    await seedPersonalHistory(server.db, a.id, [
      { at: '2031-01-01T00:00:00Z', type: 'grant', amount: 1000 },
      { at: '2031-01-31T23:00:00Z', type: 'usage', amount: -100, appId: 'chat' },
      { at: '2031-02-01T01:00:00Z', type: 'usage', amount: -50, appId: 'images' },
    ]);
    await seedPersonalHistory(server.db, b.id, [
      { at: '2031-01-01T00:00:00Z', type: 'grant', amount: 1000 },
      { at: '2031-01-31T10:00:00Z', type: 'usage', amount: -300, appId: 'images' },
    ]);
    await seedPersonalHistory(server.db, c.id, [
      { at: '2031-01-01T00:00:00Z', type: 'grant', amount: 1000 },
      { at: '2031-02-02T10:00:00Z', type: 'usage', amount: -20, appId: 'chat' },
    ]);
    const service = server.internalClient();
    const range = { from: '2031-01-01T00:00:00Z', to: '2031-03-01T00:00:00Z' };
    const total = await service.internal.usage.query({ ...range, granularity: 'month' });
    expect(total.series).toEqual([
      { start: new Date('2031-01-01T00:00:00Z'), credits: 400, count: 2 },
      { start: new Date('2031-02-01T00:00:00Z'), credits: 70, count: 2 },
    ]);
    const perApp = await service.internal.usage.query({ ...range, granularity: 'month', groupBy: 'app' });
    expect(perApp.series).toEqual([
      { start: new Date('2031-01-01T00:00:00Z'), appId: 'chat', credits: 100, count: 1 },
      { start: new Date('2031-01-01T00:00:00Z'), appId: 'images', credits: 300, count: 1 },
      { start: new Date('2031-02-01T00:00:00Z'), appId: 'chat', credits: 20, count: 1 },
      { start: new Date('2031-02-01T00:00:00Z'), appId: 'images', credits: 50, count: 1 },
    ]);
    const top = await service.internal.usage.query({
      ...range,
      granularity: 'month',
      groupBy: 'user',
      limit: 2,
    });
    // b spent 300, a 150, c 20: the top two are b and a.
    expect(top.series).toEqual(
      [
        { start: new Date('2031-01-01T00:00:00Z'), userId: a.id, credits: 100, count: 1 },
        { start: new Date('2031-01-01T00:00:00Z'), userId: b.id, credits: 300, count: 1 },
      ]
        .sort((x, y) => (x.userId < y.userId ? -1 : 1))
        .concat([{ start: new Date('2031-02-01T00:00:00Z'), userId: a.id, credits: 50, count: 1 }]),
    );
    const chat = await service.internal.usage.query({ ...range, granularity: 'day', appId: 'chat' });
    expect(chat.series).toEqual([
      { start: new Date('2031-01-31T00:00:00Z'), credits: 100, count: 1 },
      { start: new Date('2031-02-02T00:00:00Z'), credits: 20, count: 1 },
    ]);

    const refused = await failure(
      server.rawClient({}).internal.usage.query({ ...range, granularity: 'month' }),
    );
    expect(refused.data.code).toBe('UNAUTHORIZED');
    const asUser = await failure(
      (await server.userClient(a)).internal.usage.query({ ...range, granularity: 'month' }),
    );
    expect(asUser.data.code).toBe('UNAUTHORIZED');

    const rest = await call('GET /api/v1/internal/usage', {
      serviceKey: SERVICE_KEY,
      query: { ...range, granularity: 'month', groupBy: 'user', limit: '1' },
    });
    expect(rest.status).toBe(200);
    expect(rest.body.series).toEqual([
      { start: '2031-01-01T00:00:00.000Z', userId: b.id, credits: 300, count: 1 },
    ]);
    const bad = await call('GET /api/v1/internal/usage', {
      serviceKey: SERVICE_KEY,
      query: { ...range, granularity: 'hour' },
    });
    expect(bad.status).toBe(400);
    expect(bad.body.error.details.issues[0].field).toBe('to');
  });
});

/** RFC 4180 parser for the assertions: quoted fields may hold commas, quotes and line breaks. */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let cell = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const char = text[i];
    if (quoted) {
      if (char === '"' && text[i + 1] === '"') {
        cell += '"';
        i++;
      } else if (char === '"') quoted = false;
      else cell += char;
    } else if (char === '"') quoted = true;
    else if (char === ',') {
      row.push(cell);
      cell = '';
    } else if (char === '\r' && text[i + 1] === '\n') {
      row.push(cell);
      rows.push(row);
      row = [];
      cell = '';
      i++;
    } else cell += char;
  }
  expect(cell, 'the file ends with CRLF').toBe('');
  return rows;
}

describe('credits.statement', () => {
  it('CSV: a formula after a ";" or a tab is defused too (spreadsheets whose list separator is ";")', async () => {
    const user = newUser();
    await seedPersonalHistory(server.db, user.id, [
      { at: '2026-01-10T00:00:00Z', type: 'grant', amount: 100 },
      {
        at: '2026-01-11T00:00:00Z',
        type: 'usage',
        amount: -1,
        appId: 'chat',
        description: "ok;=cmd|' /C calc'!A0;x\t+1",
      },
    ]);
    const response = await fetch(
      `${server.url}/api/v1/credits/statement.csv?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z`,
      { headers: { authorization: `Bearer ${await server.auth.sign(user)}` } },
    );
    expect(response.status).toBe(200);
    const text = await response.text();
    expect(text).toContain("ok;'=cmd|' /C calc'!A0;x\t'+1");
    // Split as such a spreadsheet splits (on ";" and line ends, quotes or not), no cell starts a formula.
    expect(text.split(/[;\n]/).filter((cell) => /^"?[=+\-@]/.test(cell))).toEqual([]);
  });

  it('pages oldest first with opening and closing balances', async () => {
    const { ids, client } = await seededUser();
    const range = { from: '2026-01-31T23:00:00Z', to: '2026-02-03T12:00:00Z' };
    const first = await client.credits.statement.query({ ...range, limit: 2 });
    expect(first).toMatchObject({ openingBalance: 990, closingBalance: 963 });
    expect(first.items.map((item) => item.id)).toEqual([ids[2], ids[3]]);
    expect(first.nextCursor).toBe(ids[3]);
    const second = await client.credits.statement.query({
      ...range,
      limit: 2,
      cursor: first.nextCursor ?? '',
    });
    expect(second.items.map((item) => item.id)).toEqual([ids[4], ids[5]]);
    expect(second.nextCursor).toBeNull();
    expect(second.items[1]).toMatchObject({ type: 'refund', amount: 5, referenceTransactionId: ids[3] });

    const other = await seededUser();
    const foreign = await failure(client.credits.statement.query({ ...range, cursor: other.ids[2] }));
    expect(foreign.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'INVALID_CURSOR' });
    const outside = await failure(client.credits.statement.query({ ...range, cursor: ids[1] }));
    expect(outside.data.reason).toBe('INVALID_CURSOR');
  });

  it('streams CSV: opening, every entry, closing; RFC 4180 quoting; formula cells defused, amounts numeric', async () => {
    const { ids, token } = await seededUser();
    const response = await fetch(
      `${server.url}/api/v1/credits/statement.csv?from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z`,
      { headers: { authorization: `Bearer ${token}` } },
    );
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('text/csv; charset=utf-8');
    expect(response.headers.get('content-disposition')).toBe(
      'attachment; filename="statement-2026-01-01-2026-03-01.csv"',
    );
    const text = await response.text();
    const rows = parseCsv(text);
    expect(rows[0]).toEqual([
      'date',
      'type',
      'transaction_id',
      'app_id',
      'description',
      'amount',
      'balance_after',
      'reference_transaction_id',
    ]);
    expect(rows[1]).toEqual(['2026-01-01T00:00:00.000Z', 'opening_balance', '', '', '', '', '0', '']);
    expect(rows.slice(2, -1).map((row) => row[2])).toEqual(ids);
    expect(rows.at(-1)).toEqual(['2026-03-01T00:00:00.000Z', 'closing_balance', '', '', '', '', '862', '']);
    const byId = new Map(rows.map((row) => [row[2], row]));
    expect(byId.get(ids[2])?.[4]).toBe(QUOTED);
    expect(byId.get(ids[3])).toEqual([
      '2026-01-31T23:50:00.000Z',
      'usage',
      ids[3],
      'chat',
      "'-5 credits",
      '-5',
      '965',
      '',
    ]);
    expect(byId.get(ids[4])?.[4]).toBe("'@mention");
    expect(byId.get(ids[5])?.slice(5)).toEqual(['5', '963', ids[3]]);
    expect(byId.get(ids[6])?.slice(3, 7)).toEqual(["'=cmd", `'${FORMULA}`, '-100', '863']);
    expect(byId.get(ids[7])?.[4]).toBe("'\tTAB+1");
    // On the wire: the quote-doubling and the defused formula.
    expect(text).toContain(`"'=HYPERLINK(""http://evil.example"",""click"")"`);
    expect(text).toContain('"tea, ""earl grey""\nhot"');
    expect(text.split('\r\n').every((line) => !/^[=+\-@]/.test(line))).toBe(true);
  });

  it('streams a long statement page by page; the internal twin takes userId with the service key', async () => {
    const user = newUser();
    const entries = [{ at: '2026-05-01T00:00:00Z', type: 'grant' as const, amount: 5000 }];
    for (let i = 0; i < 2500; i++) {
      entries.push({
        at: new Date(Date.UTC(2026, 4, 1, 1) + i * 60_000).toISOString(),
        type: 'usage' as never,
        amount: -1,
      });
    }
    await seedPersonalHistory(server.db, user.id, entries);
    const response = await fetch(
      `${server.url}/api/v1/internal/credits/statement.csv?userId=${encodeURIComponent(user.id)}&from=2026-05-01T00:00:00Z&to=2026-06-01T00:00:00Z`,
      { headers: { 'x-service-key': SERVICE_KEY } },
    );
    expect(response.status).toBe(200);
    const rows = parseCsv(await response.text());
    expect(rows).toHaveLength(1 + 1 + 2501 + 1);
    expect(rows[1]?.[6]).toBe('0');
    expect(rows.at(-1)?.[6]).toBe('2500');
    expect(rows.at(-2)?.[6]).toBe('2500');

    const json = await server.internalClient().internal.credits.statement.query({
      userId: user.id,
      from: '2026-05-01T00:00:00Z',
      to: '2026-06-01T00:00:00Z',
      limit: 1000,
    });
    expect(json).toMatchObject({ openingBalance: 0, closingBalance: 2500, nextCursor: expect.any(String) });
    expect(json.items).toHaveLength(1000);
  });

  it('answers errors as JSON before streaming: 401, 400 naming the field, unknown parameters', async () => {
    const { token } = await seededUser();
    const base = `${server.url}/api/v1/credits/statement.csv`;
    // biome-ignore lint/suspicious/noExplicitAny: error bodies are inspected freely
    const errorOf = async (response: Response) => ((await response.json()) as any).error;
    const anonymous = await fetch(`${base}?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z`);
    expect(anonymous.status).toBe(401);
    expect((await errorOf(anonymous)).reason).toBe('UNAUTHORIZED');
    const headers = { authorization: `Bearer ${token}` };
    const bad = await fetch(`${base}?from=soon&to=2026-02-01T00:00:00Z`, { headers });
    expect(bad.status).toBe(400);
    expect((await errorOf(bad)).details.issues[0].field).toBe('from');
    const reversed = await fetch(`${base}?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z`, { headers });
    expect((await errorOf(reversed)).details.issues).toEqual([
      { field: 'to', message: 'must be after from' },
    ]);
    const extra = await fetch(`${base}?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z&cursor=x`, {
      headers,
    });
    expect(extra.status).toBe(400);
    expect((await errorOf(extra)).details.issues[0].field).toBe('cursor');
    const internal = await fetch(
      `${server.url}/api/v1/internal/credits/statement.csv?userId=u&from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z`,
      { headers },
    );
    expect(internal.status).toBe(401);
  });
});

describe('REST and OpenAPI', () => {
  it('serves every history read over REST as documented', async () => {
    const { user, ids, token } = await seededUser();
    const balance = await call('GET /api/v1/credits/balance-at', {
      token,
      query: { at: '2026-01-31T23:00:00Z' },
    });
    expect(balance.status).toBe(200);
    expect(balance.body).toEqual({ balance: 990, at: '2026-01-31T23:00:00.000Z', lastTransactionId: ids[1] });
    const internal = await call('GET /api/v1/internal/credits/balance-at/{userId}', {
      serviceKey: SERVICE_KEY,
      params: { userId: user.id },
      query: { at: '2026-01-01T00:00:00Z' },
    });
    expect(internal.body).toEqual({ balance: 0, at: '2026-01-01T00:00:00.000Z', lastTransactionId: null });
    const usage = await call('GET /api/v1/credits/usage', {
      token,
      query: { from: '2026-02-01T00:00:00Z', to: '2026-02-02T00:00:00Z', granularity: 'day', groupBy: 'app' },
    });
    expect(usage.body).toEqual({
      series: [{ start: '2026-02-01T00:00:00.000Z', appId: 'chat', credits: 7, count: 1 }],
    });
    const statement = await call('GET /api/v1/credits/statement', {
      token,
      query: { from: '2026-02-01T00:00:00Z', to: '2026-02-02T00:00:00Z', limit: '1' },
    });
    expect(statement.body).toMatchObject({ openingBalance: 965, closingBalance: 963, nextCursor: ids[4] });
    const internalStatement = await call('GET /api/v1/internal/credits/statement', {
      serviceKey: SERVICE_KEY,
      query: { userId: user.id, from: '2026-02-01T00:00:00Z', to: '2026-02-02T00:00:00Z' },
    });
    expect(internalStatement.body.items).toHaveLength(2);
    const unauthorized = await call('GET /api/v1/credits/balance-at', {
      query: { at: '2026-01-01T00:00:00Z' },
    });
    expect(unauthorized.status).toBe(401);
  });

  it('documents the CSV routes', async () => {
    const document = (await (await fetch(`${server.url}/api/v1/openapi.json`)).json()) as OpenApiDocument;
    for (const path of ['/api/v1/credits/statement.csv', '/api/v1/internal/credits/statement.csv']) {
      const operation = document.paths[path]?.get as { responses: Record<string, { content: object }> };
      expect(operation.responses['200']?.content).toHaveProperty('text/csv');
    }
    const internal = document.paths['/api/v1/internal/credits/statement.csv']?.get as {
      parameters: { name: string }[];
    };
    expect(internal.parameters.map((parameter) => parameter.name)).toEqual(['userId', 'from', 'to']);
  });
});
