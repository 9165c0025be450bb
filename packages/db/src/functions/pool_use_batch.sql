-- credits.pool_use_batch: many members' spends from guild pools, of one pool or of many, in one call (one
-- round trip, one transaction): what coalesced guild.use / credits.use-with-guildId calls go through when a
-- pool is hot. Each item is decided exactly as the single path decides it (domain/spending.ts spendPool, in
-- guild/pools.ts useGuildCredits) and leaves the same ledger row, lots, counters and events.
--
-- The items arrive as parallel arrays, element i of each being item i; a null key = a keyless spend. Returns
-- one row per item, in input order: outcome
--   'ok'            posted: transaction_id, available (the pool's spendable credits after it)
--   'replay'        the key was posted before, or earlier in this batch, with the same request (its first
--                   answer); 'conflict' with another request (posted or refused). A key is scoped to (guild,
--                   member).
--   'refused'       the key was refused before, or earlier in this batch, with the same request: that refusal
--                   again, as reason and details (what credits.record_refusal recorded)
--   'insufficient'  the pool does not cover it (credits.covers): available = what the pool could spend
--   'daily_limit' / 'monthly_limit'  the member's cap (cap) would be passed; used = spent and held in the
--                   window before it
--   'no_pool'       the guild has no pool
-- A keyed item refused here ('insufficient', 'daily_limit', 'monthly_limit') takes its key: it is recorded
-- (credits.record_refusal, key space 'guild', details as refusals.ts refusalOf rebuilds them) under the pool
-- lock, in this transaction, and reason / details say what was recorded.
-- and, on the first item of each pool, holds_expired / credits_expired: what the lapsed-holds return and the
-- lots expiry made on the way (for the metrics).
--
-- How: lock every pool of the batch once, in organization_id order ("C" collation, the order every
-- multi-pool writer uses), and look up the keys; then, pool by pool: return its lapsed holds and expire its
-- lapsed lots, as the single path does before it checks anything, read the pool and, through
-- credits.member_spending (the one window rule), its members' caps and spending, and decide its items in
-- input order on in-memory copies of those (PL/pgSQL arrays, O(1) per access) — undoing that return when
-- none of the pool's items is posted and no refusal was recorded, as the single path's refused spend rolls it
-- back unless it recorded the refusal (spendingTransaction commits a recorded refusal). Then write
-- everything set-based: one INSERT of all guild ledger rows (each naming its lots: one burn per pool, split in
-- input order), the member and usage counters fed by it (each counted on the UTC day of its ledger row, as
-- every other write of them does), one UPDATE of the pools, and one INSERT of the guild.member.limit_reached
-- events. While the pool rows are locked no other writer can post a guild ledger row or a hold for these
-- pools or record a refusal of their keys, so the key lookup (ledger rows and refusals, in a statement after
-- the lock: this volatile function reads a fresh snapshot per statement) and the spending read after locking
-- cannot be overtaken; should the unique index fire anyway, the whole call fails (nothing written, a certain
-- failure).
-- The result gained reason and details: a changed result type needs the old function dropped first.
drop function if exists credits.pool_use_batch(text[], text[], int8[], text[], text[], jsonb[], text[], text[]);
create function credits.pool_use_batch(
  p_guilds text[], p_users text[], p_amounts int8[], p_apps text[], p_descriptions text[], p_metadata jsonb[],
  p_keys text[], p_hashes text[])
returns table (ord int, outcome text, transaction_id uuid, available int8, cap int8, used int8,
               holds_expired int, credits_expired int8, reason text, details jsonb)
language plpgsql as $$
#variable_conflict use_column
declare
  v_count int := cardinality(p_guilds);
  v_today date;
  -- per item, in input order
  v_pool int[];
  v_member int[];
  v_first int[];
  v_prior_id uuid[];
  v_prior_hash text[];
  v_prior_available int8[];
  v_refused_hash text[];
  v_refused_reason text[];
  v_refused_details jsonb[];
  v_outcome text[];
  v_reason text[];
  v_details jsonb[];
  v_tx uuid[];
  v_before int8[];
  v_available int8[];
  v_cap int8[];
  v_used int8[];
  -- the item that took each first item's key in this batch (posted or refused)
  v_taken int[];
  -- per pool, in organization_id order (v_pool points here)
  a_guild text[];
  a_exists boolean[];
  a_balance int8[];
  a_reserved int8[];
  a_next_expiry timestamptz[];
  a_holds int[];
  a_expired int8[];
  -- per (pool, member), in (organization_id, user_id) order (v_member points here)
  k_guild text[];
  k_member text[];
  m_daily int8[];
  m_monthly int8[];
  m_today int8[];
  m_month int8[];
  -- the limit_reached events, in the order the single path writes them (item order, daily before monthly)
  e_item int[] := '{}';
  e_window text[] := '{}';
  e_used int8[] := '{}';
  v_balance int8;
  v_reserved int8;
  v_next_expiry timestamptz;
  v_lapsed boolean;
  v_posted boolean;
  v_recorded boolean;
  v_spending record;
  i int;
  s int;
  m int;
  w int;
begin
  if v_count is null or v_count = 0 then
    return;
  end if;
  if exists (select 1 from unnest(p_amounts) a where a is null or a <= 0) then
    raise exception 'pool_use_batch: every amount must be positive' using errcode = 'invalid_parameter_value';
  end if;
  v_outcome := array_fill(null::text, array[v_count]);
  v_tx := array_fill(null::uuid, array[v_count]);
  v_before := array_fill(null::int8, array[v_count]);
  v_available := array_fill(null::int8, array[v_count]);
  v_cap := array_fill(null::int8, array[v_count]);
  v_used := array_fill(null::int8, array[v_count]);
  v_reason := array_fill(null::text, array[v_count]);
  v_details := array_fill(null::jsonb, array[v_count]);
  v_taken := array_fill(null::int, array[v_count]);
  -- v_pool / v_member: the item's pool and (pool, member); v_first: the first item of the batch with the same
  -- (guild, member, key), the scope of guild keys (GUILD_IDEMPOTENCY_INDEX)
  select array_agg(g.guild order by g.guild collate "C") into a_guild
    from (select distinct x.guild from unnest(p_guilds) as x(guild)) g;
  select array_agg(r.pool order by r.n), array_agg(r.member order by r.n), array_agg(r.first order by r.n)
    into v_pool, v_member, v_first
    from (select x.n,
                 dense_rank() over (order by x.guild collate "C")::int as pool,
                 dense_rank() over (order by x.guild collate "C", x.member collate "C")::int as member,
                 -- an item without a key is its own first (keyless items are never replays)
                 case when x.key is null then x.n
                      else min(x.n) over (partition by x.guild, x.member, x.key) end::int as first
            from unnest(p_guilds, p_users, p_keys) with ordinality as x(guild, member, key, n)) r;

  select array_agg(x.guild order by x.guild collate "C", x.member collate "C"),
         array_agg(x.member order by x.guild collate "C", x.member collate "C")
    into k_guild, k_member
    from (select distinct y.guild, y.member from unnest(p_guilds, p_users) as y(guild, member)) x;
  m_daily := array_fill(null::int8, array[cardinality(k_guild)]);
  m_monthly := array_fill(null::int8, array[cardinality(k_guild)]);
  m_today := array_fill(0::int8, array[cardinality(k_guild)]);
  m_month := array_fill(0::int8, array[cardinality(k_guild)]);
  a_exists := array_fill(false, array[cardinality(a_guild)]);
  a_balance := array_fill(0::int8, array[cardinality(a_guild)]);
  a_reserved := array_fill(0::int8, array[cardinality(a_guild)]);
  a_next_expiry := array_fill(null::timestamptz, array[cardinality(a_guild)]);
  a_holds := array_fill(0, array[cardinality(a_guild)]);
  a_expired := array_fill(0::int8, array[cardinality(a_guild)]);

  perform 1 from credits.guild_pools where organization_id = any(a_guild)
    order by organization_id collate "C" for update;
  -- the keys are looked up once the pools are locked (a later statement: a fresh snapshot): no spend of these
  -- pools can post one or record its refusal meanwhile
  select array_agg(t.id order by x.n), array_agg(t.request_hash order by x.n),
         array_agg(coalesce(t.available_after, t.balance_after) order by x.n),
         array_agg(f.request_hash order by x.n), array_agg(f.reason order by x.n), array_agg(f.details order by x.n)
    into v_prior_id, v_prior_hash, v_prior_available, v_refused_hash, v_refused_reason, v_refused_details
    from unnest(p_guilds, p_users, p_keys) with ordinality as x(guild, member, key, n)
    left join lateral (select t.id, t.request_hash, t.available_after, t.balance_after
                         from credits.guild_transactions t
                        where t.organization_id = x.guild and t.user_id = x.member and t.idempotency_key = x.key) t
      on true
    -- offset 0: a parameterised probe in the generic plan too (see use_batch.sql). Not on the ledger lookup
    -- above: kept apart, it no longer used the partial unique index and the hot-pool bench step cost 3× the CPU.
    left join lateral (select f.request_hash, f.reason, f.details from credits.refusals f
                        where f.user_id = x.member and f.idempotency_key = x.key and f.key_space = 'guild'
                          and f.organization_id = x.guild offset 0) f on true;
  -- the windows are those of credits.clock(), which dates the guild ledger rows (and so the counters)
  v_today := (credits.clock() at time zone 'utc')::date;

  -- Each pool on its own, in a block that can be undone: as the single path, first return the pool's lapsed
  -- holds (they neither block the pool nor count against a cap any longer) and expire its lapsed lots (no
  -- item may count an expired credit); then read the pool and its members' caps and spending
  -- (credits.member_spending) and decide its items in input order. The single path makes that return in
  -- the spend's transaction, so a spend that is refused (or replayed) rolls it back: likewise, when none of
  -- the pool's items is posted, the block is undone (the decisions, in variables, stay).
  for s in 1 .. cardinality(a_guild) loop
    begin
      select p.reserved, coalesce(p.next_lot_expiry <= now(), false) into v_reserved, v_lapsed
        from credits.guild_pools p where p.organization_id = a_guild[s];
      if found then
        if v_reserved > 0 then
          a_holds[s] := credits.release_expired_pool_holds(a_guild[s], 1000);
        end if;
        if v_lapsed then
          a_expired[s] := credits.expire_lots('guild', a_guild[s]);
        end if;
        select p.balance, p.reserved, p.next_lot_expiry into v_balance, v_reserved, v_next_expiry
          from credits.guild_pools p where p.organization_id = a_guild[s];
        a_exists[s] := true;
        a_balance[s] := v_balance;
        a_reserved[s] := v_reserved;
        a_next_expiry[s] := v_next_expiry;
      end if;
      for v_spending in
        select k.n, sp.daily_limit, sp.monthly_limit, sp.spent_today + sp.held as today,
               sp.spent_this_month + sp.held as month
          from unnest(k_guild, k_member) with ordinality as k(guild, member, n)
         cross join lateral credits.member_spending(k.guild, k.member, v_today) sp
         where k.guild = a_guild[s]
      loop
        m_daily[v_spending.n] := v_spending.daily_limit;
        m_monthly[v_spending.n] := v_spending.monthly_limit;
        m_today[v_spending.n] := v_spending.today;
        m_month[v_spending.n] := v_spending.month;
      end loop;

      v_posted := false;
      v_recorded := false;
      for i in 1 .. v_count loop
        continue when v_pool[i] <> s;
        m := v_member[i];
        w := v_taken[v_first[i]];
        v_outcome[i] := credits.key_outcome(p_hashes[i], v_prior_id[i] is not null, v_prior_hash[i],
                                            v_refused_hash[i], p_hashes[w], v_outcome[w] = 'ok');
        if v_outcome[i] = 'replay' and v_prior_id[i] is not null then
          v_tx[i] := v_prior_id[i];
          v_available[i] := v_prior_available[i];
        elsif v_outcome[i] = 'refused' and v_refused_hash[i] is not null then
          v_reason[i] := v_refused_reason[i];
          v_details[i] := v_refused_details[i];
        elsif v_outcome[i] = 'replay' then
          -- the same key was posted earlier in this batch
          v_tx[i] := v_tx[w];
          v_available[i] := v_available[w];
        elsif v_outcome[i] = 'refused' then
          -- the same key was refused earlier in this batch
          v_reason[i] := v_reason[w];
          v_details[i] := v_details[w];
        elsif v_outcome[i] is not null then
          null; -- conflict
        elsif not a_exists[s] then
          v_outcome[i] := 'no_pool';
        elsif not credits.covers(a_balance[s], a_reserved[s], a_next_expiry[s], p_amounts[i]) then
          v_outcome[i] := 'insufficient';
          v_available[i] := a_balance[s] - a_reserved[s];
          v_reason[i] := 'INSUFFICIENT_POOL_CREDITS';
          v_details[i] := jsonb_build_object('required', p_amounts[i], 'available', v_available[i]);
        elsif m_daily[m] is not null and m_today[m] + p_amounts[i] > m_daily[m] then
          v_outcome[i] := 'daily_limit';
          v_cap[i] := m_daily[m];
          v_used[i] := m_today[m];
          v_reason[i] := 'DAILY_LIMIT_EXCEEDED';
          v_details[i] := jsonb_build_object('limit', v_cap[i], 'spent', v_used[i], 'requested', p_amounts[i]);
        elsif m_monthly[m] is not null and m_month[m] + p_amounts[i] > m_monthly[m] then
          v_outcome[i] := 'monthly_limit';
          v_cap[i] := m_monthly[m];
          v_used[i] := m_month[m];
          v_reason[i] := 'MONTHLY_LIMIT_EXCEEDED';
          v_details[i] := jsonb_build_object('limit', v_cap[i], 'spent', v_used[i], 'requested', p_amounts[i]);
        else
          v_before[i] := a_balance[s];
          a_balance[s] := a_balance[s] - p_amounts[i];
          m_today[m] := m_today[m] + p_amounts[i];
          m_month[m] := m_month[m] + p_amounts[i];
          v_outcome[i] := 'ok';
          v_tx[i] := credits.uuid_v7();
          v_available[i] := a_balance[s] - a_reserved[s];
          v_taken[v_first[i]] := i;
          v_posted := true;
          -- a cap used up exactly by this spend: the crossing into "nothing left" (as spendPool decides it)
          if m_daily[m] is not null and m_daily[m] <> 0 and m_today[m] = m_daily[m] then
            e_item := e_item || i;
            e_window := e_window || 'daily'::text;
            e_used := e_used || m_today[m];
          end if;
          if m_monthly[m] is not null and m_monthly[m] <> 0 and m_month[m] = m_monthly[m] then
            e_item := e_item || i;
            e_window := e_window || 'monthly'::text;
            e_used := e_used || m_month[m];
          end if;
        end if;
        if v_outcome[i] in ('insufficient', 'daily_limit', 'monthly_limit') and p_keys[i] is not null then
          -- the refusal takes its key, under this batch's lock of the pool
          v_taken[v_first[i]] := i;
          perform credits.record_refusal('guild', p_users[i], a_guild[s], p_keys[i], p_hashes[i], v_reason[i],
                                         v_details[i]);
          v_recorded := true;
        end if;
      end loop;
      -- a recorded refusal is committed with what was returned on the way, as spendingTransaction commits it
      if not v_posted and not v_recorded and (a_holds[s] > 0 or a_expired[s] > 0) then
        raise exception 'nothing posted' using errcode = 'MC001';
      end if;
    exception when sqlstate 'MC001' then
      a_holds[s] := 0;
      a_expired[s] := 0;
    end;
  end loop;

  if 'ok' = any(v_outcome) then
    -- The posted items' lot portions: one burn per pool for the sum of its items, split back in input order
    -- (credits.burn_split).
    with items as (
      select t.n, t.outcome, t.id, t.guild, t.member, t.amount, t.before, t.available, t.app_id, t.description,
             t.metadata, t.key, t.hash
        from unnest(v_outcome, v_tx, p_guilds, p_users, p_amounts, v_before, v_available, p_apps, p_descriptions,
                    p_metadata, p_keys, p_hashes)
             with ordinality as t(outcome, id, guild, member, amount, before, available, app_id, description,
                                  metadata, key, hash, n)
    ), split as materialized (
      select s.n, s.lot_ids, s.lot_amounts
        from credits.burn_split('guild', p_guilds,
                                array(select case when o.outcome = 'ok' then o.amount end
                                        from unnest(v_outcome, p_amounts) with ordinality as o(outcome, amount, k)
                                       order by o.k)) s
    ), posted as (
      insert into credits.guild_transactions
        (id, organization_id, user_id, type, amount, balance_before, balance_after, available_after, app_id,
         description, metadata, idempotency_key, request_hash, lot_ids, lot_amounts)
      select t.id, t.guild, t.member, 'usage', -t.amount, t.before, t.before - t.amount, t.available, t.app_id,
             t.description, t.metadata, t.key, t.hash, s.lot_ids, s.lot_amounts
        from items t join split s on s.n = t.n
       where t.outcome = 'ok'
       order by t.n
      returning organization_id, user_id, app_id, -amount as spent, (created_at at time zone 'utc')::date as day
    ), member_usage as (
      insert into credits.guild_member_usage as u (organization_id, user_id, day, spent)
      select p.organization_id, p.user_id, p.day, sum(p.spent)::int8
        from posted p
       group by p.organization_id, p.user_id, p.day
       order by p.organization_id collate "C", p.user_id collate "C", p.day
      on conflict (organization_id, user_id, day) do update set spent = u.spent + excluded.spent
    )
    -- usage_stats as the single path writes it: only for a spend that names an app
    insert into credits.usage_stats as u (user_id, app_id, date, credits_used)
    select p.user_id, p.app_id, p.day, sum(p.spent)::int8
      from posted p
     where p.app_id <> ''
     group by p.user_id, p.app_id, p.day
     order by p.user_id collate "C", p.app_id collate "C", p.day
    on conflict (user_id, app_id, date) do update set credits_used = u.credits_used + excluded.credits_used;

    update credits.guild_pools p
       set balance = p.balance - d.spent, total_spent = p.total_spent + d.spent, version = p.version + 1,
           updated_at = now()
      from (select t.guild, sum(t.amount)::int8 as spent
              from unnest(v_outcome, p_guilds, p_amounts) as t(outcome, guild, amount)
             where t.outcome = 'ok' group by t.guild) d
     where p.organization_id = d.guild;

    insert into credits.events (type, user_id, guild_id, data)
    select 'guild.member.limit_reached', p_users[e.item], p_guilds[e.item],
           jsonb_build_object(
             'guildId', p_guilds[e.item], 'userId', p_users[e.item], 'window', e.win,
             'limit', case e.win when 'daily' then m_daily[v_member[e.item]] else m_monthly[v_member[e.item]] end,
             'used', e.used, 'amount', p_amounts[e.item], 'transactionId', v_tx[e.item],
             'reservationId', null)
      from unnest(e_item, e_window, e_used) with ordinality as e(item, win, used, k)
     order by e.k;
  end if;

  return query
    select r.n::int, r.outcome, r.id, r.available, r.cap, r.used,
           case when r.n = min(r.n) over (partition by r.pool) then a_holds[r.pool] else 0 end,
           case when r.n = min(r.n) over (partition by r.pool) then a_expired[r.pool] else 0 end,
           r.reason, r.details
      from unnest(v_outcome, v_tx, v_available, v_cap, v_used, v_pool, v_reason, v_details)
           with ordinality as r(outcome, id, available, cap, used, pool, reason, details, n)
     order by r.n;
end
$$;
