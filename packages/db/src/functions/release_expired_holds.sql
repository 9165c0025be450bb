-- credits.release_expired_holds: returns expired holds to their accounts — one user's personal holds (the
-- check on access, which runs while that user's balance row is locked) or everyone's, pool holds included
-- (p_user_id null: the periodic sweep) — at most p_limit per call. Holds are claimed with SKIP LOCKED, so two
-- sweeping instances never take the same hold and never wait for a commit in progress (that commit settles
-- the hold itself); then balance rows by user_id, then pool rows by organization_id are locked (the fixed
-- order), and the conditional status makes a hold return exactly once. The holds' pinned lots let go of them,
-- and what that frees of a lapsed lot is expired at once. Returns how many holds were returned.
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
  -- their pinned lots let go of them (an expired hold consumes nothing)
  perform credits.settle_pins(r.lot_ids, r.lot_amounts, 0)
     from credits.reservations r where r.id = any(v_ids) and r.status = 'open';
  with closed as (
    update credits.reservations
       set status = 'expired', released_amount = amount, closed_at = now(), updated_at = now()
     where id = any(v_ids) and status = 'open'
    returning user_id, organization_id, amount, credits.lots_expiry(lot_ids) as lot_expiry
  ), personal as (
    update credits.balances b
       set reserved = b.reserved - c.total, next_lot_expiry = least(b.next_lot_expiry, c.lot_expiry),
           version = b.version + 1, updated_at = now()
      from (select user_id, sum(amount)::int8 as total, min(lot_expiry) as lot_expiry from closed
             where organization_id is null group by user_id) c
     where b.user_id = c.user_id
    returning 1
  )
  update credits.guild_pools p
     set reserved = p.reserved - c.total, next_lot_expiry = least(p.next_lot_expiry, c.lot_expiry),
         version = p.version + 1, updated_at = now()
    from (select organization_id, sum(amount)::int8 as total, min(lot_expiry) as lot_expiry from closed
           where organization_id is not null group by organization_id) c
   where p.organization_id = c.organization_id;
  -- what they unpinned of a lapsed lot expires now
  perform credits.expire_lots('user', b.user_id) from credits.balances b
    where b.user_id in (select user_id from credits.reservations where id = any(v_ids) and organization_id is null)
      and b.next_lot_expiry <= now()
    order by b.user_id collate "C";
  perform credits.expire_lots('guild', p.organization_id) from credits.guild_pools p
    where p.organization_id in (select organization_id from credits.reservations where id = any(v_ids))
      and p.next_lot_expiry <= now()
    order by p.organization_id collate "C";
  return cardinality(v_ids);
end
$$;
