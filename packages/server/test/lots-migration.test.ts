import { randomUUID } from 'node:crypto';
import { createDb, type Database, listLots, migrations } from '@mana-credits/db';
import type { FastifyInstance } from 'fastify';
import { type Kysely, Migrator, sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.ts';
import { configFrom } from '../src/config.ts';
import { createAppDeps } from '../src/deps.ts';
import { reconcile } from '../src/domain/audit/reconcile.ts';
import { createTestDataDir, type TestDatabase } from './helpers/database.ts';
import { type Client, clientFor, SERVICE_KEY } from './helpers/server.ts';

// The lots migration (2026_12_03_0800_lots) on a database with history: migrated step by step to the release
// before lots, given balances, purchases, clawbacks, a pool and an open hold as that release wrote them, then
// started by the real server (which migrates to the latest on start). Every balance must have become lots
// without expiry — paid up to what the account bought net of clawbacks, promotional for the rest — open holds
// must pin them in burn order, and the full reconcile (lot checks included) must hold before and after the
// migrated lots are spent.

const BEFORE_LOTS = '2026_12_03_0600_admin_actions';

let database: TestDatabase;
let app: FastifyInstance;
let client: Client;
let db: Kysely<Database>;

const guildId = `guild-${randomUUID()}`;
const users = {
  buyer: 'buyer',
  clawed: 'clawed',
  granted: 'granted',
  spent: 'spent',
  empty: 'empty',
  holder: 'holder',
  funder: 'funder',
};
let holdId: string;

interface Entry {
  type: 'purchase' | 'grant' | 'usage' | 'clawback' | 'guild_funding';
  amount: number;
}

/** A user's ledger as the release before lots wrote it (chained balances, system keys on purchase rows). */
async function seedUser(handle: Kysely<Database>, userId: string, entries: Entry[], reserved = 0) {
  let balance = 0;
  let earned = 0;
  let spent = 0;
  let purchaseId: string | undefined;
  let second = 0;
  for (const entry of entries) {
    second += 1;
    const at = new Date(Date.UTC(2026, 0, 1, 0, 0, second)).toISOString();
    let key: string | null = null;
    let metadata: Record<string, string> | null = null;
    if (entry.type === 'purchase') {
      purchaseId = randomUUID();
      await sql`insert into credits.purchases (id, user_id, credits, price_euro_cents, status, completed_at)
                values (${purchaseId}::uuid, ${userId}, ${entry.amount}, 999, 'completed', ${at}::timestamptz)`.execute(
        handle,
      );
      key = `\x1fpurchase:${purchaseId}`;
      metadata = { purchaseId };
    }
    if (entry.type === 'clawback') {
      key = `\x1fclawback:${purchaseId}:1`;
      metadata = { purchaseId: purchaseId! };
      await sql`update credits.purchases set clawed_back_credits = ${-entry.amount} where id = ${purchaseId!}::uuid`.execute(
        handle,
      );
    }
    if (entry.type === 'guild_funding') metadata = { guildId };
    await sql`
      insert into credits.transactions
        (user_id, type, amount, balance_before, balance_after, available_after, description, idempotency_key,
         metadata, guild_id, created_at, completed_at)
      values (${userId}, ${entry.type}, ${entry.amount}, ${balance}, ${balance + entry.amount},
              ${balance + entry.amount}, ${entry.type}, ${key}, ${metadata ? JSON.stringify(metadata) : null}::jsonb,
              ${entry.type === 'guild_funding' ? guildId : null}, ${at}::timestamptz, ${at}::timestamptz)`.execute(
      handle,
    );
    balance += entry.amount;
    if (entry.amount > 0) earned += entry.amount;
    else spent -= entry.amount;
  }
  await sql`insert into credits.balances (user_id, balance, reserved, total_earned, total_spent)
            values (${userId}, ${balance}, ${reserved}, ${earned}, ${spent})`.execute(handle);
}

beforeAll(async () => {
  database = await createTestDataDir({ empty: true });
  const handle = await createDb(
    database.url ? { databaseUrl: database.url, poolSize: 2 } : { dataDir: database.env.DATA_DIR! },
  );
  try {
    const migrator = new Migrator({ db: handle.db, provider: { getMigrations: async () => migrations } });
    const { error } = await migrator.migrateTo(BEFORE_LOTS);
    if (error) throw error;
    const { rows } = await sql<{ name: string }>`
      select name from kysely_migration order by name desc limit 1`.execute(handle.db);
    expect(rows[0]?.name).toBe(BEFORE_LOTS);

    const h = handle.db;
    await seedUser(h, users.buyer, [
      { type: 'purchase', amount: 100 },
      { type: 'grant', amount: 50 },
      { type: 'usage', amount: -30 },
    ]);
    await seedUser(h, users.clawed, [
      { type: 'purchase', amount: 100 },
      { type: 'clawback', amount: -80 },
      { type: 'grant', amount: 10 },
    ]);
    await seedUser(h, users.granted, [{ type: 'grant', amount: 40 }]);
    await seedUser(h, users.spent, [
      { type: 'purchase', amount: 50 },
      { type: 'usage', amount: -45 },
    ]);
    await seedUser(h, users.empty, [
      { type: 'grant', amount: 10 },
      { type: 'usage', amount: -10 },
    ]);
    await seedUser(
      h,
      users.holder,
      [
        { type: 'purchase', amount: 60 },
        { type: 'grant', amount: 30 },
      ],
      50,
    );
    holdId = randomUUID();
    await sql`
      insert into credits.reservations
        (id, user_id, amount, app_id, description, idempotency_key, request_hash, available_after, expires_at)
      values (${holdId}::uuid, ${users.holder}, 50, 'llm', 'open before lots', 'hold-1', 'hash', 40,
              now() + interval '1 hour')`.execute(h);
    await seedUser(h, users.funder, [
      { type: 'grant', amount: 100 },
      { type: 'guild_funding', amount: -70 },
    ]);
    await sql`insert into credits.guild_pools (organization_id, balance, total_funded) values (${guildId}, 70, 70)`.execute(
      h,
    );
    await sql`
      insert into credits.guild_transactions
        (organization_id, user_id, type, amount, balance_before, balance_after, available_after, description)
      values (${guildId}, ${users.funder}, 'funding', 70, 0, 70, 70, 'Pool funding')`.execute(h);
  } finally {
    await handle.close();
  }

  // The real server on that database: it runs the lots migration (and the SQL function files) on start.
  const config = configFrom({
    MANA_CORE_SERVICE_KEY: SERVICE_KEY,
    MANA_CORE_AUTH_URL: 'http://127.0.0.1:9',
    PORT: '0',
    HOST: '127.0.0.1',
    LOT_EXPIRY_SWEEP_SECONDS: '0',
    RESERVATION_SWEEP_SECONDS: '3600',
    DATABASE_URL: '',
    ...database.env,
  });
  app = await buildApp(await createAppDeps(config), { closeDepsOnClose: true, logger: false });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  const url = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  client = clientFor(url, () => ({ 'x-service-key': SERVICE_KEY }));
  db = app.deps.db;
});

afterAll(async () => {
  if (app) {
    const report = await reconcile(db);
    await app.close();
    expect(report.checks.filter((check) => !check.ok)).toEqual([]);
  }
  await database?.drop();
});

const lotsOf = async (userId: string) => (await client.internal.credits.lots.query({ userId })).items;
const shape = (lots: Awaited<ReturnType<typeof lotsOf>>) =>
  lots.map((lot) => [
    lot.source,
    lot.category,
    lot.priority,
    lot.amount,
    lot.remaining,
    lot.held,
    lot.expiresAt,
  ]);

describe('the lots migration on a database with history', () => {
  it('each balance became lots without expiry: paid up to what was bought (net of clawbacks), promotional for the rest', async () => {
    expect(shape(await lotsOf(users.buyer))).toEqual([
      ['grant', 'promotional', 10, 20, 20, 0, null],
      ['purchase', 'paid', 50, 100, 100, 0, null],
    ]);
    expect(shape(await lotsOf(users.clawed))).toEqual([
      ['grant', 'promotional', 10, 10, 10, 0, null],
      ['purchase', 'paid', 50, 20, 20, 0, null],
    ]);
    expect(shape(await lotsOf(users.granted))).toEqual([['grant', 'promotional', 10, 40, 40, 0, null]]);
    expect(shape(await lotsOf(users.spent))).toEqual([['purchase', 'paid', 50, 5, 5, 0, null]]);
    expect(await lotsOf(users.empty)).toEqual([]);
    expect(await client.internal.credits.balance.query({ userId: users.buyer })).toMatchObject({
      balance: 120,
      byCategory: { paid: 100, promotional: 20 },
      expiringSoon: null,
    });
    // The pool's balance became one promotional funding lot.
    expect(
      (await listLots(db, 'guild', guildId)).map((lot) => [
        lot.source,
        lot.category,
        lot.amount,
        lot.expiresAt,
      ]),
    ).toEqual([['funding', 'promotional', 70, null]]);
    // Opening lots: no ledger row of their own, and nothing expires.
    const { rows } = await sql<{ lots: number; opening: number; expiring: number }>`
      select count(*)::int as lots, count(*) filter (where opening)::int as opening,
             count(*) filter (where expires_at is not null)::int as expiring from credits.lots`.execute(db);
    expect(rows[0]).toEqual({ lots: 10, opening: 10, expiring: 0 });
  });

  it('an open hold pins the opening lots in burn order; its commit consumes what it pinned', async () => {
    expect(shape(await lotsOf(users.holder))).toEqual([
      ['grant', 'promotional', 10, 30, 30, 30, null],
      ['purchase', 'paid', 50, 60, 60, 20, null],
    ]);
    expect(await client.internal.credits.balance.query({ userId: users.holder })).toMatchObject({
      balance: 40,
      reserved: 50,
      byCategory: { paid: 40, promotional: 0 },
    });
    const [promo, paid] = await lotsOf(users.holder);
    const committed = await client.internal.credits.commit.mutate({ reservationId: holdId, amount: 45 });
    expect(committed).toMatchObject({ committed: 45, released: 5, balance: 45 });
    const entry = await client.internal.credits.transaction.query({
      userId: users.holder,
      transactionId: committed.transactionId,
    });
    expect(entry.lots).toEqual([
      { lotId: promo!.id, amount: 30 },
      { lotId: paid!.id, amount: 15 },
    ]);
    expect(shape(await lotsOf(users.holder))).toEqual([['purchase', 'paid', 50, 60, 45, 0, null]]);
  });

  it('the migrated lots are spent in burn order and the full reconcile holds', async () => {
    const before = await reconcile(db);
    expect(before.checks.filter((check) => !check.ok)).toEqual([]);
    const [promo, paid] = await lotsOf(users.buyer);
    const used = await client.internal.credits.use.mutate({
      userId: users.buyer,
      amount: 30,
      appId: 'chat',
      description: 'after the migration',
    });
    expect(used.balance).toBe(90);
    const entry = await client.internal.credits.transaction.query({
      userId: users.buyer,
      transactionId: used.transactionId,
    });
    expect(entry.lots).toEqual([
      { lotId: promo!.id, amount: 20 },
      { lotId: paid!.id, amount: 10 },
    ]);
    // A refund goes back to the opening lots it came from.
    await client.internal.credits.refund.mutate({
      userId: users.buyer,
      transactionId: used.transactionId,
      amount: 25,
      description: 'partly refunded',
      idempotencyKey: 'refund-1',
    });
    expect(shape(await lotsOf(users.buyer))).toEqual([
      ['grant', 'promotional', 10, 20, 20, 0, null],
      ['purchase', 'paid', 50, 100, 95, 0, null],
    ]);
    const after = await reconcile(db);
    expect(after.checks.filter((check) => !check.ok)).toEqual([]);
  });
});
