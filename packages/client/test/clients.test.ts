import { randomUUID } from 'node:crypto';
import { TRPCClientError } from '@trpc/client';
import { afterAll, beforeAll, describe, expect, expectTypeOf, it } from 'vitest';
import { expectLedgerConsistent } from '../../server/test/helpers/invariants.ts';
import { newUser, SERVICE_KEY, startTestServer, type TestServer } from '../../server/test/helpers/server.ts';
import {
  type AppRouter,
  CreditsTransportError,
  createCreditsClient,
  createInternalCreditsClient,
  creditsErrorReason,
  type InsufficientCreditsDetails,
  isIdempotencyConflict,
  isInsufficientCredits,
  isLimitExceeded,
  isUnauthorized,
  type LimitExceededDetails,
  type RouterInputs,
  type RouterOutputs,
} from '../src/index.ts';

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await expectLedgerConsistent(server.deps.db);
  await server.close();
});

const service = () =>
  createInternalCreditsClient({ url: server.url, serviceKey: SERVICE_KEY, appId: 'client-test' });

async function fundedUser(amount: number) {
  const user = newUser();
  await service().internal.credits.grant.mutate({
    userId: user.id,
    amount,
    reason: 'funds',
    idempotencyKey: randomUUID(),
  });
  return user;
}

async function failure(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error('expected the call to fail');
    },
    (error: unknown) => error,
  );
}

describe('createCreditsClient', () => {
  it('sends the token from an async getToken and extra headers on every request', async () => {
    const user = await fundedUser(30);
    const token = await server.auth.sign(user);
    const seen: Headers[] = [];
    const client = createCreditsClient({
      url: `${server.url}/`,
      getToken: async () => token,
      headers: () => ({ 'x-request-id': 'from-test' }),
      fetch: (input, init) => {
        seen.push(new Headers(init?.headers as Record<string, string>));
        return fetch(input, init as RequestInit);
      },
    });
    const used = await client.credits.use.mutate({ amount: 10, appId: 'chat', description: 'x' });
    expect(used.balance).toBe(20);
    const balance = await client.credits.balance.query();
    expect(balance).toMatchObject({ balance: 20, totalSpent: 10 });
    expect(balance.updatedAt).toBeInstanceOf(Date);
    expect(seen).toHaveLength(2);
    for (const headers of seen) {
      expect(headers.get('authorization')).toBe(`Bearer ${token}`);
      expect(headers.get('x-request-id')).toBe('from-test');
    }
  });

  it('calls public procedures without a token', async () => {
    const client = createCreditsClient({ url: server.url, getToken: () => null });
    expect(await client.credits.packages.query()).toEqual(expect.any(Array));
  });

  it('batches up to 100 calls per request, as the server allows', async () => {
    const user = await fundedUser(1000);
    const token = await server.auth.sign(user);
    let requests = 0;
    const client = createCreditsClient({
      url: server.url,
      getToken: () => token,
      fetch: (input, init) => {
        requests += 1;
        return fetch(input, init as RequestInit);
      },
    });
    const results = await Promise.all(
      Array.from({ length: 150 }, (_, index) =>
        client.credits.use.mutate({ amount: 1, appId: 'batch', description: `call ${index}` }),
      ),
    );
    expect(results).toHaveLength(150);
    expect(requests).toBe(2);
    expect((await client.credits.balance.query()).balance).toBe(850);
  });

  it('does not offer the internal procedures', () => {
    const client = createCreditsClient({ url: server.url, getToken: () => null });
    expectTypeOf(client).not.toHaveProperty('internal');
    expectTypeOf(client.credits.use.mutate).parameter(0).toEqualTypeOf<RouterInputs['credits']['use']>();
  });
});

describe('createInternalCreditsClient', () => {
  it('sends the service key and app id', async () => {
    const userId = newUser().id;
    const client = service();
    await client.internal.credits.init.mutate({ userId });
    const grant = await client.internal.credits.grant.mutate({
      userId,
      amount: 9,
      reason: 'r',
      idempotencyKey: 'g',
    });
    expectTypeOf(grant).toEqualTypeOf<RouterOutputs['internal']['credits']['grant']>();
    const used = await client.internal.credits.use.mutate({
      userId,
      amount: 4,
      appId: 'images',
      description: 'x',
    });
    const row = await server.deps.db
      .selectFrom('credits.transactions')
      .select(['app_id'])
      .where('id', '=', used.transactionId)
      .executeTakeFirstOrThrow();
    expect(row.app_id).toBe('images');
    expect(await client.internal.credits.balance.query({ userId })).toMatchObject({ balance: 5 });
    expectTypeOf(client).not.toHaveProperty('credits');
  });
});

describe('error helpers', () => {
  it('isInsufficientCredits reads required and available', async () => {
    const user = await fundedUser(5);
    const token = await server.auth.sign(user);
    const client = createCreditsClient({ url: server.url, getToken: () => token });
    const error = await failure(client.credits.use.mutate({ amount: 8, appId: 'a', description: 'x' }));
    expect(isInsufficientCredits(error)).toBe(true);
    if (!isInsufficientCredits(error)) return;
    expectTypeOf(error.data.details).toEqualTypeOf<InsufficientCreditsDetails>();
    expect(error.data.details).toEqual({ required: 8, available: 5 });
    expect(creditsErrorReason(error)).toBe('INSUFFICIENT_CREDITS');
    expect(isIdempotencyConflict(error) || isUnauthorized(error) || isLimitExceeded(error)).toBe(false);
  });

  it('isIdempotencyConflict spots a key reused with another payload', async () => {
    const client = service();
    const userId = newUser().id;
    await client.internal.credits.grant.mutate({ userId, amount: 1, reason: 'r', idempotencyKey: 'same' });
    const error = await failure(
      client.internal.credits.grant.mutate({ userId, amount: 2, reason: 'r', idempotencyKey: 'same' }),
    );
    expect(isIdempotencyConflict(error)).toBe(true);
    if (isIdempotencyConflict(error)) expectTypeOf(error.data.reason).toEqualTypeOf<'IDEMPOTENCY_CONFLICT'>();
    expect(isInsufficientCredits(error)).toBe(false);
  });

  it('isUnauthorized covers a bad token and a bad service key', async () => {
    const user = createCreditsClient({ url: server.url, getToken: () => 'not-a-token' });
    const badToken = await failure(user.credits.balance.query());
    expect(isUnauthorized(badToken)).toBe(true);
    const badKey = await failure(
      createInternalCreditsClient({
        url: server.url,
        serviceKey: 'wrong',
        appId: 'x',
      }).internal.credits.balance.query({
        userId: 'u',
      }),
    );
    expect(isUnauthorized(badKey)).toBe(true);
    if (isUnauthorized(badKey)) expectTypeOf(badKey.data.code).toEqualTypeOf<'UNAUTHORIZED'>();
  });

  it('creditsErrorReason names validation failures', async () => {
    const error = await failure(
      service().internal.credits.grant.mutate({ userId: 'u', amount: 0, reason: 'r', idempotencyKey: 'k' }),
    );
    expect(creditsErrorReason(error)).toBe('VALIDATION');
  });

  it('isLimitExceeded reads a limit error as the service formats it', () => {
    const error = TRPCClientError.from<AppRouter>({
      error: {
        code: -32012,
        message: 'Your daily limit in this guild is 100 credits (90 spent today)',
        data: {
          code: 'PRECONDITION_FAILED',
          httpStatus: 412,
          path: 'guild.use',
          reason: 'DAILY_LIMIT_EXCEEDED',
          details: { limit: 100, spent: 90, requested: 20 },
          requestId: 'r',
        },
      },
    });
    expect(isLimitExceeded(error)).toBe(true);
    if (isLimitExceeded(error)) {
      expectTypeOf(error.data.details).toEqualTypeOf<LimitExceededDetails>();
      expectTypeOf(error.data.reason).toEqualTypeOf<`${string}_LIMIT_EXCEEDED`>();
      expect(error.data.details.limit - error.data.details.spent).toBe(10);
    }
  });

  it('answer false and undefined for anything that is not a service error', () => {
    const others: unknown[] = [
      undefined,
      'INSUFFICIENT_CREDITS',
      new Error('boom'),
      { data: { reason: 'IDEMPOTENCY_CONFLICT', code: 'UNAUTHORIZED' } },
      new TRPCClientError('network', { cause: new CreditsTransportError('down', undefined) }),
    ];
    for (const other of others) {
      expect(creditsErrorReason(other)).toBeUndefined();
      expect(
        [isInsufficientCredits, isLimitExceeded, isIdempotencyConflict, isUnauthorized].map((is) =>
          is(other),
        ),
      ).toEqual([false, false, false, false]);
    }
  });

  it('accept unknown and narrow to the client error type', () => {
    expectTypeOf(isInsufficientCredits).parameter(0).toBeUnknown();
    expectTypeOf(creditsErrorReason).returns.toEqualTypeOf<string | undefined>();
    const error: unknown = undefined;
    if (isIdempotencyConflict(error)) {
      expectTypeOf(error).toExtend<TRPCClientError<AppRouter>>();
      expectTypeOf(error.data.requestId).toEqualTypeOf<string | undefined>();
    }
  });
});
