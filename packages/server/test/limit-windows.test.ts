import { randomUUID } from 'node:crypto';
import { createDb, type Database, type DbHandle, memberSpending } from '@mana-credits/db';
import { type Kysely, sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { commitReservation, reserveCredits } from '../src/domain/credits/reservations.ts';
import { setMemberLimits } from '../src/domain/guild/limits.ts';
import { useGuildCredits } from '../src/domain/guild/pools.ts';
import { expectLedgerConsistent } from './helpers/invariants.ts';
import { newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';

// Issue 13.3: member limits across UTC midnight and month end, with a clock the test controls. The domain
// runs on a database session whose credits.clock() is shifted by mana_credits.clock_offset (the only clock
// the limit windows use); everything else is the real server.

let server: TestServer;
let clockHandle: DbHandle | undefined;
let clockDb: Kysely<Database>;

beforeAll(async () => {
  server = await startTestServer({ MEMBERSHIP_CACHE_SECONDS: '0' });
  server.auth.expectedServiceKey = SERVICE_KEY;
  if (server.database.kind === 'postgres') {
    // One connection, so the session setting below holds for every statement of the domain calls.
    clockHandle = await createDb({ databaseUrl: server.database.url, poolSize: 1 });
    clockDb = clockHandle.db;
  } else {
    clockDb = server.deps.db; // PGlite is one session already
  }
});
afterAll(async () => {
  await sql`reset mana_credits.clock_offset`.execute(clockDb);
  await clockHandle?.close();
  await expectLedgerConsistent(server.deps.db);
  await server.close();
});

/** Moves the clock of the test session so that credits.clock() reads `at` (UTC) from now on. */
async function setClock(at: string) {
  const { rows } = await sql<{ offset: string }>`
    select (${at}::timestamptz - clock_timestamp())::text as offset`.execute(clockDb);
  await sql`select set_config('mana_credits.clock_offset', ${rows[0]!.offset}, false)`.execute(clockDb);
}

const deps = () => ({ db: clockDb, membership: server.deps.membership });

async function guildWithMember(limits: { dailyLimit: number | null; monthlyLimit: number | null }) {
  const guildId = `guild-${randomUUID()}`;
  const owner = newUser();
  const member = newUser();
  server.auth.setRole(guildId, owner.id, 'owner');
  server.auth.setRole(guildId, member.id, 'member');
  const internal = server.internalClient().internal;
  await internal.guildPool.init.mutate({ guildId });
  await internal.credits.grant.mutate({
    userId: owner.id,
    amount: 10_000,
    reason: 'funds',
    idempotencyKey: randomUUID(),
  });
  await (await server.userClient(owner)).guild.fund.mutate({ guildId, amount: 10_000 });
  await setMemberLimits(deps(), owner.id, { guildId, userId: member.id, ...limits });
  return { guildId, memberId: member.id };
}

const spend = (guildId: string, userId: string, amount: number) =>
  useGuildCredits(deps(), { guildId, userId, amount, appId: 'chat', description: 'spend' });

const hold = (guildId: string, userId: string, amount: number) =>
  reserveCredits(deps(), {
    guildId,
    userId,
    amount,
    appId: 'chat',
    description: 'hold',
    ttlSeconds: 3600,
    idempotencyKey: randomUUID(),
  });

/** The domain error's reason of a call that must be refused. */
async function refusal(call: Promise<unknown>): Promise<string | undefined> {
  try {
    await call;
  } catch (error) {
    return (error as { reason?: string }).reason;
  }
  throw new Error('expected the call to be refused');
}

describe('member limits across window boundaries (UTC, by the database clock)', () => {
  it('a hold placed before midnight still counts after it; its commit cannot take the new day past the cap', async () => {
    const { guildId, memberId } = await guildWithMember({ dailyLimit: 100, monthlyLimit: null });
    await setClock('2031-05-14 23:59:00+00');
    const held = await hold(guildId, memberId, 100);
    await setClock('2031-05-15 00:01:00+00');
    expect(await refusal(spend(guildId, memberId, 100))).toBe('DAILY_LIMIT_EXCEEDED');
    expect(await memberSpending(clockDb, guildId, memberId)).toMatchObject({ spentToday: 0, heldToday: 100 });
    await setClock('2031-05-15 00:02:00+00');
    await commitReservation(clockDb, { reservationId: held.reservationId });
    expect(await memberSpending(clockDb, guildId, memberId)).toMatchObject({ spentToday: 100, heldToday: 0 });
    expect(await refusal(spend(guildId, memberId, 1))).toBe('DAILY_LIMIT_EXCEEDED');
    // The day before kept nothing of it: the commit is booked on the day of its ledger row.
    expect(await memberSpending(clockDb, guildId, memberId, '2031-05-14')).toMatchObject({ spentToday: 0 });
    await setClock('2031-05-16 00:00:01+00');
    await spend(guildId, memberId, 100);
  });

  it('the same at the end of a month for the monthly cap', async () => {
    const { guildId, memberId } = await guildWithMember({ dailyLimit: null, monthlyLimit: 100 });
    await setClock('2031-01-31 23:59:30+00');
    await spend(guildId, memberId, 40);
    const held = await hold(guildId, memberId, 60);
    await setClock('2031-02-01 00:00:30+00');
    expect(await memberSpending(clockDb, guildId, memberId)).toMatchObject({
      spentThisMonth: 0,
      heldThisMonth: 60,
    });
    expect(await refusal(spend(guildId, memberId, 41))).toBe('MONTHLY_LIMIT_EXCEEDED');
    await spend(guildId, memberId, 40);
    await commitReservation(clockDb, { reservationId: held.reservationId, amount: 50 });
    expect(await memberSpending(clockDb, guildId, memberId)).toMatchObject({
      spentThisMonth: 90,
      heldThisMonth: 0,
    });
    expect(await memberSpending(clockDb, guildId, memberId, '2031-01-31')).toMatchObject({
      spentThisMonth: 40,
    });
    expect(await refusal(spend(guildId, memberId, 11))).toBe('MONTHLY_LIMIT_EXCEEDED');
    await spend(guildId, memberId, 10);
  });

  it('a spend is booked on the day of its ledger row: counters and ledger agree at midnight', async () => {
    const { guildId, memberId } = await guildWithMember({ dailyLimit: 1000, monthlyLimit: null });
    await setClock('2031-07-01 23:59:59.7+00');
    // Spend for a second of wall time, so that midnight falls between two spends (or inside one).
    const until = Date.now() + 1000;
    let spends = 0;
    while (Date.now() < until) {
      await spend(guildId, memberId, 1);
      spends++;
    }
    const { rows } = await sql<{ day: string; ledger: number; counted: number }>`
      select l.day::text, l.spent as ledger, coalesce(c.spent, 0) as counted
        from (select (created_at at time zone 'utc')::date as day, -sum(amount)::int8 as spent
                from credits.guild_transactions
               where organization_id = ${guildId} and type = 'usage' group by 1) l
        left join credits.guild_member_usage c
          on c.organization_id = ${guildId} and c.user_id = ${memberId} and c.day = l.day
       order by 1`.execute(server.deps.db);
    expect(rows.map((row) => row.day)).toEqual(['2031-07-01', '2031-07-02']);
    expect(rows.reduce((sum, row) => sum + row.ledger, 0)).toBe(spends);
    for (const row of rows) expect(row.counted).toBe(row.ledger);
  });
});
