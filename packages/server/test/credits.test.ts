import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { failure } from './helpers/errors.ts';
import { expectLedgerConsistent, ledgerSum } from './helpers/invariants.ts';
import { newUser, startTestServer, type TestServer } from './helpers/server.ts';

let server: TestServer;
beforeAll(async () => {
  // Calls run in process (helpers/server.ts: Transport), the concurrent ones over HTTP.
  server = await startTestServer({}, { transport: 'in-process' });
});
afterAll(async () => {
  await expectLedgerConsistent(server.deps.db);
  await server.close();
});

const fundedUser = (amount: number) => server.fundedUser(amount);

describe('credits.balance', () => {
  it('is zero for a user without a row', async () => {
    const client = await server.userClient();
    expect(await client.credits.balance.query()).toEqual({
      balance: 0,
      reserved: 0,
      totalEarned: 0,
      totalSpent: 0,
      updatedAt: null,
      byCategory: { paid: 0, promotional: 0 },
      expiringSoon: null,
    });
  });

  it('reflects grants and spending', async () => {
    const user = await fundedUser(100);
    const client = await server.userClient(user);
    await client.credits.use.mutate({ amount: 30, appId: 'chat', description: 'a reply' });
    const balance = await client.credits.balance.query();
    expect(balance).toMatchObject({ balance: 70, totalEarned: 100, totalSpent: 30 });
    expect(balance.updatedAt).toBeInstanceOf(Date);
  });
});

describe('credits.use', () => {
  it('debits, writes one ledger row and records usage for the day', async () => {
    const user = await fundedUser(50);
    const client = await server.userClient(user);
    const result = await client.credits.use.mutate({
      amount: 20,
      appId: 'images',
      description: 'one picture',
      metadata: { model: 'x', size: [1024, 1024] },
    });
    expect(result.balance).toBe(30);
    expect(result.transactionId).toMatch(/^[0-9a-f-]{36}$/);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(30);
    const usage = await server.deps.db
      .selectFrom('credits.usage_stats')
      .selectAll()
      .where('user_id', '=', user.id)
      .execute();
    expect(usage).toEqual([
      { user_id: user.id, app_id: 'images', date: new Date().toISOString().slice(0, 10), credits_used: 20 },
    ]);
  });

  it('refuses to overdraw with PAYMENT_REQUIRED and details, writing nothing', async () => {
    const user = await fundedUser(10);
    const client = await server.userClient(user);
    const error = await failure(
      client.credits.use.mutate({ amount: 11, appId: 'chat', description: 'too much' }),
    );
    expect(error.data).toMatchObject({
      code: 'PAYMENT_REQUIRED',
      httpStatus: 402,
      reason: 'INSUFFICIENT_CREDITS',
      details: { required: 11, available: 10 },
    });
    expect(await ledgerSum(server.deps.db, user.id)).toBe(10);
  });

  it('spending exactly the whole balance succeeds and leaves zero', async () => {
    const user = await fundedUser(7);
    const client = await server.userClient(user);
    expect((await client.credits.use.mutate({ amount: 7, appId: 'chat', description: 'all' })).balance).toBe(
      0,
    );
  });

  it('a user with no balance row gets PAYMENT_REQUIRED with available 0', async () => {
    const client = await server.userClient();
    const error = await failure(client.credits.use.mutate({ amount: 1, appId: 'chat', description: 'x' }));
    expect(error.data).toMatchObject({
      reason: 'INSUFFICIENT_CREDITS',
      details: { required: 1, available: 0 },
    });
  });

  it.each([
    ['zero', 0],
    ['negative', -5],
    ['fractional', 1.5],
    ['a string', '5'],
    ['NaN', Number.NaN],
    ['Infinity', Number.POSITIVE_INFINITY],
    ['beyond 2^53', 2 ** 53 + 2],
  ])('rejects an amount that is %s with BAD_REQUEST naming the field', async (_label, amount) => {
    const user = await fundedUser(10);
    const client = await server.userClient(user);
    const error = await failure(
      client.credits.use.mutate({ amount: amount as number, appId: 'chat', description: 'bad' }),
    );
    expect(error.data).toMatchObject({ code: 'BAD_REQUEST', httpStatus: 400, reason: 'VALIDATION' });
    expect(error.message).toContain('amount');
    expect(await ledgerSum(server.deps.db, user.id)).toBe(10);
  });

  it('rejects an extra userId: identity comes only from the token', async () => {
    const victim = await fundedUser(10);
    const client = await server.userClient();
    const error = await failure(
      client.credits.use.mutate({ amount: 1, appId: 'chat', description: 'x', userId: victim.id } as never),
    );
    expect(error.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'VALIDATION' });
    expect(await ledgerSum(server.deps.db, victim.id)).toBe(10);
  });

  it.each([
    ['empty', ''],
    ['too long', 'k'.repeat(201)],
    ['with a NUL byte', 'key\u0000x'],
  ])('rejects an idempotency key that is %s', async (_label, idempotencyKey) => {
    const client = await server.userClient(await fundedUser(10));
    const error = await failure(
      client.credits.use.mutate({ amount: 1, appId: 'chat', description: 'x', idempotencyKey }),
    );
    expect(error.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'VALIDATION' });
    expect(error.message).toContain('idempotencyKey');
  });

  it.each([
    ['a __proto__ key', '{"__proto__": {"polluted": true}}'],
    ['a constructor key', '{"constructor": {"prototype": {"polluted": true}}}'],
  ])(
    'rejects metadata with %s sent as raw JSON (superjson clients cannot even send it)',
    async (_label, raw) => {
      const user = await fundedUser(10);
      const token = await server.auth.sign(user);
      const response = await fetch(`${server.url}/trpc/credits.use`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body: `{"json":{"amount":1,"appId":"chat","description":"x","metadata":${raw}}}`,
      });
      expect(response.status).toBe(400);
      const body = (await response.json()) as {
        error: { json: { message: string; data: { reason: string } } };
      };
      expect(body.error.json.data.reason).toBe('VALIDATION');
      expect(body.error.json.message).toContain('metadata');
      expect(({} as Record<string, unknown>).polluted).toBeUndefined();
      expect(await ledgerSum(server.deps.db, user.id)).toBe(10);
    },
  );

  it.each([
    ['too much data', { blob: 'x'.repeat(5000) }],
    ['too deep', { a: { b: { c: { d: { e: { f: 1 } } } } } }],
    ['a non-object', ['a', 'list']],
  ])('rejects metadata with %s', async (_label, metadata) => {
    const client = await server.userClient(await fundedUser(10));
    const error = await failure(
      client.credits.use.mutate({ amount: 1, appId: 'chat', description: 'x', metadata }),
    );
    expect(error.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'VALIDATION' });
    expect(error.message).toContain('metadata');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('replays the first result for the same key and payload', async () => {
    const user = await fundedUser(100);
    const client = await server.userClient(user);
    const input = { amount: 10, appId: 'chat', description: 'once', idempotencyKey: 'same-key' };
    const first = await client.credits.use.mutate(input);
    await client.credits.use.mutate({ amount: 5, appId: 'chat', description: 'other' });
    const second = await client.credits.use.mutate(input);
    expect(second).toEqual(first);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(85);
  });

  it('replays even when the balance has meanwhile run out', async () => {
    const user = await fundedUser(10);
    const client = await server.userClient(user);
    const input = { amount: 10, appId: 'chat', description: 'all of it', idempotencyKey: 'drain' };
    const first = await client.credits.use.mutate(input);
    expect(await client.credits.use.mutate(input)).toEqual(first);
  });

  it('the same key with another payload is a CONFLICT', async () => {
    const user = await fundedUser(100);
    const client = await server.userClient(user);
    await client.credits.use.mutate({ amount: 10, appId: 'chat', description: 'x', idempotencyKey: 'k' });
    for (const changed of [
      { amount: 11, appId: 'chat', description: 'x' },
      { amount: 10, appId: 'other', description: 'x' },
      { amount: 10, appId: 'chat', description: 'y' },
      { amount: 10, appId: 'chat', description: 'x', metadata: { a: 1 } },
    ]) {
      const error = await failure(client.credits.use.mutate({ ...changed, idempotencyKey: 'k' }));
      expect(error.data).toMatchObject({ code: 'CONFLICT', httpStatus: 409, reason: 'IDEMPOTENCY_CONFLICT' });
    }
    expect(await ledgerSum(server.deps.db, user.id)).toBe(90);
  });

  it('keys are scoped to their account: two users may use the same key', async () => {
    const a = await fundedUser(10);
    const b = await fundedUser(10);
    const input = { amount: 3, appId: 'chat', description: 'x', idempotencyKey: 'shared-key' };
    const ra = await (await server.userClient(a)).credits.use.mutate(input);
    const rb = await (await server.userClient(b)).credits.use.mutate(input);
    expect(ra.transactionId).not.toBe(rb.transactionId);
    expect([ra.balance, rb.balance]).toEqual([7, 7]);
  });
});

describe('credits.transactions', () => {
  it('pages newest first with a cursor and returns every row once', async () => {
    const user = await fundedUser(100);
    const client = await server.userClient(user);
    for (let i = 1; i <= 7; i++) {
      await client.credits.use.mutate({ amount: 1, appId: 'chat', description: `call ${i}` });
    }
    const seen: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await client.credits.transactions.query({ limit: 3, cursor });
      seen.push(...page.items.map((item) => item.description));
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
    expect(seen).toEqual([
      'call 7',
      'call 6',
      'call 5',
      'call 4',
      'call 3',
      'call 2',
      'call 1',
      'test funds',
    ]);
    const [latest] = (await client.credits.transactions.query({ limit: 1 })).items;
    expect(latest).toMatchObject({
      type: 'usage',
      amount: -1,
      balanceBefore: 94,
      balanceAfter: 93,
      appId: 'chat',
    });
    expect(latest?.createdAt).toBeInstanceOf(Date);
  });

  it('default limit is 20 and limits outside 1..100 are refused', async () => {
    const client = await server.userClient(await fundedUser(100));
    expect((await client.credits.transactions.query()).items).toHaveLength(1);
    for (const limit of [0, -1, 101, 1e9]) {
      const error = await failure(client.credits.transactions.query({ limit }));
      expect(error.data).toMatchObject({ code: 'BAD_REQUEST' });
    }
  });

  it('never shows another user rows, even with their cursor', async () => {
    const other = await fundedUser(5);
    const otherClient = await server.userClient(other);
    const [otherRow] = (await otherClient.credits.transactions.query()).items;
    const client = await server.userClient(await fundedUser(5));
    const error = await failure(client.credits.transactions.query({ cursor: otherRow!.id }));
    expect(error.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'INVALID_CURSOR' });
    const tampered = await failure(client.credits.transactions.query({ cursor: 'not-a-uuid' }));
    expect(tampered.data).toMatchObject({ code: 'BAD_REQUEST' });
  });
});

describe('credits.packages', () => {
  it('is public and lists active packages by sortOrder', async () => {
    await server.deps.db
      .insertInto('credits.packages')
      .values([
        { name: 'Large', description: 'many', credits: 5000, price_euro_cents: 3999, sort_order: 2 },
        { name: 'Small', description: 'few', credits: 100, price_euro_cents: 99, sort_order: 1 },
        { name: 'Retired', description: null, credits: 1, price_euro_cents: 1, sort_order: 0, active: false },
      ])
      .execute();
    const packages = await server.rawClient({}).credits.packages.query();
    expect(packages.map((p) => p.name)).toEqual(['Small', 'Large']);
    expect(packages[0]).toEqual({
      id: expect.any(String),
      name: 'Small',
      description: 'few',
      credits: 100,
      priceEuroCents: 99,
      validityDays: null,
    });
  });
});

describe('internal.credits', () => {
  it('init is idempotent and safe when called twice at once', async () => {
    server.httpForThisTest(); // real parallel requests
    const internal = server.internalClient();
    const userId = newUser().id;
    const results = await Promise.all([
      internal.internal.credits.init.mutate({ userId }),
      internal.internal.credits.init.mutate({ userId }),
    ]);
    expect(results.filter((r) => r.created)).toHaveLength(1);
    expect(await internal.internal.credits.balance.query({ userId })).toMatchObject({ balance: 0 });
  });

  it('use debits the named user', async () => {
    const user = await fundedUser(40);
    const result = await server.internalClient().internal.credits.use.mutate({
      userId: user.id,
      amount: 15,
      appId: 'chat',
      description: 'service call',
    });
    expect(result.balance).toBe(25);
    expect((await server.internalClient().internal.credits.balance.query({ userId: user.id })).balance).toBe(
      25,
    );
  });

  it('grant is idempotent and its ledger type is grant', async () => {
    const userId = newUser().id;
    const internal = server.internalClient();
    const input = { userId, amount: 500, reason: 'welcome bonus', idempotencyKey: 'welcome' };
    const first = await internal.internal.credits.grant.mutate(input);
    expect(await internal.internal.credits.grant.mutate(input)).toEqual(first);
    expect(first.balance).toBe(500);
    const error = await failure(internal.internal.credits.grant.mutate({ ...input, amount: 501 }));
    expect(error.data).toMatchObject({ reason: 'IDEMPOTENCY_CONFLICT' });
    const rows = await server.deps.db
      .selectFrom('credits.transactions')
      .select(['type', 'amount'])
      .where('user_id', '=', userId)
      .execute();
    expect(rows).toEqual([{ type: 'grant', amount: 500 }]);
  });

  it('refund returns part or all of a usage, never more than it in total', async () => {
    const user = await fundedUser(100);
    const internal = server.internalClient();
    const usage = await internal.internal.credits.use.mutate({
      userId: user.id,
      amount: 30,
      appId: 'chat',
      description: 'failed generation',
    });
    const partial = await internal.internal.credits.refund.mutate({
      userId: user.id,
      transactionId: usage.transactionId,
      amount: 10,
      description: 'partial',
      idempotencyKey: 'r1',
    });
    expect(partial.balance).toBe(80);
    const tooMuch = await failure(
      internal.internal.credits.refund.mutate({
        userId: user.id,
        transactionId: usage.transactionId,
        amount: 21,
        description: 'too much',
        idempotencyKey: 'r2',
      }),
    );
    expect(tooMuch.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'REFUND_EXCEEDS_TRANSACTION' });
    const rest = await internal.internal.credits.refund.mutate({
      userId: user.id,
      transactionId: usage.transactionId,
      description: 'the rest',
      idempotencyKey: 'r3',
    });
    expect(rest.balance).toBe(100);
    // A replay of the full refund still answers with its first result, though nothing is left to refund.
    expect(
      await internal.internal.credits.refund.mutate({
        userId: user.id,
        transactionId: usage.transactionId,
        description: 'the rest',
        idempotencyKey: 'r3',
      }),
    ).toEqual(rest);
    const balance = await internal.internal.credits.balance.query({ userId: user.id });
    expect(balance).toMatchObject({ balance: 100, totalSpent: 0 });
  });

  it('concurrent refunds of one usage never exceed it', async () => {
    server.httpForThisTest(); // real parallel requests
    const user = await fundedUser(100);
    const internal = server.internalClient();
    const usage = await internal.internal.credits.use.mutate({
      userId: user.id,
      amount: 10,
      appId: 'chat',
      description: 'x',
    });
    const outcomes = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) =>
        internal.internal.credits.refund.mutate({
          userId: user.id,
          transactionId: usage.transactionId,
          amount: 1,
          description: 'one',
          idempotencyKey: `refund-${i}`,
        }),
      ),
    );
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(10);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(100);
  });

  it('refund of another user transaction is NOT_FOUND; of a grant is refused', async () => {
    const owner = await fundedUser(10);
    const internal = server.internalClient();
    const usage = await internal.internal.credits.use.mutate({
      userId: owner.id,
      amount: 5,
      appId: 'chat',
      description: 'x',
    });
    const stranger = await fundedUser(10);
    const notFound = await failure(
      internal.internal.credits.refund.mutate({
        userId: stranger.id,
        transactionId: usage.transactionId,
        description: 'steal',
        idempotencyKey: 'steal',
      }),
    );
    expect(notFound.data).toMatchObject({ code: 'NOT_FOUND' });
    const [grant] = (await (await server.userClient(owner)).credits.transactions.query()).items.filter(
      (item) => item.type === 'grant',
    );
    const notRefundable = await failure(
      internal.internal.credits.refund.mutate({
        userId: owner.id,
        transactionId: grant!.id,
        description: 'x',
        idempotencyKey: 'grant-refund',
      }),
    );
    expect(notRefundable.data).toMatchObject({ code: 'BAD_REQUEST', reason: 'NOT_REFUNDABLE' });
  });
});
