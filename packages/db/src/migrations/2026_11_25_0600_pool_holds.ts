import { type Kysely, sql } from 'kysely';

// Frozen: guild pool holds (reservations with organization_id set), as of 2026-11-25.
//
// A pool hold raises credits.guild_pools.reserved and writes no ledger row; committing posts one `usage` row
// in credits.guild_transactions; releasing or expiring only lowers reserved. Lock order as for personal
// holds: a reservation row first, then account rows — balance rows by user_id, then pool rows by
// organization_id (collation "C"). Writers that hold a pool row claim reservation rows with SKIP LOCKED only.

export async function up(db: Kysely<any>): Promise<void> {
  // A member's open pool holds count against their limits (credits.reservations read by memberSpending).
  await sql`create index reservations_open_pool_member on credits.reservations (organization_id, user_id, created_at) where status = 'open' and organization_id is not null`.execute(
    db,
  );
  // The check on access of a pool: its expired holds.
  await sql`create index reservations_open_pool_expiry on credits.reservations (organization_id, expires_at) where status = 'open' and organization_id is not null`.execute(
    db,
  );

  // As in 2026_11_25_0400, plus pool holds in the sweep (p_user_id null): claimed with SKIP LOCKED, then
  // balance rows by user_id, then pool rows by organization_id, then settled. For one user (the personal
  // check on access, which runs while that user's balance row is locked) only personal holds are returned.
  await sql`
    create or replace function credits.release_expired_holds(p_user_id text, p_limit int)
    returns int language plpgsql as $$
    declare
      v_ids uuid[];
    begin
      if p_user_id is null then
        select array_agg(id) into v_ids from (
          select id from credits.reservations
           where status = 'open' and expires_at <= now()
           order by user_id, id limit p_limit
             for update skip locked) claimed;
      else
        select array_agg(id) into v_ids from (
          select id from credits.reservations
           where user_id = p_user_id and status = 'open' and expires_at <= now() and organization_id is null
           order by id limit p_limit
             for update skip locked) claimed;
      end if;
      if v_ids is null then
        return 0;
      end if;
      perform 1 from credits.balances
        where user_id in (select user_id from credits.reservations where id = any(v_ids) and organization_id is null)
        order by user_id collate "C" for update;
      perform 1 from credits.guild_pools
        where organization_id in (select organization_id from credits.reservations where id = any(v_ids))
        order by organization_id collate "C" for update;
      with closed as (
        update credits.reservations
           set status = 'expired', released_amount = amount, closed_at = now(), updated_at = now()
         where id = any(v_ids) and status = 'open'
        returning user_id, organization_id, amount
      ), personal as (
        update credits.balances b
           set reserved = b.reserved - c.total, version = b.version + 1, updated_at = now()
          from (select user_id, sum(amount)::int8 as total from closed where organization_id is null
                 group by user_id) c
         where b.user_id = c.user_id
        returning 1
      )
      update credits.guild_pools p
         set reserved = p.reserved - c.total, version = p.version + 1, updated_at = now()
        from (select organization_id, sum(amount)::int8 as total from closed where organization_id is not null
               group by organization_id) c
       where p.organization_id = c.organization_id;
      return cardinality(v_ids);
    end
    $$`.execute(db);

  // The check on access of one pool: returns its expired holds, at most p_limit. Runs while the caller holds
  // the pool row, so holds are claimed with SKIP LOCKED (a hold being committed right now is left to its
  // commit). Returns how many holds were returned.
  await sql`
    create function credits.release_expired_pool_holds(p_organization_id text, p_limit int)
    returns int language plpgsql as $$
    declare
      v_ids uuid[];
    begin
      select array_agg(id) into v_ids from (
        select id from credits.reservations
         where organization_id = p_organization_id and status = 'open' and expires_at <= now()
         order by id limit p_limit
           for update skip locked) claimed;
      if v_ids is null then
        return 0;
      end if;
      with closed as (
        update credits.reservations
           set status = 'expired', released_amount = amount, closed_at = now(), updated_at = now()
         where id = any(v_ids) and status = 'open'
        returning amount
      )
      update credits.guild_pools p
         set reserved = p.reserved - c.total, version = p.version + 1, updated_at = now()
        from (select sum(amount)::int8 as total from closed) c
       where p.organization_id = p_organization_id and c.total is not null;
      return cardinality(v_ids);
    end
    $$`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop function credits.release_expired_pool_holds(text, int)`.execute(db);
  await sql`drop index credits.reservations_open_pool_expiry`.execute(db);
  await sql`drop index credits.reservations_open_pool_member`.execute(db);
}
