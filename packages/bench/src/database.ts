import { createDb, migrateToLatest, writeDefaultLowBalanceThreshold } from '@mana-credits/db';
import { sql } from 'kysely';
import pg from 'pg';

export interface BenchDatabase {
  url: string;
  drop(): Promise<void>;
}

async function onServer<T>(serverUrl: string, query: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    return (await client.query(query)).rows as T[];
  } finally {
    await client.end();
  }
}

/** A fresh database on the server of `serverUrl`, so a bench never touches real data; dropped at the end. */
export async function createBenchDatabase(serverUrl: string): Promise<BenchDatabase> {
  const name = `mana_credits_bench_${Date.now()}_${process.pid}`;
  await onServer(serverUrl, `create database ${name}`);
  const url = Object.assign(new URL(serverUrl), { pathname: `/${name}` }).toString();
  return {
    url,
    drop: async () => {
      await onServer(serverUrl, `drop database if exists ${name} with (force)`);
    },
  };
}

/** The server's version and the settings that move a write benchmark most. */
export async function postgresVersion(serverUrl: string): Promise<string> {
  const rows = await onServer<{ name: string; setting: string; unit: string | null }>(
    serverUrl,
    `select name, setting, unit from pg_settings
      where name in ('server_version', 'synchronous_commit', 'fsync', 'shared_buffers', 'max_connections')
      order by name`,
  );
  const value = (name: string) => rows.find((row) => row.name === name)?.setting ?? '?';
  const sharedMb = (Number(value('shared_buffers')) * 8) / 1024;
  return `${value('server_version')} (synchronous_commit=${value('synchronous_commit')}, fsync=${value('fsync')}, shared_buffers=${sharedMb} MB, max_connections=${value('max_connections')})`;
}

export interface Population {
  /** Users '1' … String(users), each with `credits`. */
  users: number;
  credits: number;
  hotUserId: string;
  guildId: string;
  guildMembers: readonly string[];
  /**
   * Users 'lots-1' … `lots-${lotsUsers}`, each with the same `credits` split into the ten lots of LOT_MIX
   * (issue 15's "10 lots of mixed priority/expiry"); every other account has one lot. 0 or absent: none.
   */
  lotsUsers?: number;
  /** A hot user with the ten lots of LOT_MIX (absent: none). */
  hotLotsUserId?: string;
}

/**
 * The ten lots of a 10-lot account: [priority, days until expiry (null: never)]. Mixed so that neither the
 * order of creation nor either key alone is the burn order (priority ascending, then the soonest expiry,
 * never-expiring last): the first lot burned is the priority-10 lot expiring in 200 days, the third one made.
 * The soonest expiry is 50 days away, so nothing lapses during a run and credits.covers never refuses.
 */
export const LOT_MIX: readonly (readonly [priority: number, days: number | null])[] = [
  [50, null],
  [10, 400],
  [10, 200],
  [90, null],
  [30, 100],
  [10, null],
  [70, 300],
  [30, 500],
  [100, 50],
  [50, 250],
];

/**
 * Migrates and seeds in a few set-based statements: every balance comes with its grant in the ledger, so
 * Σ ledger = balance holds from the start and can be checked at the end. The guild pool is seeded only where
 * the schema has it (it does since the initial migration; a later guild migration may add to it).
 */
export async function seed(url: string, population: Population): Promise<void> {
  const handle = await createDb({ databaseUrl: url, poolSize: 2 });
  try {
    await migrateToLatest(handle.db);
    const credits = population.credits;
    await handle.db.transaction().execute(async (trx) => {
      await sql`
        insert into credits.balances (user_id, balance, total_earned)
        select id, ${credits}::int8, ${credits}::int8
          from (select g::text as id from generate_series(1, ${population.users}::int) g
                union all select ${population.hotUserId}) ids`.execute(trx);
      // One lot per account, named by its grant (the ledger row that filled it).
      await sql`
        insert into credits.lots (account_kind, account_id, source, category, priority, amount, remaining)
        select 'user', user_id, 'grant', 'promotional', 10, balance, balance from credits.balances`.execute(
        trx,
      );
      const lotsIds = [
        ...Array.from({ length: population.lotsUsers ?? 0 }, (_, i) => `lots-${i + 1}`),
        ...(population.hotLotsUserId ? [population.hotLotsUserId] : []),
      ];
      if (lotsIds.length > 0) {
        // Ten lots each (LOT_MIX), the credits split evenly; next_lot_expiry is the soonest of their expiries.
        const share = Math.floor(credits / LOT_MIX.length);
        const total = share * LOT_MIX.length;
        const priorities = LOT_MIX.map(([priority]) => priority);
        const days = LOT_MIX.map(([, days]) => days);
        const soonest = Math.min(...days.filter((d): d is number => d !== null));
        await sql`
          insert into credits.balances (user_id, balance, total_earned, next_lot_expiry)
          select id, ${total}::int8, ${total}::int8, now() + make_interval(days => ${soonest}::int)
            from unnest(${lotsIds}::text[]) id`.execute(trx);
        await sql`
          insert into credits.lots
            (account_kind, account_id, source, category, priority, amount, remaining, expires_at)
          select 'user', u.id, 'grant', 'promotional', m.priority, ${share}::int8, ${share}::int8,
                 now() + make_interval(days => m.days)
            from unnest(${lotsIds}::text[]) u(id)
           cross join unnest(${priorities}::int[], ${days}::int[]) m(priority, days)`.execute(trx);
      }
      // Each lot's grant row; an account's rows add up in order, so every row's balance_after is right.
      await sql`
        insert into credits.transactions
          (user_id, type, amount, balance_before, balance_after, available_after, description, lot_ids, lot_amounts)
        select account_id, 'grant', amount, total - amount, total, total, 'bench seed', array[id], array[amount]
          from (select l.*, sum(amount) over (partition by account_id order by id) as total
                  from credits.lots l where account_kind = 'user') l`.execute(trx);
      await sql`
        insert into credits.guild_pools (organization_id, balance, total_funded)
        values (${population.guildId}, ${credits}::int8, ${credits}::int8)`.execute(trx);
      await sql`
        with lot as (
          insert into credits.lots (account_kind, account_id, source, category, priority, amount, remaining)
          values ('guild', ${population.guildId}, 'funding', 'promotional', 10, ${credits}::int8, ${credits}::int8)
          returning id, amount
        )
        insert into credits.guild_transactions
          (organization_id, user_id, type, amount, balance_before, balance_after, description, lot_ids, lot_amounts)
        select ${population.guildId}, ${population.hotUserId}, 'funding', amount, 0, amount, 'bench seed',
               array[id], array[amount]
          from lot`.execute(trx);
    });
    // Vacuumed as well as analysed: otherwise autovacuum picks the freshly written tables up during the first steps.
    await sql`vacuum (analyze)`.execute(handle.db);
  } finally {
    await handle.close();
  }
}

export interface LedgerCheck {
  accounts: number;
  mismatched: number;
  ledgerRows: number;
  /** Accounts whose lots do not add up: Σ remaining ≠ balance or Σ pinned ≠ reserved. */
  lotsMismatched: number;
}

/**
 * Σ ledger = balance for every user and pool after all the load, and their lots add up to it (Σ remaining =
 * balance, Σ pinned = reserved): the bench must not lose a credit either.
 */
export async function checkLedger(url: string): Promise<LedgerCheck> {
  const handle = await createDb({ databaseUrl: url, poolSize: 1 });
  try {
    const { rows } = await sql<LedgerCheck>`
      with users as (
        select b.balance = coalesce(sum(t.amount), 0) as ok
          from credits.balances b left join credits.transactions t on t.user_id = b.user_id
         group by b.user_id, b.balance
      ), pools as (
        select p.balance = coalesce(sum(t.amount), 0) as ok
          from credits.guild_pools p left join credits.guild_transactions t on t.organization_id = p.organization_id
         group by p.organization_id, p.balance
      ), lots as (
        select account_kind, account_id, sum(remaining) as remaining, sum(pinned) as pinned
          from credits.lots group by account_kind, account_id
      ), lots_ok as (
        select b.balance = coalesce(l.remaining, 0) and b.reserved = coalesce(l.pinned, 0) as ok
          from credits.balances b left join lots l on l.account_kind = 'user' and l.account_id = b.user_id
        union all
        select p.balance = coalesce(l.remaining, 0) and p.reserved = coalesce(l.pinned, 0)
          from credits.guild_pools p left join lots l on l.account_kind = 'guild' and l.account_id = p.organization_id
      ), every as (select ok from users union all select ok from pools)
      select count(*)::int as accounts, count(*) filter (where not ok)::int as mismatched,
             (select count(*) filter (where not ok) from lots_ok)::int as "lotsMismatched",
             ((select count(*) from credits.transactions) + (select count(*) from credits.guild_transactions))::int
               as "ledgerRows"
        from every`.execute(handle.db);
    return rows[0]!;
  } finally {
    await handle.close();
  }
}

/** `--alerts`: the default low-balance threshold the ledger triggers read (what LOW_BALANCE_THRESHOLD sets). */
export async function setDefaultThreshold(url: string, threshold: number): Promise<void> {
  const handle = await createDb({ databaseUrl: url, poolSize: 1 });
  try {
    await writeDefaultLowBalanceThreshold(handle.db, threshold);
  } finally {
    await handle.close();
  }
}
