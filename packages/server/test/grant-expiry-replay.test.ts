import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reconcile } from '../src/domain/audit/reconcile.ts';
import { newUser, startTestServer, type TestServer } from './helpers/server.ts';

/**
 * A keyed grant with an absolute expiry, retried after that expiry has passed (its first answer was lost,
 * say): the retry sends the same payload and must be answered with the first grant, not refused for an
 * expiresAt in the past. A new grant with a past expiresAt is still refused (found by `pnpm chaos`, whose
 * grants expire seconds after they are made).
 */
let server: TestServer;

beforeAll(async () => {
  // Calls run in process (helpers/server.ts: Transport).
  server = await startTestServer({}, { transport: 'in-process' });
});
afterAll(async () => {
  await server.close();
});

describe('internal.credits.grant with expiresAt', () => {
  it('replays a keyed grant after its expiry has passed; refuses a new one', async () => {
    const user = newUser();
    const internal = server.internalClient();
    const expiresAt = new Date(Date.now() + 1500);
    const input = { userId: user.id, amount: 7, reason: 'expiring', idempotencyKey: 'exp-1', expiresAt };
    const first = await internal.internal.credits.grant.mutate(input);
    await new Promise((resolve) => setTimeout(resolve, expiresAt.getTime() - Date.now() + 200));

    const again = await internal.internal.credits.grant.mutate(input);
    expect(again.transactionId).toBe(first.transactionId);

    await expect(
      internal.internal.credits.grant.mutate({ ...input, idempotencyKey: 'exp-2' }),
    ).rejects.toMatchObject({ data: { httpStatus: 400, reason: 'VALIDATION' } });
    // The same key with another expiry is another request: a conflict, as for any other field.
    await expect(
      internal.internal.credits.grant.mutate({ ...input, expiresAt: new Date(Date.now() + 60_000) }),
    ).rejects.toMatchObject({ data: { httpStatus: 409 } });

    const balance = await internal.internal.credits.balance.query({ userId: user.id });
    expect(balance.balance).toBe(0);
    expect((await reconcile(server.db)).ok).toBe(true);
  });
});
