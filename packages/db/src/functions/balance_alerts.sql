-- Balance alerts (issue 16): balance.low / balance.depleted / balance.recovered for personal balances and
-- guild.pool.low / .depleted / .recovered for pools, written by statement triggers on the two ledgers
-- (transactions_balance_alerts, guild_transactions_balance_alerts, both running credits.balance_alerts with the
-- account kind as argument; defined at the end of this file), so in the transaction of the money change
-- itself and without any money path knowing: a rolled-back change emits nothing, a committed one cannot
-- lose its event.
--
-- What crosses: an account's available credits (balance − reserved) as every ledger entry leaves them (the
-- entry's available_after), one sequence per account starting at 0. With threshold T:
--   low        the previous value was ≥ T and this entry's is < T
--   recovered  the previous value was < T and this entry's is ≥ T
--   depleted   the previous value was > 0 and this entry's is 0
-- A hold, a release or an expiry writes no ledger entry and so fires nothing by itself: its effect on
-- `reserved` is seen by the account's next entry (a hold's commit, or any debit or credit). Alerts follow
-- the ledger, so every event names the entry that crossed.
--
-- Once per crossing, never per transaction: within one INSERT statement (credits.use_batch writes a whole
-- batch of debits in one) at most one event per account and type — the first entry that crosses; the
-- previous value is the account's last entry before the statement. Entries of one account are dated in the
-- order of its row lock (every writer locks the balance or pool row before inserting its entry), so "the
-- last entry before" is well defined; within a statement, entries are taken in created_at order, then in
-- the order the statement inserted them.
--
-- Cost, kept small because every money statement pays it: one scan of the statement's rows says whether they
-- are one account's (a debit, a credit, a hot account's coalesced batch); then one primary-key lookup of its
-- setting ends the work for an account without a threshold; with one, one index lookup of its last earlier
-- entry (transactions_user_history / guild_transactions_history) and a loop over its entries in memory
-- (credits.alert_account); events are inserted only on a crossing. A statement of many accounts (useBatch)
-- reads the default threshold once and stops there when neither it nor any of the accounts' own settings
-- is set; otherwise it groups its rows per account in one query joined to their settings. All statements with cached
-- plans (static SQL, no EXECUTE): a single query of many CTEs over the transition table cost several times
-- more per debit (measured).
--
-- The threshold (credits.alert_threshold): the account's row in credits.alert_settings (a null threshold there =
-- alerts off), else the default in credits.event_settings (LOW_BALANCE_THRESHOLD, written by the servers);
-- none = no balance events for the account. T = 0 gives only `depleted`.
-- The setting in force, written once: the account's own row when it has one (even with a null threshold), else
-- the default. Inlined by the planner wherever it is called.
create or replace function credits.threshold_in_force(p_has_own boolean, p_own int8, p_default int8)
returns int8 language sql immutable as $$
  select case when p_has_own then p_own else p_default end
$$;

create or replace function credits.alert_threshold(p_kind text, p_account text)
-- A set-returning SQL function (always one row) so that the planner inlines it into the statement calling it:
-- one cached plan there, a join in the per-account query; a scalar SQL function would be planned per call.
returns setof int8 language sql stable as $$
  select credits.threshold_in_force(s.account_id is not null, s.low_balance_threshold, e.low_balance_threshold)
    from credits.event_settings e
    left join credits.alert_settings s on s.account_kind = p_kind and s.account_id = p_account
   where e.id
$$;

create or replace function credits.alert_account(
  p_kind text, p_account text, p_threshold int8, p_first_at timestamptz, p_ids uuid[], p_afters int8[],
  p_amounts int8[], p_entry_types text[], p_members text[])
returns void language plpgsql as $$
declare
  v_previous int8;
  v_before int8;
  v_after int8;
  v_first int[] := array[null, null, null]::int[];
  v_types text[];
  v_at int;
  i int;
  k int;
begin
  -- The account's value after its last entry before this statement (0 when it has none).
  if p_kind = 'user' then
    select coalesce(h.available_after, h.balance_after) into v_previous
      from credits.transactions h
     where h.user_id = p_account and h.created_at <= p_first_at and h.id <> all(p_ids)
     order by h.created_at desc, h.id desc
     limit 1;
    v_types := array['balance.low', 'balance.recovered', 'balance.depleted'];
  else
    select coalesce(h.available_after, h.balance_after) into v_previous
      from credits.guild_transactions h
     where h.organization_id = p_account and h.created_at <= p_first_at and h.id <> all(p_ids)
     order by h.created_at desc, h.id desc
     limit 1;
    v_types := array['guild.pool.low', 'guild.pool.recovered', 'guild.pool.depleted'];
  end if;
  v_previous := coalesce(v_previous, 0);
  -- The first entry of each kind of crossing: low (1) or recovered (2), depleted (3).
  v_before := v_previous;
  for i in 1 .. cardinality(p_ids) loop
    v_after := p_afters[i];
    if v_before >= p_threshold and v_after < p_threshold then
      v_first[1] := coalesce(v_first[1], i);
    elsif v_before < p_threshold and v_after >= p_threshold then
      v_first[2] := coalesce(v_first[2], i);
    end if;
    if v_before > 0 and v_after = 0 then
      v_first[3] := coalesce(v_first[3], i);
    end if;
    v_before := v_after;
  end loop;
  -- In the order of the entries that crossed (for one entry: low before depleted).
  for k in 1 .. 3 loop
    v_at := null;
    for i in 1 .. 3 loop
      if v_first[i] is not null and (v_at is null or v_first[i] < v_first[v_at]) then
        v_at := i;
      end if;
    end loop;
    exit when v_at is null;
    i := v_first[v_at];
    v_first[v_at] := null;
    insert into credits.events (type, user_id, guild_id, data)
    values (v_types[v_at],
            case when p_kind = 'user' then p_account end,
            case when p_kind = 'guild' then p_account end,
            jsonb_strip_nulls(jsonb_build_object(
              case when p_kind = 'user' then 'userId' else 'guildId' end, p_account,
              'threshold', p_threshold,
              'available', p_afters[i],
              'previousAvailable', case when i = 1 then v_previous else p_afters[i - 1] end,
              'amount', p_amounts[i],
              'transactionId', p_ids[i],
              'entryType', p_entry_types[i],
              'memberId', p_members[i])));
  end loop;
end
$$;

-- The trigger of both ledgers; TG_ARGV[0] is the account kind: 'user' (credits.transactions, whose account is
-- user_id) or 'guild' (credits.guild_transactions, whose account is organization_id and user_id the member).
-- Only the statements naming the account column differ by kind, so they come in pairs.
create or replace function credits.balance_alerts() returns trigger
language plpgsql as $$
declare
  v_kind text := TG_ARGV[0];
  v_count int;
  v_min text;
  v_max text;
  v_threshold int8;
  v_default int8;
  v_accounts refcursor;
  r record;
  a record;
begin
  case v_kind
    when 'user' then
      select count(*)::int, min(n.user_id), max(n.user_id) into v_count, v_min, v_max from new_rows n;
    when 'guild' then
      select count(*)::int, min(n.organization_id), max(n.organization_id) into v_count, v_min, v_max
        from new_rows n;
  end case;
  if v_count = 0 then
    return null;
  end if;
  if v_min = v_max then
    -- One account: a single entry, or a batch of one account's entries.
    select t into v_threshold from credits.alert_threshold(v_kind, v_min) t;
    if v_threshold is null then
      return null;
    end if;
    if v_count = 1 then
      select n.id, n.amount, n.type, n.user_id, n.created_at, coalesce(n.available_after, n.balance_after) as after_value
        into r from new_rows n;
      perform credits.alert_account(v_kind, v_min, v_threshold, r.created_at, array[r.id], array[r.after_value],
                                    array[r.amount], array[r.type],
                                    case when v_kind = 'guild' then array[r.user_id] end);
    else
      select min(x.created_at) as first_at, array_agg(x.id order by x.created_at, x.ord) as ids,
             array_agg(x.after_value order by x.created_at, x.ord) as afters,
             array_agg(x.amount order by x.created_at, x.ord) as amounts,
             array_agg(x.type order by x.created_at, x.ord) as entry_types,
             array_agg(x.user_id order by x.created_at, x.ord) as members
        into a
        from (select n.*, coalesce(n.available_after, n.balance_after) as after_value, row_number() over () as ord
                from new_rows n) x;
      perform credits.alert_account(v_kind, v_min, v_threshold, a.first_at, a.ids, a.afters, a.amounts,
                                    a.entry_types, case when v_kind = 'guild' then a.members end);
    end if;
    return null;
  end if;
  -- Many accounts (useBatch): their rows grouped per account, with the setting in force — the default read
  -- once and the accounts' own settings in one join (credits.alert_threshold per account rescanned both
  -- setting tables once per account: a tenth of what a batch debit cost the database); nothing more when
  -- none of the accounts has a threshold.
  select e.low_balance_threshold into v_default from credits.event_settings e where e.id;
  if not found then
    return null;
  end if;
  case v_kind
    when 'user' then
      if v_default is null and not exists (
           select 1 from credits.alert_settings s
            where s.account_kind = 'user' and s.account_id in (select n.user_id from new_rows n)
              and s.low_balance_threshold is not null) then
        return null;
      end if;
      open v_accounts for
        select g.*, t.threshold
          from (select x.user_id as account, min(x.created_at) as first_at,
                       array_agg(x.id order by x.created_at, x.ord) as ids,
                       array_agg(x.after_value order by x.created_at, x.ord) as afters,
                       array_agg(x.amount order by x.created_at, x.ord) as amounts,
                       array_agg(x.type order by x.created_at, x.ord) as entry_types,
                       null::text[] as members
                  from (select n.*, coalesce(n.available_after, n.balance_after) as after_value,
                               row_number() over () as ord
                          from new_rows n) x
                 group by x.user_id) g
          left join credits.alert_settings s on s.account_kind = 'user' and s.account_id = g.account
          cross join lateral (select credits.threshold_in_force(s.account_id is not null, s.low_balance_threshold,
                                                                v_default) as threshold) t
         where t.threshold is not null
         order by g.account;
    when 'guild' then
      if v_default is null and not exists (
           select 1 from credits.alert_settings s
            where s.account_kind = 'guild' and s.account_id in (select n.organization_id from new_rows n)
              and s.low_balance_threshold is not null) then
        return null;
      end if;
      open v_accounts for
        select g.*, t.threshold
          from (select x.organization_id as account, min(x.created_at) as first_at,
                       array_agg(x.id order by x.created_at, x.ord) as ids,
                       array_agg(x.after_value order by x.created_at, x.ord) as afters,
                       array_agg(x.amount order by x.created_at, x.ord) as amounts,
                       array_agg(x.type order by x.created_at, x.ord) as entry_types,
                       array_agg(x.user_id order by x.created_at, x.ord) as members
                  from (select n.*, coalesce(n.available_after, n.balance_after) as after_value,
                               row_number() over () as ord
                          from new_rows n) x
                 group by x.organization_id) g
          left join credits.alert_settings s on s.account_kind = 'guild' and s.account_id = g.account
          cross join lateral (select credits.threshold_in_force(s.account_id is not null, s.low_balance_threshold,
                                                                v_default) as threshold) t
         where t.threshold is not null
         order by g.account;
  end case;
  loop
    fetch v_accounts into a;
    exit when not found;
    perform credits.alert_account(v_kind, a.account, a.threshold, a.first_at, a.ids, a.afters, a.amounts,
                                  a.entry_types, a.members);
  end loop;
  close v_accounts;
  return null;
end
$$;

-- The triggers (first created by migration 2026_12_03_0500_events on per-kind functions), re-pointed here in
-- the transaction that replaces the function, so no committed entry runs without its alerts. Statement
-- triggers: one call per INSERT however many rows it writes, seeing them all in the transition table.
drop trigger if exists transactions_balance_alerts on credits.transactions;
create trigger transactions_balance_alerts after insert on credits.transactions
  referencing new table as new_rows for each statement execute function credits.balance_alerts('user');
drop trigger if exists guild_transactions_balance_alerts on credits.guild_transactions;
create trigger guild_transactions_balance_alerts after insert on credits.guild_transactions
  referencing new table as new_rows for each statement execute function credits.balance_alerts('guild');
-- The per-kind functions they ran before (nothing migrates down; 0500's down() would now stop at them).
drop function if exists credits.personal_balance_alerts();
drop function if exists credits.guild_balance_alerts();
