-- Balance alerts (issue 16): balance.low / balance.depleted / balance.recovered for personal balances and
-- guild.pool.low / .depleted / .recovered for pools, written by statement triggers on the two ledgers
-- (transactions_balance_alerts, guild_transactions_balance_alerts), so in the transaction of the money change
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
-- The threshold: the account's row in credits.alert_settings (a null threshold there = alerts off), else
-- the default in credits.event_settings (LOW_BALANCE_THRESHOLD, written by the servers); none = no balance
-- events for the account. T = 0 gives only `depleted`.
create or replace function credits.personal_balance_alerts() returns trigger
language plpgsql as $$
declare
  v_default int8;
begin
  select s.low_balance_threshold into v_default from credits.event_settings s where s.id;
  insert into credits.events (type, user_id, data)
  with entries as (
    select n.id, n.user_id, n.type, n.amount, coalesce(n.available_after, n.balance_after) as after_value,
           n.created_at, row_number() over () as ord
      from new_rows n
  ), accounts as (
    select e.user_id, min(e.created_at) as first_at,
           case when s.account_id is null then v_default else s.low_balance_threshold end as threshold
      from entries e
      left join credits.alert_settings s on s.account_kind = 'user' and s.account_id = e.user_id
     group by e.user_id, s.account_id, s.low_balance_threshold
  ), alerting as (
    select a.user_id, a.threshold,
           coalesce((select coalesce(t.available_after, t.balance_after)
                       from credits.transactions t
                      where t.user_id = a.user_id and t.created_at <= a.first_at
                        and not exists (select 1 from entries x where x.id = t.id)
                      order by t.created_at desc, t.id desc
                      limit 1), 0) as start_value
      from accounts a
     where a.threshold is not null
  ), steps as (
    select e.*, a.threshold,
           coalesce(lag(e.after_value) over (partition by e.user_id order by e.created_at, e.ord),
                    a.start_value) as before_value
      from entries e
      join alerting a on a.user_id = e.user_id
  ), crossings as (
    select s.*, k.type as event_type, k.rank
      from steps s
     cross join lateral (values
       (case when s.before_value >= s.threshold and s.after_value < s.threshold then 'balance.low'
             when s.before_value < s.threshold and s.after_value >= s.threshold then 'balance.recovered' end, 1),
       (case when s.before_value > 0 and s.after_value = 0 then 'balance.depleted' end, 2)) as k(type, rank)
     where k.type is not null
  ), firsts as (
    select distinct on (c.user_id, c.event_type) c.*
      from crossings c
     order by c.user_id, c.event_type, c.created_at, c.ord
  )
  select f.event_type, f.user_id,
         jsonb_build_object(
           'userId', f.user_id,
           'threshold', f.threshold,
           'available', f.after_value,
           'previousAvailable', f.before_value,
           'amount', f.amount,
           'transactionId', f.id,
           'entryType', f.type)
    from firsts f
   order by f.created_at, f.ord, f.rank;
  return null;
end
$$;

create or replace function credits.guild_balance_alerts() returns trigger
language plpgsql as $$
declare
  v_default int8;
begin
  select s.low_balance_threshold into v_default from credits.event_settings s where s.id;
  insert into credits.events (type, guild_id, data)
  with entries as (
    select n.id, n.organization_id, n.user_id, n.type, n.amount,
           coalesce(n.available_after, n.balance_after) as after_value, n.created_at,
           row_number() over () as ord
      from new_rows n
  ), accounts as (
    select e.organization_id, min(e.created_at) as first_at,
           case when s.account_id is null then v_default else s.low_balance_threshold end as threshold
      from entries e
      left join credits.alert_settings s on s.account_kind = 'guild' and s.account_id = e.organization_id
     group by e.organization_id, s.account_id, s.low_balance_threshold
  ), alerting as (
    select a.organization_id, a.threshold,
           coalesce((select coalesce(t.available_after, t.balance_after)
                       from credits.guild_transactions t
                      where t.organization_id = a.organization_id and t.created_at <= a.first_at
                        and not exists (select 1 from entries x where x.id = t.id)
                      order by t.created_at desc, t.id desc
                      limit 1), 0) as start_value
      from accounts a
     where a.threshold is not null
  ), steps as (
    select e.*, a.threshold,
           coalesce(lag(e.after_value) over (partition by e.organization_id order by e.created_at, e.ord),
                    a.start_value) as before_value
      from entries e
      join alerting a on a.organization_id = e.organization_id
  ), crossings as (
    select s.*, k.type as event_type, k.rank
      from steps s
     cross join lateral (values
       (case when s.before_value >= s.threshold and s.after_value < s.threshold then 'guild.pool.low'
             when s.before_value < s.threshold and s.after_value >= s.threshold then 'guild.pool.recovered' end, 1),
       (case when s.before_value > 0 and s.after_value = 0 then 'guild.pool.depleted' end, 2)) as k(type, rank)
     where k.type is not null
  ), firsts as (
    select distinct on (c.organization_id, c.event_type) c.*
      from crossings c
     order by c.organization_id, c.event_type, c.created_at, c.ord
  )
  select f.event_type, f.organization_id,
         jsonb_build_object(
           'guildId', f.organization_id,
           'threshold', f.threshold,
           'available', f.after_value,
           'previousAvailable', f.before_value,
           'amount', f.amount,
           'transactionId', f.id,
           'entryType', f.type,
           'memberId', f.user_id)
    from firsts f
   order by f.created_at, f.ord, f.rank;
  return null;
end
$$;
