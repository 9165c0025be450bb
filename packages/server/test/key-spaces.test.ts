import { randomUUID } from 'node:crypto';
import { TRPCClientError } from '@trpc/client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { GuildRole } from './helpers/auth-server.ts';
import { expectHoldsConsistent, expectLedgerConsistent } from './helpers/invariants.ts';
import { type Client, newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';

// Key spaces that span several accounts, where the row lock of one account cannot order a refusal against a
// use of the key elsewhere: a user's hold keys (personal and every pool) and a member's guild keys (guild.fund
// decides under the funder's balance, guild.use under the pool). Two payloads under one key sent at once must
// never both be answered as if the key were free, and each replay must answer its first result. PGlite runs one
// session, so only Postgres can interleave these transactions; the tests run on both.

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer({ MEMBERSHIP_CACHE_SECONDS: '0' });
  server.auth.expectedServiceKey = SERVICE_KEY;
});
afterEach(async () => {
  await expectLedgerConsistent(server.deps.db);
  await expectHoldsConsistent(server.deps.db);
});
afterAll(async () => {
  await server.close();
});

const internal = () => server.internalClient().internal;

interface Member {
  id: string;
  client: Client;
}

async function join(guildId: string, role: GuildRole): Promise<Member> {
  const user = newUser();
  server.auth.setRole(guildId, user.id, role);
  return { id: user.id, client: await server.userClient(user) };
}

async function guild(amount: number) {
  const guildId = `guild-${randomUUID()}`;
  await internal().guildPool.init.mutate({ guildId });
  const owner = await join(guildId, 'owner');
  await internal().credits.grant.mutate({
    userId: owner.id,
    amount,
    reason: 'funds',
    idempotencyKey: randomUUID(),
  });
  await owner.client.guild.fund.mutate({ guildId, amount });
  return { guildId, owner };
}

async function member(guildId: string, owner: Member, dailyLimit: number) {
  const joined = await join(guildId, 'member');
  await owner.client.guild.setMemberLimits.mutate({
    guildId,
    userId: joined.id,
    dailyLimit,
    monthlyLimit: null,
  });
  return joined;
}

const use = (guildId: string, amount: number, extra: Record<string, unknown> = {}) => ({
  guildId,
  amount,
  appId: 'chat',
  description: 'completion',
  ...extra,
});

function reasonOf(error: unknown): string {
  if (error instanceof TRPCClientError) {
    return String((error.data as { reason?: string } | undefined)?.reason ?? error.data?.code);
  }
  return `not a tRPC error: ${String(error)}`;
}

const label = (settled: PromiseSettledResult<unknown>) =>
  settled.status === 'fulfilled' ? 'ok' : reasonOf(settled.reason);

describe('one key, two accounts, at once', () => {
  it('a pool hold key: same key, two guilds at once (one refused by a cap): the replay of each answers its first result', async () => {
    // Hold keys are scoped to the user (not the pool): the two requests are different payloads under one key.
    // One after the other the second is a CONFLICT (control below); at once, both are answered as if the key
    // were free, and the refused one's replay then says IDEMPOTENCY_CONFLICT instead of its first answer.
    const a = await guild(1000);
    const b = await guild(1000);
    const m = await member(a.guildId, a.owner, 1);
    server.auth.setRole(b.guildId, m.id, 'member');
    const request = (guildId: string, key: string) => ({
      ...use(guildId, 5),
      userId: m.id,
      idempotencyKey: key,
    });

    // control: one after the other, the second payload is a CONFLICT and replays agree
    const seqKey = `hk-seq-${randomUUID()}`;
    const s1 = await Promise.allSettled([internal().credits.reserve.mutate(request(a.guildId, seqKey))]);
    const s2 = await Promise.allSettled([internal().credits.reserve.mutate(request(b.guildId, seqKey))]);
    expect([label(s1[0]!), label(s2[0]!)]).toEqual(['DAILY_LIMIT_EXCEEDED', 'IDEMPOTENCY_CONFLICT']);

    const outcomes: Record<string, number> = {};
    const broken: string[] = [];
    for (let round = 0; round < 20; round++) {
      const key = `hk-${round}-${randomUUID()}`;
      const [ra, rb] = await Promise.allSettled([
        internal().credits.reserve.mutate(request(a.guildId, key)),
        internal().credits.reserve.mutate(request(b.guildId, key)),
      ]);
      const first = `${label(ra)}/${label(rb)}`;
      outcomes[first] = (outcomes[first] ?? 0) + 1;
      // Replays must answer exactly what the first answered.
      const [ra2, rb2] = await Promise.allSettled([
        internal().credits.reserve.mutate(request(a.guildId, key)),
        internal().credits.reserve.mutate(request(b.guildId, key)),
      ]);
      const replay = `${label(ra2)}/${label(rb2)}`;
      if (replay !== first) broken.push(`round ${round}: first ${first}, replay ${replay}`);
      if (rb.status === 'fulfilled') {
        await internal().credits.release.mutate({
          reservationId: (rb.value as { reservationId: string }).reservationId,
        });
      }
    }
    // Both payloads under one key must never both get a non-CONFLICT answer, and replays must agree.
    expect(outcomes['DAILY_LIMIT_EXCEEDED/ok'] ?? 0, JSON.stringify(outcomes)).toBe(0);
    expect(broken).toEqual([]);
  });

  it('guild.fund and guild.use share the (guild, member) key space: same key at once, replays answer the first result', async () => {
    // control: one after the other, the second payload is a CONFLICT
    {
      const { guildId, owner } = await guild(100);
      const f = await Promise.allSettled([
        owner.client.guild.fund.mutate({ guildId, amount: 50, idempotencyKey: 'seq' }),
      ]);
      const u = await Promise.allSettled([
        owner.client.guild.use.mutate(use(guildId, 5, { idempotencyKey: 'seq' })),
      ]);
      expect([label(f[0]!), label(u[0]!)]).toEqual(['INSUFFICIENT_CREDITS', 'IDEMPOTENCY_CONFLICT']);
    }
    const outcomes: Record<string, number> = {};
    const broken: string[] = [];
    for (let round = 0; round < 15; round++) {
      const { guildId, owner } = await guild(100);
      // The owner has no personal credits left: fund is refused for lack of credits; use posts.
      const key = `fk-${round}`;
      const fund = () => owner.client.guild.fund.mutate({ guildId, amount: 50, idempotencyKey: key });
      const spend = () => owner.client.guild.use.mutate(use(guildId, 5, { idempotencyKey: key }));
      const [f, u] = await Promise.allSettled([fund(), spend()]);
      const first = `${label(f)}/${label(u)}`;
      outcomes[first] = (outcomes[first] ?? 0) + 1;
      const [f2, u2] = await Promise.allSettled([fund(), spend()]);
      const replay = `${label(f2)}/${label(u2)}`;
      if (replay !== first) broken.push(`round ${round}: first ${first}, replay ${replay}`);
    }
    expect(outcomes['INSUFFICIENT_CREDITS/ok'] ?? 0, JSON.stringify(outcomes)).toBe(0);
    expect(broken).toEqual([]);
  });
});
