import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { failure } from './helpers/errors.ts';
import { startTestServer, type TestServer } from './helpers/server.ts';

// Every listing pages the same way (newestFirst in packages/db): newest first, a cursor that must be a row
// the listing could show, INVALID_CURSOR naming the field otherwise.

let server: TestServer;
beforeAll(async () => {
  // Calls run in process (helpers/server.ts: Transport).
  server = await startTestServer({ GIFT_INFO_RATE_LIMIT_PER_MINUTE: '1000000' }, { transport: 'in-process' });
});
afterAll(async () => {
  await server.close();
});

describe('keyset pagination, one rule for every listing', () => {
  it('pages through received gifts (a joined listing) and created gifts, newest first, without gaps or repeats', async () => {
    const creator = await server.fundedUser(100);
    const creatorClient = await server.userClient(creator);
    const redeemer = await server.userClient();
    const gifts = [];
    for (let i = 0; i < 5; i++) {
      gifts.push(await creatorClient.gifts.create.mutate({ type: 'simple', totalCredits: 3 }));
    }
    for (const gift of gifts) await redeemer.gifts.redeem.mutate({ code: gift.code });

    const received: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await redeemer.gifts.myReceived.query({ limit: 2, cursor });
      expect(page.items.length).toBeLessThanOrEqual(2);
      received.push(...page.items.map((item) => item.giftId));
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
    expect(received).toEqual(gifts.map((gift) => gift.id).reverse());

    const created: string[] = [];
    cursor = undefined;
    do {
      const page = await creatorClient.gifts.myCreated.query({ limit: 3, cursor });
      created.push(...page.items.map((item) => item.id));
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
    expect(created).toEqual(gifts.map((gift) => gift.id).reverse());
  });

  it("a cursor that is not a row of the caller's listing is INVALID_CURSOR, naming the field, on every listing", async () => {
    const owner = await server.fundedUser(10);
    const ownerClient = await server.userClient(owner);
    await ownerClient.credits.use.mutate({ amount: 1, appId: 'chat', description: 'x' });
    const ownRow = (await ownerClient.credits.transactions.query({ limit: 1 })).items[0]!.id;
    const stranger = await server.userClient();
    const refusals = await Promise.all([
      failure(stranger.credits.transactions.query({ cursor: ownRow })),
      failure(stranger.credits.transactions.query({ cursor: randomUUID() })),
      failure(stranger.credits.purchases.query({ cursor: randomUUID() })),
      failure(stranger.gifts.myCreated.query({ cursor: randomUUID() })),
      failure(stranger.gifts.myReceived.query({ cursor: randomUUID() })),
    ]);
    for (const refusal of refusals) {
      expect(refusal.data).toMatchObject({
        code: 'BAD_REQUEST',
        reason: 'INVALID_CURSOR',
        details: { field: 'cursor' },
      });
    }
  });
});
