-- Auto top-up (issue 19): the statement trigger transactions_auto_top_up on credits.transactions records one
-- top-up attempt (credits.auto_top_up_attempts) when a committed change takes a user's available credits below
-- their auto top-up threshold, in the transaction of that change: durable like an outbox row, and rolled back
-- with the change. A worker (packages/server/src/domain/stripe/auto-top-up.ts) then pays for it.
--
-- The crossing rule is the same as balance.low (functions/balance_alerts.sql, which this file does not touch):
-- the available_after of consecutive ledger rows of the account going from ≥ threshold to < threshold; the value
-- before the statement is the account's last entry before it (0 when it has none); within one INSERT
-- (use_batch, a hot account's coalesced debits) the entries are taken in created_at order, then in the order
-- the statement inserted them, and at most one attempt is recorded. A `clawback` entry (a refund or dispute
-- taking credits back) never calls for a top-up: a refunded payment must not buy again by itself.
--
-- At most one attempt in flight per user (the partial unique index auto_top_up_attempts_one_in_flight: a
-- crossing while one is pending or processing records nothing), and at most max_per_month attempts that did not
-- fail or get skipped per UTC month of their recording. Entries of one account are written under its balance
-- row lock, so these checks see every earlier attempt of the account.
--
-- Cost for accounts without auto top-up: one lookup of the statement's users in credits.auto_top_up.
create or replace function credits.auto_top_up_crossings() returns trigger
language plpgsql as $$
declare
  s record;
  x record;
  v_previous int8;
  v_before int8;
  v_crossed uuid;
  i int;
begin
  for s in
    select a.user_id, a.threshold, a.package_id, a.max_per_month
      from credits.auto_top_up a
     where a.enabled and a.user_id in (select n.user_id from new_rows n)
     order by a.user_id
  loop
    select min(e.created_at) as first_at,
           array_agg(e.id order by e.created_at, e.ord) as ids,
           array_agg(e.after_value order by e.created_at, e.ord) as afters,
           array_agg(e.type order by e.created_at, e.ord) as entry_types
      into x
      from (select n.id, n.created_at, n.type, coalesce(n.available_after, n.balance_after) as after_value,
                   row_number() over () as ord
              from new_rows n where n.user_id = s.user_id) e;
    select coalesce(h.available_after, h.balance_after) into v_previous
      from credits.transactions h
     where h.user_id = s.user_id and h.created_at <= x.first_at and h.id <> all(x.ids)
     order by h.created_at desc, h.id desc
     limit 1;
    v_before := coalesce(v_previous, 0);
    v_crossed := null;
    for i in 1 .. cardinality(x.ids) loop
      if v_before >= s.threshold and x.afters[i] < s.threshold and x.entry_types[i] <> 'clawback' then
        v_crossed := x.ids[i];
        exit;
      end if;
      v_before := x.afters[i];
    end loop;
    continue when v_crossed is null;
    if (select count(*) from credits.auto_top_up_attempts t
         where t.user_id = s.user_id and t.status in ('pending', 'processing', 'succeeded')
           and t.created_at >= date_trunc('month', now() at time zone 'utc') at time zone 'utc') < s.max_per_month then
      insert into credits.auto_top_up_attempts (user_id, package_id, transaction_id)
      values (s.user_id, s.package_id, v_crossed)
      on conflict (user_id) where status in ('pending', 'processing') do nothing;
    end if;
  end loop;
  return null;
end
$$;
