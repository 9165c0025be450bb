import { afterAll, beforeAll, describe, expect, expectTypeOf, it } from 'vitest';
import { seedPersonalHistory } from '../../server/test/helpers/history.ts';
import { newUser, SERVICE_KEY, startTestServer, type TestServer } from '../../server/test/helpers/server.ts';
import {
  CreditsRequestError,
  createCreditsClient,
  createInternalCreditsClient,
  fetchInternalStatementCsv,
  fetchStatementCsv,
  type RouterInputs,
  type RouterOutputs,
} from '../src/index.ts';

// The history reads of issue 18 through the published client: typed by the router, Dates both ways.

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server.close();
});

async function seeded() {
  const user = newUser();
  const ids = await seedPersonalHistory(server.db, user.id, [
    { at: '2026-01-31T10:00:00Z', type: 'grant', amount: 100 },
    { at: '2026-01-31T23:30:00Z', type: 'usage', amount: -10, appId: 'chat' },
    { at: '2026-02-01T00:30:00Z', type: 'usage', amount: -5, appId: 'chat' },
  ]);
  const token = await server.auth.sign(user);
  return { user, ids, options: { url: server.url, getToken: () => token } };
}

const service = { url: '', serviceKey: SERVICE_KEY, appId: 'client-test' };

describe('history procedures in the typed clients', () => {
  it('credits.balanceAt, credits.usage and credits.statement take and give Dates', async () => {
    const { ids, options } = await seeded();
    const client = createCreditsClient(options);
    const at = await client.credits.balanceAt.query({ at: new Date('2026-02-01T00:00:00Z') });
    expect(at).toEqual({ balance: 90, at: new Date('2026-02-01T00:00:00Z'), lastTransactionId: ids[1] });
    expectTypeOf(at).toEqualTypeOf<RouterOutputs['credits']['balanceAt']>();
    expectTypeOf(at.at).toEqualTypeOf<Date>();
    expectTypeOf<RouterInputs['credits']['usage']['granularity']>().toEqualTypeOf<'hour' | 'day' | 'month'>();

    const usage = await client.credits.usage.query({
      from: new Date('2026-01-01T00:00:00Z'),
      to: '2026-03-01T00:00:00Z',
      granularity: 'month',
      groupBy: 'app',
    });
    expect(usage.series).toEqual([
      { start: new Date('2026-01-01T00:00:00Z'), appId: 'chat', credits: 10, count: 1 },
      { start: new Date('2026-02-01T00:00:00Z'), appId: 'chat', credits: 5, count: 1 },
    ]);
    const statement = await client.credits.statement.query({
      from: new Date('2026-01-31T12:00:00Z'),
      to: new Date('2026-02-02T00:00:00Z'),
    });
    expect(statement).toMatchObject({ openingBalance: 100, closingBalance: 85, nextCursor: null });
    expect(statement.items.map((item) => item.id)).toEqual([ids[1], ids[2]]);
    expect(statement.items[0]?.createdAt).toEqual(new Date('2026-01-31T23:30:00Z'));
  });

  it('internal.credits.balanceAt, internal.usage and internal.credits.statement for services', async () => {
    const { user, ids } = await seeded();
    const client = createInternalCreditsClient({ ...service, url: server.url });
    expect(
      await client.internal.credits.balanceAt.query({ userId: user.id, at: '2026-02-01T01:00:00Z' }),
    ).toEqual({ balance: 85, at: new Date('2026-02-01T01:00:00Z'), lastTransactionId: ids[2] });
    const usage = await client.internal.usage.query({
      from: '2026-01-31T00:00:00Z',
      to: '2026-02-02T00:00:00Z',
      granularity: 'day',
      groupBy: 'user',
      limit: 1000,
    });
    expect(usage.series.filter((point) => point.userId === user.id)).toEqual([
      { start: new Date('2026-01-31T00:00:00Z'), userId: user.id, credits: 10, count: 1 },
      { start: new Date('2026-02-01T00:00:00Z'), userId: user.id, credits: 5, count: 1 },
    ]);
    const page = await client.internal.credits.statement.query({
      userId: user.id,
      from: '2026-01-01T00:00:00Z',
      to: '2026-03-01T00:00:00Z',
      limit: 2,
    });
    expect(page.items.map((item) => item.id)).toEqual(ids.slice(0, 2));
    expect(page.nextCursor).toBe(ids[1]);
  });
});

describe('fetchStatementCsv', () => {
  it('fetches the CSV as the user and as a service; refusals throw CreditsRequestError', async () => {
    const { user, ids, options } = await seeded();
    const range = { from: new Date('2026-01-01T00:00:00Z'), to: '2026-03-01T00:00:00Z' };
    const mine = await (await fetchStatementCsv(options, range)).text();
    const lines = mine.trimEnd().split('\r\n');
    expect(lines[0]).toMatch(/^date,type,transaction_id,/);
    expect(lines.slice(2, -1).map((line) => line.split(',')[2])).toEqual(ids);
    expect(lines.at(-1)).toBe('2026-03-01T00:00:00.000Z,closing_balance,,,,,85,');

    const theirs = await fetchInternalStatementCsv(
      { ...service, url: `${server.url}/` },
      { ...range, userId: user.id },
    );
    expect(await theirs.text()).toBe(mine);

    const refused = await fetchStatementCsv({ url: server.url, getToken: () => null }, range).catch((e) => e);
    expect(refused).toBeInstanceOf(CreditsRequestError);
    expect(refused).toMatchObject({ status: 401, reason: 'UNAUTHORIZED' });
    const invalid = await fetchStatementCsv(options, { from: 'soon', to: range.to }).catch((e) => e);
    expect(invalid).toMatchObject({ status: 400, reason: 'VALIDATION' });
  });
});
