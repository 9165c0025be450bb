import type { Database } from '@mana-credits/db';
import { type Kysely, sql } from 'kysely';
import { expect } from 'vitest';

/**
 * Money invariants over the whole database: for every user Σ ledger = balance (holds included), for every
 * pool Σ guild ledger = pool balance. Returns the offending rows so a failure says who drifted.
 */
export async function ledgerDrift(db: Kysely<Database>) {
  const users = await sql<{ user_id: string; balance: number; ledger: number }>`
    select coalesce(b.user_id, l.user_id) as user_id, coalesce(b.balance, 0)::int8 as balance,
           coalesce(l.total, 0)::int8 as ledger
      from credits.balances b
      full join (select user_id, sum(amount)::int8 as total from credits.transactions group by user_id) l
        on l.user_id = b.user_id
     where coalesce(b.balance, 0) <> coalesce(l.total, 0)`.execute(db);
  const pools = await sql<{ organization_id: string; balance: number; ledger: number }>`
    select coalesce(p.organization_id, l.organization_id) as organization_id, coalesce(p.balance, 0)::int8 as balance,
           coalesce(l.total, 0)::int8 as ledger
      from credits.guild_pools p
      full join (select organization_id, sum(amount)::int8 as total from credits.guild_transactions
                  group by organization_id) l
        on l.organization_id = p.organization_id
     where coalesce(p.balance, 0) <> coalesce(l.total, 0)`.execute(db);
  return { users: users.rows, pools: pools.rows };
}

export async function expectLedgerConsistent(db: Kysely<Database>) {
  expect(await ledgerDrift(db)).toEqual({ users: [], pools: [] });
}

/** Gives a user credits through the real internal API path (a grant), returning the new balance. */
export async function ledgerSum(db: Kysely<Database>, userId: string): Promise<number> {
  const row = await db
    .selectFrom('credits.transactions')
    .select(sql<number>`coalesce(sum(amount), 0)::int8`.as('total'))
    .where('user_id', '=', userId)
    .executeTakeFirstOrThrow();
  return row.total;
}

/**
 * Hold invariants: every balance's `reserved` equals the sum of its user's open personal holds, and every
 * pool's `reserved` the sum of its open pool holds. Returns the offending accounts.
 */
export async function holdDrift(db: Kysely<Database>) {
  const users = await sql<{ user_id: string; reserved: number; held: number }>`
    select coalesce(b.user_id, h.user_id) as user_id, coalesce(b.reserved, 0)::int8 as reserved,
           coalesce(h.total, 0)::int8 as held
      from credits.balances b
      full join (select user_id, sum(amount)::int8 as total from credits.reservations
                  where status = 'open' and organization_id is null group by user_id) h
        on h.user_id = b.user_id
     where coalesce(b.reserved, 0) <> coalesce(h.total, 0)`.execute(db);
  const pools = await sql<{ organization_id: string; reserved: number; held: number }>`
    select coalesce(p.organization_id, h.organization_id) as organization_id,
           coalesce(p.reserved, 0)::int8 as reserved, coalesce(h.total, 0)::int8 as held
      from credits.guild_pools p
      full join (select organization_id, sum(amount)::int8 as total from credits.reservations
                  where status = 'open' and organization_id is not null group by organization_id) h
        on h.organization_id = p.organization_id
     where coalesce(p.reserved, 0) <> coalesce(h.total, 0)`.execute(db);
  return { users: users.rows, pools: pools.rows };
}

export async function expectHoldsConsistent(db: Kysely<Database>) {
  expect(await holdDrift(db)).toEqual({ users: [], pools: [] });
}
