-- credits.relay_events: the relay of the outbox (issue 16), run by the delivery job of every instance.
-- Numbers the committed events not yet numbered (`position`, 1, 2, 3, … with no gaps) and fans each out into
-- one pending delivery per webhook endpoint subscribed to its type (disabled endpoints included: their
-- deliveries wait until the endpoint is enabled again). At most p_limit events per call, in insertion order.
-- Returns the events it numbered.
--
-- Why positions give commit order and a reader can never miss an event: events are inserted in many
-- concurrent transactions, so an id or an insertion sequence can become visible out of order (a reader that
-- paged past seq 11 would never see seq 10 committing after it). Only one relay runs at a time (the
-- transaction-scoped advisory lock; an instance that does not get it skips its turn), it sees only
-- committed events, and it commits before the next relay starts; so a position, once visible, is
-- followed only by larger positions. Position order is the order in which the relays saw the events
-- committed (insertion order among those one relay saw together). Call it in a transaction of its own
-- (one statement).
create or replace function credits.relay_events(p_limit int)
returns table (event_id uuid, event_type text, event_position int8)
language plpgsql as $$
#variable_conflict use_column
declare
  v_base int8;
begin
  if not pg_try_advisory_xact_lock(hashtext('mana_credits.relay_events')) then
    return;
  end if;
  select coalesce(max(e.position), 0) into v_base from credits.events e where e.position is not null;
  return query
    with batch as (
      select e.id, row_number() over (order by e.seq) as n
        from credits.events e
       where e.position is null
       order by e.seq
       limit p_limit
    ), numbered as (
      update credits.events e
         set position = v_base + b.n, relayed_at = now()
        from batch b
       where e.id = b.id
      returning e.id, e.type, e.position
    ), fanout as (
      insert into credits.webhook_deliveries (webhook_id, event_id)
      select w.id, n.id
        from numbered n
        join credits.webhooks w on w.event_types is null or n.type = any(w.event_types)
        -- an endpoint deleted meanwhile is skipped (its deletion waits for this lock, or is seen committed):
        -- without the lock, the foreign key check failed the whole relay
         for key share of w
      on conflict (webhook_id, event_id) where kind = 'original' do nothing
    )
    select n.id, n.type, n.position from numbered n order by n.position;
end
$$;
