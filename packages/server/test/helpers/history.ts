import { randomUUID } from 'node:crypto';
import type { Database } from '@mana-credits/db';
import { type Kysely, sql } from 'kysely';

/**
 * Ledger history in the past, for the history reads: the service dates every entry by the database clock,
 * so a test writes dated rows itself — consistent ones (chained balances, the balance row, the counters),
 * so the closing reconcile of the file still holds.
 */

export interface SeedEntry {
  at: string;
  type: 'grant' | 'usage' | 'refund';
  /** Signed: negative for usage. */
  amount: number;
  appId?: string | null;
  description?: string;
  /** For a refund: the index (in this seed) of the usage entry it refunds. */
  refunds?: number;
}

/** Posts `entries` (in date order) for a user with no ledger yet, in one statement; returns their ids. */
export async function seedPersonalHistory(
  db: Kysely<Database>,
  userId: string,
  entries: readonly SeedEntry[],
): Promise<string[]> {
  const ids = entries.map(() => randomUUID());
  const afters: number[] = [];
  let balance = 0;
  let earned = 0;
  let spent = 0;
  for (const entry of entries) {
    balance += entry.amount;
    afters.push(balance);
    if (entry.type === 'grant') earned += entry.amount;
    else spent -= entry.amount;
  }
  if (entries.length > 0) {
    await sql`
      insert into credits.transactions
        (id, user_id, type, amount, balance_before, balance_after, available_after, app_id, description,
         reference_transaction_id, created_at, completed_at)
      select e.id, ${userId}, e.type, e.amount, e.after - e.amount, e.after, e.after, e.app_id, e.description,
             e.reference, e.at, e.at
        from unnest(${ids}::uuid[], ${entries.map((e) => e.type)}::text[], ${entries.map((e) => e.amount)}::int8[],
                    ${afters}::int8[], ${entries.map((e) => e.appId ?? null)}::text[],
                    ${entries.map((e) => e.description ?? e.type)}::text[],
                    ${entries.map((e) => (e.refunds === undefined ? null : ids[e.refunds]))}::uuid[],
                    ${entries.map((e) => e.at)}::timestamptz[])
             as e(id, type, amount, after, app_id, description, reference, at)`.execute(db);
  }
  await sql`
    insert into credits.balances (user_id, balance, total_earned, total_spent)
    values (${userId}, ${balance}, ${earned}, ${spent})`.execute(db);
  await openingLot(db, 'user', userId, balance);
  return ids;
}

export interface GuildSeedSpend {
  at: string;
  userId: string;
  amount: number;
  appId: string;
}

/**
 * A guild pool funded once by `funderId` (a personal grant and guild_funding debit, the pool's funding
 * entry) at `fundedAt`, then the spends: guild usage entries with their day counters.
 */
export async function seedGuildHistory(
  db: Kysely<Database>,
  guildId: string,
  funderId: string,
  fundedAt: string,
  spends: readonly GuildSeedSpend[],
): Promise<void> {
  const funding = spends.reduce((sum, spend) => sum + spend.amount, 0) + 1000;
  await seedPersonalHistory(db, funderId, []);
  await sql`
    with grant_row as (
      insert into credits.transactions (user_id, type, amount, balance_before, balance_after, description, created_at)
      values (${funderId}, 'grant', ${funding}, 0, ${funding}, 'seed', ${fundedAt}::timestamptz - interval '1 second')
    )
    insert into credits.transactions (user_id, type, amount, balance_before, balance_after, description, guild_id, created_at)
    values (${funderId}, 'guild_funding', ${-funding}, ${funding}, 0, 'seed', ${guildId}, ${fundedAt})`.execute(
    db,
  );
  await sql`update credits.balances set total_earned = ${funding}, total_spent = ${funding} where user_id = ${funderId}`.execute(
    db,
  );
  let balance = funding;
  await sql`
    insert into credits.guild_transactions
      (organization_id, user_id, type, amount, balance_before, balance_after, description, created_at)
    values (${guildId}, ${funderId}, 'funding', ${funding}, 0, ${funding}, 'seed', ${fundedAt})`.execute(db);
  for (const spend of spends) {
    const before = balance;
    balance -= spend.amount;
    await sql`
      with entry as (
        insert into credits.guild_transactions
          (organization_id, user_id, type, amount, balance_before, balance_after, available_after, app_id,
           description, created_at)
        values (${guildId}, ${spend.userId}, 'usage', ${-spend.amount}, ${before}, ${balance}, ${balance},
                ${spend.appId}, 'seed', ${spend.at})
        returning created_at
      )
      insert into credits.guild_member_usage (organization_id, user_id, day, spent)
      select ${guildId}, ${spend.userId}, (created_at at time zone 'utc')::date, ${spend.amount} from entry
      on conflict (organization_id, user_id, day)
        do update set spent = credits.guild_member_usage.spent + excluded.spent`.execute(db);
  }
  await sql`
    insert into credits.guild_pools (organization_id, balance, total_funded, total_spent)
    values (${guildId}, ${balance}, ${funding}, ${funding - balance})`.execute(db);
  await openingLot(db, 'guild', guildId, balance);
}

/**
 * Seeded rows name no lots, like history written before lots: the balance they leave is one opening lot, as
 * the lots migration makes of such a balance.
 */
async function openingLot(db: Kysely<Database>, kind: 'user' | 'guild', accountId: string, balance: number) {
  if (balance <= 0) return;
  await sql`
    insert into credits.lots (account_kind, account_id, source, category, priority, amount, remaining, opening)
    values (${kind}, ${accountId}, 'grant', 'promotional', 10, ${balance}, ${balance}, true)`.execute(db);
}
