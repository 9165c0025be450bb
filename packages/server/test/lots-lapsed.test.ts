import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spendFromPool } from '../src/domain/guild/pools.ts';
import { expectHoldsConsistent, expectLedgerConsistent } from './helpers/invariants.ts';
import {
  expectReconciled as expectReconciledIn,
  type GrantExtra,
  grantLot,
  lapseLot as lapseLotIn,
} from './helpers/lots.ts';
import { newUser, startTestServer, type TestServer } from './helpers/server.ts';
import { whileAnotherSession } from './helpers/sessions.ts';

// Lots whose time is up while other things happen: answers that must not count expired credits (commit and
// release next to a lapsed lot, reads while a lapsed hold pins a lapsed lot, funding a pool with a lapsed lot),
// the expiring-notice job writing a lot a debit or a hold is waiting to burn, and sweeps racing everything.
// Lots are backdated with SQL as lots.test.ts does (expires_at on the lot, next_lot_expiry on the account);
// every sweep is off so that only the calls below move credits. Found by a review of the lot paths.

let server: TestServer;

beforeAll(async () => {
  server = await startTestServer(
    {
      LOT_EXPIRY_SWEEP_SECONDS: '0',
      RESERVATION_SWEEP_SECONDS: '3600',
      GIFT_EXPIRY_SWEEP_SECONDS: '0',
    },
    { transport: 'in-process' },
  );
});
afterAll(async () => {
  await server?.close();
});

const internal = () => server.internalClient().internal.credits;

const grant = (userId: string, amount: number, extra: GrantExtra = {}) =>
  grantLot(server, userId, amount, extra);

const use = (userId: string, amount: number) =>
  internal().use.mutate({ userId, amount, appId: 'lots-app', description: 'a use' });

const reserve = (userId: string, amount: number) =>
  internal().reserve.mutate({
    userId,
    amount,
    appId: 'lots-app',
    description: 'a hold',
    idempotencyKey: randomUUID(),
  });

/** Makes a lot's time pass (helpers/lots.ts). */
const lapseLot = (lotId: string) => lapseLotIn(server.deps.db, lotId);

async function lapseHold(reservationId: string) {
  await sql`update credits.reservations set expires_at = now() - interval '1 second' where id = ${reservationId}::uuid`.execute(
    server.deps.db,
  );
}

const expectReconciled = () => expectReconciledIn(server.deps.db);

/** What a user can really spend now: the balance after posting every lapsed lot and hold. */
async function spendableAfterExpiry(userId: string) {
  await sql`select credits.release_expired_holds(${userId}, 1000)`.execute(server.deps.db);
  await sql`select credits.expire_lots('user', ${userId})`.execute(server.deps.db);
  const { rows } = await sql<{ available: number }>`
    select (balance - reserved)::int8 as available from credits.balances where user_id = ${userId}`.execute(
    server.deps.db,
  );
  return Number(rows[0]!.available);
}

describe('answers never count expired credits', () => {
  it('a hold whose time is up holds nothing in the lot views either (byCategory adds up to the balance)', async () => {
    // Found by a review of the read side: the balance counted the lapsed hold as returned, the lot views still
    // as pinned (byCategory 70 beside a balance of 100; credits.lots showed 30 held).
    const user = newUser();
    await grant(user.id, 100);
    const lapsing = await grant(user.id, 20, { expiresInDays: 5, priority: 0 });
    const hold = await reserve(user.id, 50); // pins the 20 expiring credits and 30 of the others
    await lapseHold(hold.reservationId);
    await lapseLot(lapsing.lotId);
    const client = await server.userClient(user);
    const read = await client.credits.balance.query();
    expect(read).toMatchObject({ balance: 100, reserved: 0 });
    expect(read.byCategory.paid + read.byCategory.promotional).toBe(100);
    const lots = (await client.credits.lots.query()).items;
    expect(lots.map((lot) => [lot.remaining, lot.held])).toEqual([[100, 0]]);
  });

  it('release of a hold answers the balance without an unrelated lapsed lot', async () => {
    const user = newUser();
    await grant(user.id, 100); // never expires
    const hold = await reserve(user.id, 30); // pins the never-expiring lot
    const lapsing = await grant(user.id, 50, { expiresInDays: 5 });
    await lapseLot(lapsing.lotId);
    const released = await internal().release.mutate({ reservationId: hold.reservationId });
    // 100 never-expiring credits are all there is to spend: the 50 of the lapsed lot are gone.
    expect(released.balance).toBe(100);
    expect((await internal().balance.query({ userId: user.id })).balance).toBe(100);
    await expectReconciled();
  });

  it('commit of a hold answers the balance without an unrelated lapsed lot', async () => {
    const user = newUser();
    await grant(user.id, 100);
    const hold = await reserve(user.id, 30);
    const lapsing = await grant(user.id, 50, { expiresInDays: 5 });
    await lapseLot(lapsing.lotId);
    const committed = await internal().commit.mutate({ reservationId: hold.reservationId, amount: 10 });
    expect(committed.balance).toBe(90);
    expect((await internal().balance.query({ userId: user.id })).balance).toBe(90);
    await expectReconciled();
  });

  it('credits.balance does not count the pinned credits of a lapsed lot once their hold has lapsed too', async () => {
    const user = newUser();
    await grant(user.id, 20); // never expires
    const lapsing = await grant(user.id, 50, { expiresInDays: 5, priority: 0 });
    const hold = await reserve(user.id, 50); // pins the 50 of the expiring lot (priority 0 burns first)
    await lapseLot(lapsing.lotId);
    await lapseHold(hold.reservationId);
    const read = await internal().balance.query({ userId: user.id });
    // Returning the hold frees 50 credits of a lapsed lot: they expire at once. Only 20 are spendable.
    expect(read.balance).toBe(20);
    expect(await spendableAfterExpiry(user.id)).toBe(20);
    await expectReconciled();
  });
});

// The notice job's statement (credits.notice_expiring_lots) runs in another session and holds the lot rows it
// flagged while a debit or a hold of the same lot waits for them; then it commits. Postgres only (two sessions).
const whileNoticing = <T>(work: () => Promise<T>) =>
  whileAnotherSession(
    server.database.url!,
    ['select credits.notice_expiring_lots(30, 500)'],
    () => {
      server.httpForThisTest();
      return work();
    },
    ['select 1'],
  );

describe.skipIf(!process.env.DATABASE_URL)('the expiring-notice job racing a burn (Postgres only)', () => {
  it('a debit that waits for a lot the notice job is flagging still burns that lot', async () => {
    const user = newUser();
    // A lot expiring within EXPIRY_NOTICE_DAYS, not noticed yet; the debit will burn it (priority 0).
    const lot = await grant(user.id, 50, { expiresInDays: 3, priority: 0 });
    await grant(user.id, 50);
    const spent = await whileNoticing(() => use(user.id, 20));
    expect(spent.balance).toBe(80);
    const { rows } = await sql<{ remaining: number }>`
      select remaining from credits.lots where id = ${lot.lotId}::uuid`.execute(server.deps.db);
    // The 20 used came from this lot (the ledger row names it): it must have 30 left.
    expect(Number(rows[0]!.remaining)).toBe(30);
    await expectReconciled();
  });

  it('a hold that waits for a lot the notice job is flagging pins it, and its commit succeeds', async () => {
    const user = newUser();
    const lot = await grant(user.id, 50, { expiresInDays: 3, priority: 0 });
    await grant(user.id, 50);
    const hold = await whileNoticing(() => reserve(user.id, 20));
    const { rows } = await sql<{ pinned: number }>`
      select pinned from credits.lots where id = ${lot.lotId}::uuid`.execute(server.deps.db);
    const pinned = Number(rows[0]!.pinned);
    // The commit unpins what the hold names: with the pin lost, pinned would go below zero.
    const commit = await internal()
      .commit.mutate({ reservationId: hold.reservationId, amount: 20 })
      .then((answer) => ({ balance: answer.balance }))
      .catch((error: { data?: { code?: string; httpStatus?: number } }) => ({ error: error.data }));
    expect({ pinned, commit }).toEqual({ pinned: 20, commit: { balance: 80 } });
    await expectReconciled();
  });
});

describe('pools: answers never count expired credits', () => {
  it('guild.fund answers the pool balance without a lapsed pool lot', async () => {
    const owner = newUser();
    const guildId = `guild-${randomUUID()}`;
    server.auth.setRole(guildId, owner.id, 'owner');
    await server.internalClient().internal.guildPool.init.mutate({ guildId });
    await grant(owner.id, 30, { expiresInDays: 5, priority: 0 });
    await grant(owner.id, 100);
    const ownerClient = await server.userClient(owner);
    await ownerClient.guild.fund.mutate({ guildId, amount: 30 }); // the pool's lot mirrors the expiring one
    const [poolLot] = (await ownerClient.guild.lots.query({ guildId })).items;
    await lapseLot(poolLot!.id);
    expect((await ownerClient.guild.balance.query({ guildId })).balance).toBe(0);
    const funded = await ownerClient.guild.fund.mutate({ guildId, amount: 10 });
    // 10 spendable in the pool: the 30 of the lapsed lot are gone.
    expect(funded.poolBalance).toBe(10);
    expect((await ownerClient.guild.balance.query({ guildId })).balance).toBe(10);
    await expectReconciled();
  });

  it('guild.balance does not count the pinned credits of a lapsed pool lot once their pool hold has lapsed too', async () => {
    const owner = newUser();
    const guildId = `guild-${randomUUID()}`;
    server.auth.setRole(guildId, owner.id, 'owner');
    await server.internalClient().internal.guildPool.init.mutate({ guildId });
    await grant(owner.id, 30, { expiresInDays: 5, priority: 0 });
    await grant(owner.id, 10);
    const ownerClient = await server.userClient(owner);
    await ownerClient.guild.fund.mutate({ guildId, amount: 40 }); // 30 expiring + 10 never
    const hold = await internal().reserve.mutate({
      userId: owner.id,
      guildId,
      amount: 30,
      appId: 'lots-app',
      description: 'pool hold',
      idempotencyKey: randomUUID(),
    });
    const lapsing = (await ownerClient.guild.lots.query({ guildId })).items.find(
      (lot) => lot.expiresAt !== null,
    )!;
    expect(lapsing.held).toBe(30);
    await lapseLot(lapsing.id);
    await lapseHold(hold.reservationId);
    expect((await ownerClient.guild.balance.query({ guildId })).balance).toBe(10);
    await expectReconciled();
  });
});

describe('pools: a lapsed lot with nothing left to expire refuses nothing', () => {
  // The pool's next_lot_expiry has passed, but its lot was spent before, or is pinned whole by a hold: the
  // expiry pass expires nothing and moves next_lot_expiry on. The single pool path (holds always; spends with
  // COALESCE_DEBITS=false or after a refused batch) read the pool again only when the pass expired credits,
  // and refused on the stale answer (a keyed call kept that refusal under its key). Found by a review.
  async function poolWith(prepare: (guildId: string, member: string) => Promise<unknown>) {
    const owner = newUser();
    const member = newUser();
    const guildId = `guild-${randomUUID()}`;
    server.auth.setRole(guildId, owner.id, 'owner');
    server.auth.setRole(guildId, member.id, 'member');
    await server.internalClient().internal.guildPool.init.mutate({ guildId });
    await grant(owner.id, 10, { expiresInDays: 5, priority: 0 }); // burns first
    await grant(owner.id, 100);
    await (await server.userClient(owner)).guild.fund.mutate({ guildId, amount: 110 });
    await prepare(guildId, member.id);
    const lot = await server.deps.db
      .selectFrom('credits.lots')
      .select('id')
      .where('account_kind', '=', 'guild')
      .where('account_id', '=', guildId)
      .where('expires_at', 'is not', null)
      .executeTakeFirstOrThrow();
    await lapseLot(lot.id);
    return { guildId, member: member.id };
  }
  const poolHold = (guildId: string, userId: string, amount: number, idempotencyKey = randomUUID()) =>
    internal()
      .reserve.mutate({
        userId,
        guildId,
        amount,
        appId: 'lots-app',
        description: 'pool hold',
        idempotencyKey,
      })
      .then(
        (held) => `held, ${held.balance} left`,
        (error: { data?: { reason?: string } }) => `refused ${error.data?.reason}`,
      );

  /** The member spends the pool's 10 expiring credits (they burn first). */
  const spendTheLot = (guildId: string, userId: string) =>
    internal().use.mutate({ userId, guildId, amount: 10, appId: 'lots-app', description: 'spends the lot' });

  it('a keyed pool hold after the lapsed lot was spent is placed (and its key replays the hold)', async () => {
    const { guildId, member } = await poolWith(spendTheLot);
    const key = randomUUID();
    expect([await poolHold(guildId, member, 5, key), await poolHold(guildId, member, 5, key)]).toEqual([
      'held, 95 left',
      'held, 95 left',
    ]);
    await expectReconciled();
  });

  it('single-path pool spends after the lapsed lot was spent go through, one after another', async () => {
    const { guildId, member } = await poolWith(spendTheLot);
    const spend = () =>
      spendFromPool(server.deps.db, {
        guildId,
        userId: member,
        amount: 5,
        appId: 'lots-app',
        description: 'single',
      }).then(
        (spent) => `ok ${spent.poolBalance}`,
        (error: { reason?: string }) => `refused ${error.reason}`,
      );
    expect([await spend(), await spend()]).toEqual(['ok 95', 'ok 90']);
    await expectReconciled();
  });

  it('a pool hold while the lapsed lot is pinned whole by another hold is placed', async () => {
    const { guildId, member } = await poolWith((guildId, userId) => poolHold(guildId, userId, 10));
    expect(await poolHold(guildId, member, 5)).toBe('held, 95 left');
    await expectHoldsConsistent(server.deps.db);
    await expectReconciled();
  });
});

describe('invariants under races', () => {
  it('two sweeps racing debits, refunds and releases on lapsed lots expire each credit once', async () => {
    server.httpForThisTest(); // real parallel requests
    const { expireDueAccountLots } = await import('../src/domain/credits/lots.ts');
    const users = Array.from({ length: 8 }, () => newUser());
    const setup = await Promise.all(
      users.map(async (user) => {
        const lapsing = await grant(user.id, 30, { expiresInDays: 5, priority: 0 });
        await grant(user.id, 100);
        const used = await use(user.id, 5); // paid by the expiring lot
        const hold = await reserve(user.id, 10); // pins 10 of it
        return { user, lapsing, used, hold };
      }),
    );
    for (const { lapsing } of setup) await lapseLot(lapsing.lotId);
    await Promise.all([
      expireDueAccountLots(server.deps.db),
      expireDueAccountLots(server.deps.db),
      ...setup.flatMap(({ user, used, hold }) => [
        use(user.id, 7),
        internal().refund.mutate({
          userId: user.id,
          transactionId: used.transactionId,
          description: 'refund after the lapse',
          idempotencyKey: randomUUID(),
        }),
        internal().release.mutate({ reservationId: hold.reservationId }),
        internal().balance.query({ userId: user.id }),
      ]),
      expireDueAccountLots(server.deps.db),
    ]);
    await expireDueAccountLots(server.deps.db);
    for (const { user, lapsing } of setup) {
      const { rows } = await sql<{ expired: number; rows: number }>`
        select coalesce(-sum(amount), 0)::int8 as expired, count(*)::int as rows from credits.transactions
         where user_id = ${user.id} and type = 'expiry'`.execute(server.deps.db);
      const lot = await sql<{ remaining: number; expired: number; pinned: number }>`
        select remaining, expired, pinned from credits.lots where id = ${lapsing.lotId}::uuid`.execute(
        server.deps.db,
      );
      expect({
        expired: Number(rows[0]!.expired),
        lot: lot.rows[0],
        balance: (await internal().balance.query({ userId: user.id })).balance,
      }).toEqual({ expired: 30, lot: { remaining: 0, expired: 30, pinned: 0 }, balance: 93 });
    }
    await expectLedgerConsistent(server.deps.db);
    await expectHoldsConsistent(server.deps.db);
  });
});

describe('batch debits over lapsed lots and holds', () => {
  it('a batch whose check returns a lapsed hold over a lapsed lot counts none of its credits', async () => {
    const user = newUser();
    const lapsing = await grant(user.id, 50, { expiresInDays: 5, priority: 0 });
    await grant(user.id, 20);
    const hold = await reserve(user.id, 50); // pins all of the expiring lot
    await lapseLot(lapsing.lotId);
    await lapseHold(hold.reservationId);
    const item = (amount: number) => ({
      userId: user.id,
      amount,
      appId: 'lots-app',
      description: 'batch item',
      idempotencyKey: randomUUID(),
    });
    const { results } = await internal().useBatch.mutate({ items: [item(15), item(10), item(5)] });
    expect(results.map((result) => result.ok)).toEqual([true, false, true]);
    expect((await internal().balance.query({ userId: user.id })).balance).toBe(0);
    const { rows } = await sql<{ expired: number }>`
      select coalesce(-sum(amount), 0)::int8 as expired from credits.transactions
       where user_id = ${user.id} and type = 'expiry'`.execute(server.deps.db);
    expect(Number(rows[0]!.expired)).toBe(50);
    await expectLedgerConsistent(server.deps.db);
    await expectHoldsConsistent(server.deps.db);
    // Every row continues the one before it: the first item, then the expiry its neighbour's check posted
    // (returning the hold), then the last item. The expiry was once written from the balance without the first
    // item, and the items' rows dated after it (ledger_rows_continue; balanceAt answered a balance the user
    // never had). Found by a review.
    const chain = await sql<{ type: string; before: number; after: number }>`
      select type, balance_before as before, balance_after as after from credits.transactions
       where user_id = ${user.id} order by created_at, id`.execute(server.deps.db);
    expect(chain.rows.map((row) => [row.type, row.before, row.after])).toEqual([
      ['grant', 0, 50],
      ['grant', 50, 70],
      ['usage', 70, 55],
      ['expiry', 55, 5],
      ['usage', 5, 0],
    ]);
    await expectReconciled();
  });
});

describe('the lot expiry sweep working off a backlog', () => {
  it('goes on past a pass of accounts whose lots were spent before their expiry (they expire nothing)', async () => {
    const { lotExpiryJob } = await import('../src/jobs/lot-expiry.ts');
    const user = newUser();
    const lapsing = await grant(user.id, 30, { expiresInDays: 5 });
    await lapseLot(lapsing.lotId);
    // 600 accounts ahead of it in the sweep's order (by id) whose next expiry is stale: a pass of 500 of them
    // expires no credit, which used to end the run.
    await sql`insert into credits.balances (user_id, balance, next_lot_expiry)
              select '0000-stale-' || lpad(g::text, 4, '0'), 0, now() - interval '1 hour'
                from generate_series(1, 600) g`.execute(server.deps.db);
    const job = lotExpiryJob({
      db: server.deps.db,
      config: { ...server.deps.config, lotExpirySweepSeconds: 30 },
    });
    await job.run(new AbortController().signal);
    const { rows } = await sql<{ expired: number }>`
      select coalesce(-sum(amount), 0)::int8 as expired from credits.transactions
       where user_id = ${user.id} and type = 'expiry'`.execute(server.deps.db);
    expect(Number(rows[0]!.expired)).toBe(30);
    const { rows: due } = await sql<{ due: number }>`
      select count(*)::int as due from credits.balances where next_lot_expiry <= now()`.execute(
      server.deps.db,
    );
    expect(due[0]!.due).toBe(0);
  });
});
