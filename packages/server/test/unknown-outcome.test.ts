import { randomUUID } from 'node:crypto';
import { TRPCClientError } from '@trpc/client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { expectLedgerConsistent } from './helpers/invariants.ts';
import { type Client, newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';
import { TcpFaultProxy } from './helpers/tcp-proxy.ts';

/**
 * Issue 13: a connection lost after Postgres committed leaves the outcome unknown. Such a call must never be
 * run again as if nothing was written (only keyed work may be replayed), and its caller must be told the
 * outcome is unknown (SERVICE_UNAVAILABLE / OUTCOME_UNKNOWN), never a success it did not get nor a plain 500.
 * A TCP proxy between the server and Postgres cuts connections at the moment Postgres starts to answer.
 */
const databaseUrl = process.env.DATABASE_URL;

describe.skipIf(!databaseUrl)('unknown outcomes (needs DATABASE_URL: PGlite has no socket to cut)', () => {
  let proxy: TcpFaultProxy;
  let server: TestServer;
  let internal: Client;

  beforeAll(async () => {
    const target = new URL(databaseUrl!);
    proxy = await TcpFaultProxy.start({ host: target.hostname, port: Number(target.port || 5432) });
    server = await startTestServer(
      { MEMBERSHIP_CACHE_SECONDS: '0', RESERVATION_SWEEP_SECONDS: '3600', GIFT_EXPIRY_SWEEP_SECONDS: '0' },
      { proxy },
    );
    server.auth.expectedServiceKey = SERVICE_KEY;
    internal = server.internalClient();
  });
  afterEach(async () => {
    proxy.cutResponses(0);
    await expectLedgerConsistent(server.db);
  });
  afterAll(async () => {
    proxy?.cutResponses(0);
    await server?.close();
    await proxy?.close();
  });

  const N = 40;
  const AMOUNT = 10;

  /** Runs `calls` concurrently while the proxy cuts each answer with probability `p`, then heals it. */
  async function underCuts<T>(p: number, calls: (() => Promise<T>)[]): Promise<PromiseSettledResult<T>[]> {
    proxy.cutResponses(p);
    try {
      return await Promise.allSettled(calls.map((call) => call()));
    } finally {
      proxy.cutResponses(0);
    }
  }

  /** credits_debited_total of one app, summed by outcome. */
  async function debitedByOutcome(app: string): Promise<Record<string, number>> {
    const byOutcome: Record<string, number> = {};
    for (const { labels, value } of (await server.deps.metrics.creditsDebited.get()).values) {
      if (labels.app === app)
        byOutcome[String(labels.outcome)] = (byOutcome[String(labels.outcome)] ?? 0) + value;
    }
    return byOutcome;
  }

  /** Every failure must be the retryable "outcome unknown" answer; returns how many there were. */
  function expectOnlyUnknownFailures(outcomes: PromiseSettledResult<unknown>[]): number {
    const failures = outcomes.flatMap((o) => (o.status === 'rejected' ? [o.reason as unknown] : []));
    for (const error of failures) {
      expect(error).toBeInstanceOf(TRPCClientError);
      const { data, message } = error as { data?: Record<string, unknown>; message: string };
      expect({ code: data?.code, reason: data?.reason, httpStatus: data?.httpStatus }).toEqual({
        code: 'SERVICE_UNAVAILABLE',
        reason: 'OUTCOME_UNKNOWN',
        httpStatus: 503,
      });
      expect(message).toMatch(/idempotency key/i);
      expect(message).not.toMatch(/select|insert|update|credits\.|at .*\.ts/i);
    }
    return failures.length;
  }

  async function usageRows(userId: string) {
    return server.db
      .selectFrom('credits.transactions')
      .select(['id', 'amount', 'idempotency_key'])
      .where('user_id', '=', userId)
      .where('type', '=', 'usage')
      .execute();
  }

  async function balanceOf(userId: string) {
    const row = await server.db
      .selectFrom('credits.balances')
      .select('balance')
      .where('user_id', '=', userId)
      .executeTakeFirstOrThrow();
    return row.balance;
  }

  /**
   * Keyless debits: at most one ledger row per call, every success names its own row with its amount, the
   * balance went down by exactly what the rows say.
   */
  async function expectKeylessDebits(
    userId: string,
    funded: number,
    calls: number,
    outcomes: PromiseSettledResult<{ transactionId: string }>[],
  ) {
    const rows = await usageRows(userId);
    expect(rows.length).toBeLessThanOrEqual(calls);
    const byId = new Map(rows.map((row) => [row.id, row]));
    const answered = outcomes.flatMap((o) => (o.status === 'fulfilled' ? [o.value.transactionId] : []));
    expect(new Set(answered).size).toBe(answered.length);
    for (const id of answered) expect(byId.get(id)?.amount).toBe(-AMOUNT);
    for (const row of rows) expect(row.amount).toBe(-AMOUNT);
    expect(funded - (await balanceOf(userId))).toBe(rows.length * AMOUNT);
    return { rows: rows.length, answered: answered.length };
  }

  const keylessUse = (userId: string) => () =>
    internal.internal.credits.use.mutate({ userId, amount: AMOUNT, appId: 'fault', description: 'keyless' });

  describe('coalesced keyless debits of one account', () => {
    it('every answer cut: nothing is written twice, every caller hears OUTCOME_UNKNOWN', async () => {
      const funded = N * AMOUNT * 3;
      const { id: userId } = await server.fundedUser(funded);
      const outcomes = await underCuts(
        1,
        Array.from({ length: N }, () => keylessUse(userId)),
      );
      await expectKeylessDebits(userId, funded, N, outcomes);
      expect(expectOnlyUnknownFailures(outcomes)).toBe(N);
    });

    it('some answers cut, several rounds: at most one row per call, each success its own row', async () => {
      const rounds = 4;
      const funded = rounds * N * AMOUNT * 3;
      const { id: userId } = await server.fundedUser(funded);
      const all: PromiseSettledResult<{ transactionId: string }>[] = [];
      for (let round = 0; round < rounds; round++) {
        all.push(
          ...(await underCuts(
            0.3,
            Array.from({ length: N }, () => keylessUse(userId)),
          )),
        );
      }
      const { answered } = await expectKeylessDebits(userId, funded, rounds * N, all);
      expect(answered + expectOnlyUnknownFailures(all)).toBe(rounds * N);
      // Not degenerate: some answers arrived (all of them cut has a chance of about 0.3^8).
      expect(answered).toBeGreaterThan(0);
    });
  });

  describe('keyless debits of several accounts at once', () => {
    it('no account is debited more often than it was called', async () => {
      const accounts = 4;
      const perAccount = N / accounts;
      const funded = perAccount * AMOUNT * 10;
      const users = await Promise.all(Array.from({ length: accounts }, () => server.fundedUser(funded)));
      const rounds = [1, 0.3, 0.3];
      const mine: PromiseSettledResult<{ transactionId: string }>[][] = users.map(() => []);
      for (const p of rounds) {
        const calls = users.flatMap(({ id }) => Array.from({ length: perAccount }, () => keylessUse(id)));
        const outcomes = await underCuts(p, calls);
        // Calls of account i sit at i*perAccount … (i+1)*perAccount - 1.
        users.forEach((_, i) => {
          mine[i]!.push(...outcomes.slice(i * perAccount, (i + 1) * perAccount));
        });
      }
      for (const [i, { id }] of users.entries()) {
        await expectKeylessDebits(id, funded, rounds.length * perAccount, mine[i]!);
      }
      for (const outcomes of mine) expectOnlyUnknownFailures(outcomes);
    });
  });

  describe('answers over REST and for reads', () => {
    it('a cut write answers HTTP 503 OUTCOME_UNKNOWN, a cut read 503 DATABASE_UNAVAILABLE, nothing internal', async () => {
      const { id: userId } = await server.fundedUser(100);
      const headers = {
        'content-type': 'application/json',
        'x-service-key': SERVICE_KEY,
        'x-app-id': 'fault',
      };
      proxy.cutResponses(1);
      try {
        const write = await fetch(`${server.url}/api/v1/internal/credits/use`, {
          method: 'POST',
          headers,
          body: JSON.stringify({ userId, amount: AMOUNT, appId: 'fault', description: 'rest' }),
        });
        const read = await fetch(`${server.url}/api/v1/internal/credits/balance/${userId}`, { headers });
        type ErrorBody = { error?: { reason?: string } };
        const [writeBody, readBody] = [(await write.json()) as ErrorBody, (await read.json()) as ErrorBody];
        expect({ status: write.status, reason: writeBody.error?.reason }).toEqual({
          status: 503,
          reason: 'OUTCOME_UNKNOWN',
        });
        expect({ status: read.status, reason: readBody.error?.reason }).toEqual({
          status: 503,
          reason: 'DATABASE_UNAVAILABLE',
        });
        for (const body of [writeBody, readBody]) {
          expect(JSON.stringify(body)).not.toMatch(/select|insert|credits\.|Connection terminated|\.ts:/i);
        }
      } finally {
        proxy.cutResponses(0);
      }
      expect((await usageRows(userId)).length).toBeLessThanOrEqual(1);
    });
  });

  describe('keyed debits', () => {
    it('retrying every unknown answer with its key after the proxy heals applies each key exactly once', async () => {
      const funded = N * AMOUNT * 3;
      const { id: userId } = await server.fundedUser(funded);
      const keys = Array.from({ length: N }, () => `k-${randomUUID()}`);
      const useWith = (idempotencyKey: string) => () =>
        internal.internal.credits.use.mutate({
          userId,
          amount: AMOUNT,
          appId: 'fault',
          description: 'keyed',
          idempotencyKey,
        });
      const before = await debitedByOutcome('fault');
      const first = await underCuts(0.5, keys.map(useWith));
      const unknown = expectOnlyUnknownFailures(first);
      const answers = await Promise.all(
        keys.map((key, i) => {
          const o = first[i]!;
          return o.status === 'fulfilled' ? o.value : useWith(key)();
        }),
      );
      const rows = await usageRows(userId);
      expect(rows.length).toBe(N);
      const rowOfKey = new Map(rows.map((row) => [row.idempotency_key, row.id]));
      for (const [i, key] of keys.entries()) expect(answers[i]!.transactionId).toBe(rowOfKey.get(key));
      expect(funded - (await balanceOf(userId))).toBe(N * AMOUNT);
      // Metrics: each key's debit once as ok or (its lost first answer committed) as replay; the lost answers
      // as what they asked, under unknown.
      const after = await debitedByOutcome('fault');
      const delta = (outcome: string) => (after[outcome] ?? 0) - (before[outcome] ?? 0);
      expect(delta('ok') + delta('replay')).toBe(N * AMOUNT);
      expect(delta('unknown')).toBe(unknown * AMOUNT);
    });
  });

  describe('internal.credits.useBatch', () => {
    it('no item is applied twice; an unknown batch is answered OUTCOME_UNKNOWN and replays whole', async () => {
      const guildId = `guild-${randomUUID()}`;
      await internal.internal.guildPool.init.mutate({ guildId });
      const owner = newUser();
      server.auth.setRole(guildId, owner.id, 'owner');
      await internal.internal.credits.grant.mutate({
        userId: owner.id,
        amount: 100_000,
        reason: 'test funds',
        idempotencyKey: `fund-${randomUUID()}`,
      });
      await (await server.userClient(owner)).guild.fund.mutate({ guildId, amount: 50_000 });
      const users = await Promise.all([1, 2, 3].map(() => server.fundedUser(100_000)));
      const batches = Array.from({ length: 12 }, () => ({
        items: [
          ...users.map(({ id }) => ({
            userId: id,
            amount: AMOUNT,
            appId: 'fault',
            description: 'batch item',
            idempotencyKey: `b-${randomUUID()}`,
          })),
          {
            userId: owner.id,
            guildId,
            amount: AMOUNT,
            appId: 'fault',
            description: 'batch pool item',
            idempotencyKey: `g-${randomUUID()}`,
          },
        ],
      }));
      const useBatch = (input: (typeof batches)[number]) => () =>
        internal.internal.credits.useBatch.mutate(input);
      for (const p of [1, 0.3]) {
        const first = await underCuts(p, batches.map(useBatch));
        expectOnlyUnknownFailures(first);
      }
      // Healed: every batch again, with the same keys; each item answers from its one ledger row.
      const answers = await Promise.all(batches.map((input) => useBatch(input)()));
      const personal = await server.db
        .selectFrom('credits.transactions')
        .select(['id', 'idempotency_key'])
        .where(
          'user_id',
          'in',
          users.map(({ id }) => id),
        )
        .where('type', '=', 'usage')
        .execute();
      const pooled = await server.db
        .selectFrom('credits.guild_transactions')
        .select(['id', 'idempotency_key'])
        .where('organization_id', '=', guildId)
        .where('type', '=', 'usage')
        .execute();
      expect(personal.length).toBe(batches.length * users.length);
      expect(pooled.length).toBe(batches.length);
      const rowOfKey = new Map([...personal, ...pooled].map((row) => [row.idempotency_key, row.id]));
      batches.forEach((input, b) => {
        input.items.forEach((item, i) => {
          const result = answers[b]!.results[i]!;
          expect(result.ok).toBe(true);
          expect(result.ok && result.transactionId).toBe(rowOfKey.get(item.idempotencyKey));
        });
      });
      for (const { id } of users) {
        expect(100_000 - (await balanceOf(id))).toBe(batches.length * AMOUNT);
      }
    });
  });

  describe('guild.use', () => {
    it('keyless pool spends: at most one row per call, each success its own row', async () => {
      const guildId = `guild-${randomUUID()}`;
      await internal.internal.guildPool.init.mutate({ guildId });
      const owner = newUser();
      server.auth.setRole(guildId, owner.id, 'owner');
      const funded = 3 * N * AMOUNT * 2;
      await internal.internal.credits.grant.mutate({
        userId: owner.id,
        amount: funded,
        reason: 'test funds',
        idempotencyKey: `fund-${randomUUID()}`,
      });
      const ownerClient = await server.userClient(owner);
      await ownerClient.guild.fund.mutate({ guildId, amount: funded });
      const spend = () =>
        ownerClient.guild.use.mutate({
          guildId,
          amount: AMOUNT,
          appId: 'fault',
          description: 'pool keyless',
        });
      const all: PromiseSettledResult<{ transactionId: string }>[] = [];
      for (const p of [1, 0.3, 0.3])
        all.push(
          ...(await underCuts(
            p,
            Array.from({ length: N }, () => spend),
          )),
        );
      const rows = await server.db
        .selectFrom('credits.guild_transactions')
        .select(['id', 'amount'])
        .where('organization_id', '=', guildId)
        .where('type', '=', 'usage')
        .execute();
      expect(rows.length).toBeLessThanOrEqual(3 * N);
      const byId = new Map(rows.map((row) => [row.id, row]));
      const answered = all.flatMap((o) => (o.status === 'fulfilled' ? [o.value.transactionId] : []));
      expect(new Set(answered).size).toBe(answered.length);
      for (const id of answered) expect(byId.get(id)?.amount).toBe(-AMOUNT);
      expect(answered.length + expectOnlyUnknownFailures(all)).toBe(3 * N);
      const pool = await server.db
        .selectFrom('credits.guild_pools')
        .select('balance')
        .where('organization_id', '=', guildId)
        .executeTakeFirstOrThrow();
      expect(funded - pool.balance).toBe(rows.length * AMOUNT);
    });

    it('keyed pool spends retried with their keys after the proxy heals apply once each', async () => {
      const guildId = `guild-${randomUUID()}`;
      await internal.internal.guildPool.init.mutate({ guildId });
      const owner = newUser();
      server.auth.setRole(guildId, owner.id, 'owner');
      await internal.internal.credits.grant.mutate({
        userId: owner.id,
        amount: N * AMOUNT,
        reason: 'test funds',
        idempotencyKey: `fund-${randomUUID()}`,
      });
      const ownerClient = await server.userClient(owner);
      await ownerClient.guild.fund.mutate({ guildId, amount: N * AMOUNT });
      const keys = Array.from({ length: N }, () => `gk-${randomUUID()}`);
      const spend = (idempotencyKey: string) => () =>
        ownerClient.guild.use.mutate({
          guildId,
          amount: AMOUNT,
          appId: 'fault',
          description: 'pool keyed',
          idempotencyKey,
        });
      const first = await underCuts(0.5, keys.map(spend));
      expectOnlyUnknownFailures(first);
      const answers = await Promise.all(
        keys.map((key, i) => {
          const o = first[i]!;
          return o.status === 'fulfilled' ? o.value : spend(key)();
        }),
      );
      const rows = await server.db
        .selectFrom('credits.guild_transactions')
        .select(['id', 'idempotency_key'])
        .where('organization_id', '=', guildId)
        .where('type', '=', 'usage')
        .execute();
      expect(rows.length).toBe(N);
      const rowOfKey = new Map(rows.map((row) => [row.idempotency_key, row.id]));
      for (const [i, key] of keys.entries()) expect(answers[i]!.transactionId).toBe(rowOfKey.get(key));
    });
  });
});
