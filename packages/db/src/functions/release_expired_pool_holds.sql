-- credits.release_expired_pool_holds: the check on access of one pool. Returns its expired holds, at most
-- p_limit. Runs while the caller holds the pool row, so holds are claimed with SKIP LOCKED (a hold being
-- committed right now is left to its commit). The holds' lots are unpinned, and what that frees of a lapsed
-- lot expires at once. Returns how many holds were returned.
create or replace function credits.release_expired_pool_holds(p_organization_id text, p_limit int)
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
  perform credits.settle_pins(r.lot_ids, r.lot_amounts, 0)
     from credits.reservations r where r.id = any(v_ids) and r.status = 'open';
  with closed as (
    update credits.reservations
       set status = 'expired', released_amount = amount, closed_at = now(), updated_at = now()
     where id = any(v_ids) and status = 'open'
    returning amount, credits.lots_expiry(lot_ids) as lot_expiry
  )
  update credits.guild_pools p
     set reserved = p.reserved - c.total, next_lot_expiry = least(p.next_lot_expiry, c.lot_expiry),
         version = p.version + 1, updated_at = now()
    from (select sum(amount)::int8 as total, min(lot_expiry) as lot_expiry from closed) c
   where p.organization_id = p_organization_id and c.total is not null;
  perform credits.expire_lots('guild', p_organization_id);
  return cardinality(v_ids);
end
$$;
