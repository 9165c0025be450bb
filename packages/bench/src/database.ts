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
}

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
      await sql`
        insert into credits.transactions
          (user_id, type, amount, balance_before, balance_after, available_after, description, lot_ids, lot_amounts)
        select account_id, 'grant', amount, 0, amount, amount, 'bench seed', array[id], array[amount]
          from credits.lots where account_kind = 'user'`.execute(trx);
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
    await sql`analyze`.execute(handle.db);
  } finally {
    await handle.close();
  }
}

export interface LedgerCheck {
  accounts: number;
  mismatched: number;
  ledgerRows: number;
}

/** Σ ledger = balance for every user and pool after all the load: the bench must not lose a credit either. */
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
      ), every as (select ok from users union all select ok from pools)
      select count(*)::int as accounts, count(*) filter (where not ok)::int as mismatched,
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
