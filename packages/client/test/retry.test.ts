import { randomUUID } from 'node:crypto';
import { type AddressInfo, createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectLedgerConsistent, ledgerSum } from '../../server/test/helpers/invariants.ts';
import { newUser, SERVICE_KEY, startTestServer, type TestServer } from '../../server/test/helpers/server.ts';
import {
  AccountChangedError,
  CreditsTransportError,
  createCreditsClient,
  createInternalCreditsClient,
  creditsErrorReason,
  creditsRequestId,
  isInsufficientCredits,
  isOutcomeUnknown,
  mayHaveTakenEffect,
  type RetryOptions,
} from '../src/index.ts';
import { FlakyProxy } from './helpers/flaky-proxy.ts';

let server: TestServer;
let proxy: FlakyProxy;
const FAST: RetryOptions = { baseDelayMs: 5, maxDelayMs: 20 };

beforeAll(async () => {
  server = await startTestServer();
  proxy = await FlakyProxy.start(server.url);
});
afterAll(async () => {
  await proxy.close();
  await expectLedgerConsistent(server.deps.db);
  await server.close();
});

function serviceThroughProxy(retry: RetryOptions | false = FAST) {
  return createInternalCreditsClient({ url: proxy.url, serviceKey: SERVICE_KEY, appId: 'retry-test', retry });
}

async function userThroughProxy(funds: number, retry: RetryOptions | false = FAST, timeoutMs?: number) {
  const user = newUser();
  if (funds > 0) {
    await createInternalCreditsClient({
      url: server.url,
      serviceKey: SERVICE_KEY,
      appId: 'setup',
    }).internal.credits.grant.mutate({
      userId: user.id,
      amount: funds,
      reason: 'funds',
      idempotencyKey: randomUUID(),
    });
  }
  const token = await server.auth.sign(user);
  return { user, client: createCreditsClient({ url: proxy.url, getToken: () => token, retry, timeoutMs }) };
}

async function usageRows(userId: string) {
  return server.deps.db
    .selectFrom('credits.transactions')
    .select(['id', 'amount'])
    .where('user_id', '=', userId)
    .where('type', '=', 'usage')
    .execute();
}

const failureOf = async (promise: Promise<unknown>) =>
  promise.then(
    () => {
      throw new Error('expected the call to fail');
    },
    (error: unknown) => error as Error & { cause?: unknown },
  );

describe('a mutation with an idempotency key', () => {
  it('survives a reset, a lost response and a 503, debiting once with the same key each time', async () => {
    const { user, client } = await userThroughProxy(100);
    proxy.failNext('reset', 'lost', 503);
    const result = await client.credits.use.mutate({
      amount: 30,
      appId: 'chat',
      description: 'reply',
      idempotencyKey: 'use-1',
    });
    expect(result.balance).toBe(70);
    expect(proxy.requests).toHaveLength(4);
    for (const request of proxy.requests) expect(request.body).toContain('"idempotencyKey":"use-1"');
    const rows = await usageRows(user.id);
    expect(rows).toEqual([{ id: result.transactionId, amount: -30 }]);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(70);
  });

  it('is retried after 502/504 pages and the service’s own 503, for internal calls too', async () => {
    const client = serviceThroughProxy();
    const userId = newUser().id;
    proxy.failNext(502, 'json503', 504);
    const grant = await client.internal.credits.grant.mutate({
      userId,
      amount: 40,
      reason: 'welcome',
      idempotencyKey: 'grant-1',
    });
    expect(grant.balance).toBe(40);
    expect(proxy.requests).toHaveLength(4);
    expect(await ledgerSum(server.deps.db, userId)).toBe(40);
  });

  it('gives up after the configured retries with the transport error', async () => {
    const client = serviceThroughProxy({ ...FAST, retries: 2 });
    proxy.failNext(503, 503, 503, 503);
    const error = await failureOf(
      client.internal.credits.grant.mutate({
        userId: newUser().id,
        amount: 1,
        reason: 'x',
        idempotencyKey: 'g',
      }),
    );
    expect(proxy.requests).toHaveLength(3);
    expect(error.cause).toBeInstanceOf(CreditsTransportError);
    expect((error.cause as CreditsTransportError).status).toBe(503);
  });

  it('is retried after OUTCOME_UNKNOWN (the first attempt took effect): the same key replays it', async () => {
    const { user, client } = await userThroughProxy(100);
    proxy.failNext('unknown503');
    const result = await client.credits.use.mutate({
      amount: 25,
      appId: 'chat',
      description: 'reply',
      idempotencyKey: 'unknown-1',
    });
    expect(proxy.requests).toHaveLength(2);
    expect(await usageRows(user.id)).toEqual([{ id: result.transactionId, amount: -25 }]);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(75);
  });

  it('is not retried when retry is off', async () => {
    const client = serviceThroughProxy(false);
    proxy.failNext(503);
    await failureOf(
      client.internal.credits.grant.mutate({
        userId: newUser().id,
        amount: 1,
        reason: 'x',
        idempotencyKey: 'g',
      }),
    );
    expect(proxy.requests).toHaveLength(1);
  });

  it('is not retried on an answer from the service, such as insufficient credits', async () => {
    const { client } = await userThroughProxy(5);
    proxy.failNext();
    const error = await failureOf(
      client.credits.use.mutate({ amount: 6, appId: 'chat', description: 'x', idempotencyKey: 'k' }),
    );
    expect(isInsufficientCredits(error)).toBe(true);
    expect(proxy.requests).toHaveLength(1);
  });
});

describe('a query', () => {
  it('a query (it only reads) is retried after a reset, a lost response and a 503, for internal calls too', async () => {
    const { user, client } = await userThroughProxy(25);
    proxy.failNext('reset', 'lost', 503);
    expect((await client.credits.balance.query()).balance).toBe(25);
    expect(proxy.requests).toHaveLength(4);
    const service = serviceThroughProxy();
    proxy.failNext(502, 'json503');
    expect((await service.internal.credits.balance.query({ userId: user.id })).balance).toBe(25);
    expect(proxy.requests).toHaveLength(3);
  });
});

describe('calls that are never retried', () => {
  it('a mutation without a key fails at once, even though the lost request took effect', async () => {
    const { user, client } = await userThroughProxy(50);
    proxy.failNext('lost');
    const error = await failureOf(client.credits.use.mutate({ amount: 10, appId: 'chat', description: 'x' }));
    expect(error.cause).toBeInstanceOf(CreditsTransportError);
    expect((error.cause as CreditsTransportError).status).toBe(502);
    expect(proxy.requests).toHaveLength(1);
    // Exactly why it is not retried: the service did debit, and a blind repeat would debit again.
    expect(await ledgerSum(server.deps.db, user.id)).toBe(40);
  });

  it('a mutation without a key answered OUTCOME_UNKNOWN fails at once and says so', async () => {
    const { user, client } = await userThroughProxy(50);
    proxy.failNext('unknown503');
    const error = await failureOf(client.credits.use.mutate({ amount: 10, appId: 'chat', description: 'x' }));
    expect(isOutcomeUnknown(error)).toBe(true);
    expect(proxy.requests).toHaveLength(1);
    // It did take effect: a blind repeat would have debited twice.
    expect(await ledgerSum(server.deps.db, user.id)).toBe(40);
  });

  it('a query is not retried when retry is off', async () => {
    const { client } = await userThroughProxy(0, false);
    proxy.failNext(503);
    await failureOf(client.credits.balance.query());
    expect(proxy.requests).toHaveLength(1);
  });

  it('in one batch, keyed calls are retried and the unkeyed one is not', async () => {
    const { user, client } = await userThroughProxy(100);
    proxy.failNext('lost');
    const [first, second, unkeyed] = await Promise.allSettled([
      client.credits.use.mutate({ amount: 1, appId: 'a', description: 'x', idempotencyKey: 'b1' }),
      client.credits.use.mutate({ amount: 2, appId: 'a', description: 'x', idempotencyKey: 'b2' }),
      client.credits.use.mutate({ amount: 4, appId: 'a', description: 'x' }),
    ]);
    expect(first.status).toBe('fulfilled');
    expect(second.status).toBe('fulfilled');
    expect(unkeyed.status).toBe('rejected');
    expect(proxy.requests[0]?.url).toContain('credits.use,credits.use,credits.use');
    expect(proxy.requests.slice(1).map((request) => request.body.includes('"idempotencyKey"'))).not.toContain(
      false,
    );
    // All three were applied by the lost first request; the retries replayed b1 and b2.
    expect((await usageRows(user.id)).map((row) => row.amount).sort()).toEqual([-1, -2, -4]);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(93);
  });
});

describe('waits, batches and inputs of retries', () => {
  it('waits for a Retry-After longer than its backoff; one longer than maxRetryAfterMs is not waited for', async () => {
    const { user, client } = await userThroughProxy(10);
    proxy.failNext({ status: 503, retryAfter: '1' });
    const started = Date.now();
    await client.credits.use.mutate({ amount: 1, appId: 'a', description: 'x', idempotencyKey: 'after-1' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    expect(proxy.requests).toHaveLength(2);

    proxy.failNext({ status: 503, retryAfter: '120' });
    const error = await failureOf(
      client.credits.use.mutate({ amount: 1, appId: 'a', description: 'x', idempotencyKey: 'after-120' }),
    );
    expect(error.cause).toBeInstanceOf(CreditsTransportError);
    expect((error.cause as CreditsTransportError).retryAfterMs).toBe(120_000);
    expect(proxy.requests).toHaveLength(1);
    // A 429 that says when to come back is waited for too (nothing ran).
    proxy.failNext({ status: 429, retryAfter: '0' });
    await client.credits.use.mutate({ amount: 1, appId: 'a', description: 'x', idempotencyKey: 'after-429' });
    expect(proxy.requests).toHaveLength(2);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(8);
  });

  it('the calls of one failed batch are retried together, as one batch again', async () => {
    const { user, client } = await userThroughProxy(100);
    proxy.failNext('reset');
    const keys = Array.from({ length: 40 }, (_, index) => `together-${index}`);
    await Promise.all(
      keys.map((idempotencyKey) =>
        client.credits.use.mutate({ amount: 1, appId: 'a', description: 'x', idempotencyKey }),
      ),
    );
    // One failed request, then its 40 calls again together: they share one timer, which sends them on in one
    // tick, so their retries leave in one request (a timer per call, even with one wait, split them into 2–3
    // requests on a busy machine; per-call jitter scattered them into up to 40 before).
    expect(proxy.requests).toHaveLength(2);
    expect(JSON.parse(proxy.requests[1]!.body)).toEqual(JSON.parse(proxy.requests[0]!.body));
    expect(await ledgerSum(server.deps.db, user.id)).toBe(60);
  });

  it('a call aborted while it waits to be retried is not sent again; the others of its batch are', async () => {
    const { user, client } = await userThroughProxy(100, { baseDelayMs: 200, maxDelayMs: 200 });
    proxy.failNext('reset');
    const controller = new AbortController();
    const kept = client.credits.use.mutate({
      amount: 1,
      appId: 'a',
      description: 'x',
      idempotencyKey: 'kept',
    });
    const aborted = client.credits.use.mutate(
      { amount: 2, appId: 'a', description: 'x', idempotencyKey: 'aborted' },
      { signal: controller.signal },
    );
    // Both failed with the first request and now wait (100–200 ms) to be sent again.
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(proxy.requests).toHaveLength(1);
    controller.abort();
    expect((await failureOf(aborted)).name).toBe('TRPCClientError');
    await kept;
    expect(proxy.requests).toHaveLength(2);
    expect(proxy.requests[1]!.body).toContain('"kept"');
    expect(proxy.requests[1]!.body).not.toContain('"aborted"');
    expect((await usageRows(user.id)).map((row) => row.amount)).toEqual([-1]);
  });

  it('a retry sends the input as it was when the call was made, even if the caller changed it since', async () => {
    const { user, client } = await userThroughProxy(100);
    proxy.failNext('reset');
    const input = { amount: 1, appId: 'a', description: 'x', idempotencyKey: 'snapshot-1' };
    const call = client.credits.use.mutate(input);
    input.amount = 50;
    await call;
    expect((await usageRows(user.id)).map((row) => row.amount)).toEqual([-1]);
  });

  it('a request unanswered for timeoutMs fails in transit: a keyed call is retried, a keyless one says it may have run', async () => {
    const { user, client } = await userThroughProxy(10, FAST, 300);
    proxy.failNext('hang');
    const started = Date.now();
    await client.credits.use.mutate({ amount: 1, appId: 'a', description: 'x', idempotencyKey: 'hung-1' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(proxy.requests).toHaveLength(2);
    proxy.failNext('hang');
    const error = await failureOf(client.credits.use.mutate({ amount: 1, appId: 'a', description: 'x' }));
    expect(error.cause).toBeInstanceOf(CreditsTransportError);
    expect((error.cause as Error).message).toContain('within 300 ms');
    expect(mayHaveTakenEffect(error)).toBe(true);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(9);
  });

  it('a retry is sent only for the account the call was made for: a new token of the same user is fine, another user is not', async () => {
    const grant = (userId: string) =>
      createInternalCreditsClient({
        url: server.url,
        serviceKey: SERVICE_KEY,
        appId: 'setup',
      }).internal.credits.grant.mutate({ userId, amount: 10, reason: 'funds', idempotencyKey: randomUUID() });
    const alice = newUser();
    const bob = newUser();
    await grant(alice.id);
    await grant(bob.id);
    let token = await server.auth.sign(alice);
    const client = createCreditsClient({
      url: proxy.url,
      getToken: () => token,
      retry: { baseDelayMs: 200, maxDelayMs: 200 },
    });

    const spendOne = (idempotencyKey: string) =>
      client.credits.use.mutate({ amount: 1, appId: 'a', description: 'x', idempotencyKey });

    // Alice's token is refreshed while her call waits for its retry: sent with the new token, debited once.
    proxy.failNext('reset');
    const refreshed = spendOne('switch-1');
    await new Promise((resolve) => setTimeout(resolve, 50));
    token = await server.auth.sign(alice, { expiresIn: '20m' });
    await refreshed;
    expect(await ledgerSum(server.deps.db, alice.id)).toBe(9);

    // Bob signs in while Alice's call waits: it is not sent with his token (the key would be new for him).
    proxy.failNext('reset');
    const switched = spendOne('switch-2');
    await new Promise((resolve) => setTimeout(resolve, 50));
    token = await server.auth.sign(bob);
    const error = await failureOf(switched);
    expect(error.cause).toBeInstanceOf(AccountChangedError);
    expect(proxy.requests).toHaveLength(1);
    expect(await ledgerSum(server.deps.db, bob.id)).toBe(10);
    // Bob's own calls go as usual.
    await client.credits.use.mutate({ amount: 2, appId: 'a', description: 'x', idempotencyKey: 'switch-2' });
    expect(await ledgerSum(server.deps.db, bob.id)).toBe(8);
  });

  it('whether a call is retried is decided when it is made: a key added to the object later does not make it retried', async () => {
    const { user, client } = await userThroughProxy(10);
    proxy.failNext('lost');
    const form: { amount: number; appId: string; description: string; idempotencyKey?: string } = {
      amount: 1,
      appId: 'a',
      description: 'x',
    };
    const call = client.credits.use.mutate(form);
    form.idempotencyKey = 'next-purchase';
    await failureOf(call);
    expect(proxy.requests).toHaveLength(1);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(9);
  });

  it('an input the caller keeps changing (a reactive Proxy) is sent, and retried, as it was when the call was made', async () => {
    const { user, client } = await userThroughProxy(100);
    proxy.failNext('reset');
    const state = new Proxy({ amount: 1, appId: 'a', description: 'x', idempotencyKey: 'proxy-1' }, {});
    const call = client.credits.use.mutate(state);
    state.amount = 99;
    state.idempotencyKey = 'proxy-2';
    await call;
    expect((await usageRows(user.id)).map((row) => row.amount)).toEqual([-1]);
  });

  it('an answer that stops half way is a failure in transit: a keyed call is retried', async () => {
    const { user, client } = await userThroughProxy(10, FAST, 300);
    proxy.failNext('stall-body');
    await client.credits.use.mutate({ amount: 1, appId: 'a', description: 'x', idempotencyKey: 'stalled-1' });
    expect(proxy.requests).toHaveLength(2);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(9);
  });

  it('an abort while the token is being fetched ends the call at once', async () => {
    const client = createCreditsClient({ url: proxy.url, getToken: () => new Promise<string>(() => {}) });
    const controller = new AbortController();
    const call = client.credits.balance.query(undefined, { signal: controller.signal });
    const reason = new Error('the user left the page');
    controller.abort(reason);
    const error = await failureOf(call);
    expect(error.name).toBe('TRPCClientError');
    // The signal's reason, as fetch would give it.
    expect(error.cause).toBe(reason);
  });

  it('a long batch of queries is split below the URL length proxies accept', async () => {
    const service = serviceThroughProxy();
    proxy.failNext();
    const ids = Array.from({ length: 100 }, (_, index) => `${'u'.repeat(150)}-${index}`);
    const balances = await Promise.all(
      ids.map((userId) => service.internal.credits.balance.query({ userId })),
    );
    expect(balances.map((balance) => balance.balance)).toEqual(ids.map(() => 0));
    expect(proxy.requests.length).toBeGreaterThan(1);
    expect(Math.max(...proxy.requests.map((request) => request.url.length))).toBeLessThanOrEqual(6000);
  });
});

describe('what an error says', () => {
  it('a refusal the service gave before tRPC (its REST shape) keeps its reason and request id', async () => {
    const client = createInternalCreditsClient({
      url: `${server.url}/no-such-prefix`,
      serviceKey: SERVICE_KEY,
      appId: 'x',
    });
    const error = await failureOf(client.internal.credits.balance.query({ userId: 'someone' }));
    expect(creditsErrorReason(error)).toBe('NOT_FOUND');
    expect(creditsRequestId(error)).toMatch(/^[0-9a-f-]{36}$/);
    expect(mayHaveTakenEffect(error)).toBe(false);
  });

  it('mayHaveTakenEffect: true when the call may have run, false when the service refused or was never reached', async () => {
    const { client } = await userThroughProxy(1, false);
    proxy.failNext('lost');
    expect(
      mayHaveTakenEffect(
        await failureOf(client.credits.use.mutate({ amount: 1, appId: 'a', description: 'x' })),
      ),
    ).toBe(true);
    proxy.failNext('unknown503');
    expect(
      mayHaveTakenEffect(
        await failureOf(client.credits.use.mutate({ amount: 1, appId: 'a', description: 'x' })),
      ),
    ).toBe(true);
    proxy.failNext('reset');
    expect(
      mayHaveTakenEffect(
        await failureOf(client.credits.use.mutate({ amount: 1, appId: 'a', description: 'x' })),
      ),
    ).toBe(true);
    proxy.failNext();
    const refused = await failureOf(client.credits.use.mutate({ amount: 5, appId: 'a', description: 'x' }));
    expect(isInsufficientCredits(refused)).toBe(true);
    expect(mayHaveTakenEffect(refused)).toBe(false);
    // A port nobody listens on: the connection is refused, the request never left.
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const { port } = closed.address() as AddressInfo;
    await new Promise((resolve) => closed.close(resolve));
    const nowhere = createCreditsClient({
      url: `http://127.0.0.1:${port}`,
      getToken: () => 'x',
      retry: false,
    });
    expect(mayHaveTakenEffect(await failureOf(nowhere.credits.balance.query()))).toBe(false);
  });
});
