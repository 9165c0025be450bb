import { randomUUID } from 'node:crypto';
import {
  closeActiveGift,
  creditBalance,
  lockGift,
  lotPortionsOfEntry,
  recordRedemption,
  runReconcileChecks,
  slicePortions,
  systemKeys,
  takeGiftPortion,
} from '@mana-credits/db';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expireDueAccountLots } from '../src/domain/credits/lots.ts';
import { expireDueGifts } from '../src/domain/gifts/escrow.ts';
import { expectHoldsConsistent, expectLedgerConsistent } from './helpers/invariants.ts';
import {
  expectReconciled as expectReconciledIn,
  type GrantExtra,
  grantLot,
  lapseLot as lapseLotIn,
} from './helpers/lots.ts';
import { newUser, startTestServer, type TestServer } from './helpers/server.ts';

// Gifts over credit lots (found sound by the review of 2026-12-04, kept as regression tests), and reconcile
// naming gift money that landed in the wrong account. Lots and gifts are backdated with SQL (as lots-lapsed.test.ts
// does).

let server: TestServer;

beforeAll(async () => {
  server = await startTestServer(
    {
      LOT_EXPIRY_SWEEP_SECONDS: '0',
      RESERVATION_SWEEP_SECONDS: '3600',
      GIFT_EXPIRY_SWEEP_SECONDS: '0',
      GIFT_INFO_RATE_LIMIT_PER_MINUTE: '1000000',
    },
    { transport: 'in-process' },
  );
});
afterAll(async () => {
  await server?.close();
});

const db = () => server.deps.db;
const internal = () => server.internalClient().internal.credits;
const grant = (userId: string, amount: number, extra: GrantExtra = {}) =>
  grantLot(server, userId, amount, extra);

const lapseLot = (lotId: string) => lapseLotIn(db(), lotId);

/** Lapses every lot that was derived (mirrored) from lotId too, as real time passing would. */
async function lapseLotAndMirrors(lotId: string) {
  const { rows } = await sql<{ id: string }>`
    select m.id from credits.lots m join credits.lots s on s.id = ${lotId}::uuid
     where m.expires_at = s.expires_at and m.id <> s.id`.execute(db());
  await lapseLot(lotId);
  for (const row of rows) await lapseLot(row.id);
}

async function backdateGift(giftId: string) {
  await sql`update gifts.gift_codes set expires_at = now() - interval '1 second' where id = ${giftId}::uuid`.execute(
    db(),
  );
}

const expectReconciled = () => expectReconciledIn(db());

async function stored(userId: string) {
  const { rows } = await sql<{ balance: number; reserved: number }>`
    select balance, reserved from credits.balances where user_id = ${userId}`.execute(db());
  return rows[0];
}

describe('gift escrow over lots that lapse', () => {
  it('split gift over an expiring and a never-expiring lot: lot lapses in escrow, one portion redeemed, cancel', async () => {
    const creator = newUser();
    const expiring = await grant(creator.id, 30, { priority: 0, expiresInDays: 5 });
    const never = await grant(creator.id, 100);
    const creatorClient = await server.userClient(creator);
    const gift = await creatorClient.gifts.create.mutate({
      type: 'split',
      totalCredits: 60,
      totalPortions: 3,
    });
    // escrow = 30 from the expiring lot, 30 from the never-expiring one
    await lapseLot(expiring.lotId);
    const r1 = newUser();
    const a1 = await (await server.userClient(r1)).gifts.redeem.mutate({ code: gift.code });
    // portion 1 = first 20 of the escrow, all from the lapsed lot: arrives expired
    expect(a1).toMatchObject({ creditsReceived: 20, balance: 0 });
    const r2 = newUser();
    const a2 = await (await server.userClient(r2)).gifts.redeem.mutate({ code: gift.code });
    // portion 2 = 10 lapsed + 10 never-expiring
    expect(a2).toMatchObject({ creditsReceived: 20, balance: 10 });
    const cancelled = await creatorClient.gifts.cancel.mutate({ id: gift.id });
    expect(cancelled.refunded).toBe(20);
    expect((await internal().balance.query({ userId: creator.id })).balance).toBe(90);
    void never;
    await expectReconciled();
    await expectLedgerConsistent(db());
  });

  it('gift expiry sweep and lot expiry sweep racing (two connections), refunds into lapsed lots', async () => {
    server.httpForThisTest();
    const creators = Array.from({ length: 6 }, () => newUser());
    const gifts: { id: string; code: string }[] = [];
    const lots: string[] = [];
    for (const creator of creators) {
      const lot = await grant(creator.id, 50, { priority: 0, expiresInDays: 3 });
      await grant(creator.id, 50);
      lots.push(lot.lotId);
      const client = await server.userClient(creator);
      for (let i = 0; i < 2; i++) {
        gifts.push(
          await client.gifts.create.mutate({ type: 'first_come', totalCredits: 30, totalPortions: 3 }),
        );
      }
    }
    for (const gift of gifts) await (await server.userClient()).gifts.redeem.mutate({ code: gift.code });
    for (const lot of lots) await lapseLotAndMirrors(lot);
    for (const gift of gifts) await backdateGift(gift.id);
    const redeemers = await Promise.all(gifts.map(() => server.userClient()));
    await Promise.allSettled([
      expireDueGifts(db()),
      expireDueAccountLots(db()),
      expireDueGifts(db()),
      expireDueAccountLots(db()),
      ...gifts.map((gift, i) => redeemers[i]!.gifts.redeem.mutate({ code: gift.code })),
      ...creators.map(async (c) => (await server.userClient(c)).gifts.myCreated.query()),
    ]);
    await expireDueAccountLots(db());
    const statuses = await sql<{ status: string }>`
      select status from gifts.gift_codes where id = any(${gifts.map((g) => g.id)}::uuid[])`.execute(db());
    expect(statuses.rows.every((row) => row.status === 'expired')).toBe(true);
    await expectReconciled();
    await expectLedgerConsistent(db());
    await expectHoldsConsistent(db());
  });

  it('a creator hold pinning the expiring lot; gift refund into the lapsed lot; hold released later', async () => {
    const creator = newUser();
    const expiring = await grant(creator.id, 40, { priority: 0, expiresInDays: 3 });
    await grant(creator.id, 10);
    const hold = await internal().reserve.mutate({
      userId: creator.id,
      amount: 15,
      appId: 'a',
      description: 'h',
      idempotencyKey: randomUUID(),
    });
    const client = await server.userClient(creator);
    const gift = await client.gifts.create.mutate({ type: 'split', totalCredits: 30, totalPortions: 2 });
    await lapseLot(expiring.lotId);
    await backdateGift(gift.id);
    await expireDueGifts(db());
    expect(await stored(creator.id)).toMatchObject({ reserved: 15 });
    await internal().release.mutate({ reservationId: hold.reservationId });
    await expireDueAccountLots(db());
    expect((await internal().balance.query({ userId: creator.id })).balance).toBe(10);
    await expectReconciled();
  });
});

describe('reconcile: gift money in the wrong account', () => {
  // Ledger rows are immutable (a trigger refuses UPDATE), so the drift is made the way a bug would make it: the
  // gift paths' own db writes (takeGiftPortion, creditBalance, recordRedemption, closeActiveGift) with a
  // wrong user id, on a database of its own (dropped without the closing reconcile). Every sum still holds
  // (ledger = balance, lots = balance, lot ledger, global conservation); only the account is wrong.
  let own: TestServer;
  beforeAll(async () => {
    own = await startTestServer(
      { GIFT_EXPIRY_SWEEP_SECONDS: '0', LOT_EXPIRY_SWEEP_SECONDS: '0' },
      { transport: 'in-process' },
    );
  });
  afterAll(async () => {
    await own?.app.close();
    await own?.auth.close();
    await own?.database.drop();
  });

  async function violations() {
    const { checks } = await runReconcileChecks(own.deps.db, 5);
    return checks.filter((check) => check.violations > 0).map((check) => check.name);
  }

  it('a portion recorded as redeemed by one user but credited to another (here: the creator) is reported', async () => {
    const creator = await own.fundedUser(100);
    const gift = await (await own.userClient(creator)).gifts.create.mutate({
      type: 'simple',
      totalCredits: 40,
    });
    const redeemer = newUser();
    expect(await violations()).toEqual([]);
    await own.deps.db.transaction().execute(async (trx) => {
      const locked = (await lockGift(trx, gift.id))!;
      const portion = await takeGiftPortion(trx, gift.id);
      const escrowed = await lotPortionsOfEntry(trx, 'user', locked.funding_transaction_id!);
      const credit = await creditBalance(
        trx,
        {
          userId: creator.id, // the bug: not the redeemer
          type: 'gift',
          amount: locked.credits_per_portion,
          description: 'Gift redeemed',
          metadata: { giftId: gift.id },
          idempotencyKey: systemKeys.giftRedemption(gift.id, portion),
        },
        { kind: 'mirror', source: 'gift', portions: slicePortions(escrowed, 0, 40), demote: true },
      );
      await recordRedemption(trx, {
        giftId: gift.id,
        userId: redeemer.id,
        status: 'success',
        creditsReceived: locked.credits_per_portion,
        portionNumber: portion,
        creditTransactionId: credit.id,
        sourceAppId: null,
      });
    });
    // The redeemer holds nothing, yet the gift says they received 40: reconcile names it (every sum holds).
    expect(await violations()).toEqual(['gift_money_accounts']);
  });

  it('an escrow refund credited to someone other than the gift creator is reported', async () => {
    const creator = await own.fundedUser(100);
    const gift = await (await own.userClient(creator)).gifts.create.mutate({
      type: 'simple',
      totalCredits: 30,
    });
    const stranger = newUser();
    await own.deps.db.transaction().execute(async (trx) => {
      const locked = (await lockGift(trx, gift.id))!;
      await closeActiveGift(trx, gift.id, 'refunded', 30);
      await creditBalance(
        trx,
        {
          userId: stranger.id, // the bug: not the creator
          type: 'refund',
          amount: 30,
          description: 'Gift cancelled: unclaimed credits returned',
          metadata: { giftId: gift.id },
          referenceTransactionId: locked.funding_transaction_id,
          idempotencyKey: systemKeys.giftRefund(gift.id),
        },
        { kind: 'new', source: 'refund', category: 'promotional', priority: 10, expiresAt: null },
        'unspent',
      );
    });
    expect(await violations()).toContain('gift_money_accounts');
  });
});
