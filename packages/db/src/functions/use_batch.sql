-- credits.use_batch: many usage debits, of one user or of many, in one call (one round trip, one
-- transaction). The one debit function of the personal usage paths: credits.use (coalesced debits of a hot
-- account) and internal.credits.useBatch both call it.
--
-- The items arrive as parallel arrays, element i of each being item i; a null key = a keyless debit.
-- Returns one row per item, in input order: outcome 'ok' (posted), 'replay' (the key was posted before, or
-- earlier in this batch, with the same request), 'conflict' (the key was posted or refused with another
-- request), 'insufficient' (refused now; a keyed refusal is recorded under its key, see refusals.sql) or
-- 'refused' (the key was refused before, or earlier in this batch, with the same request: that refusal
-- again); transaction_id, available (spendable after the item; for 'insufficient', spendable when refused;
-- for 'refused', what the recorded refusal said) and holds_expired (how many lapsed holds this item's check
-- returned, for the metrics).
--
-- How: lock and read every balance row of the batch once, in user_id order (the order every multi-account
-- writer uses, "C" collation so it never depends on locale), and post the expiry of their lapsed lots; decide
-- each item in input order on in-memory copies of the locked balances (expanded PL/pgSQL arrays, O(1) per
-- access); then write everything set-based: one INSERT of all ledger rows (ids time-ordered, credits.uuid_v7;
-- each row naming its lots: one burn per account, split in input order) with the usage upsert fed by it
-- (each counted on the UTC day of its ledger row, as every other usage write does), one UPDATE of the
-- balances. While the balance rows are locked
-- no other writer can post a ledger row or record a refusal for these users, so the key lookup made after
-- locking (ledger rows and refusals, each statement of this volatile function reading a fresh snapshot) cannot
-- be overtaken; should the unique index fire anyway, the whole call fails (nothing written, a certain failure).
-- A keyed item refused here is recorded (credits.record_refusal) under these locks, in this transaction.
-- An item whose user has too little is checked once more after returning that user's expired holds (check
-- on access), so a lapsed hold never refuses a debit. The holds may free credits of a lapsed lot, which expire
-- with them (an `expiry` ledger row written from the stored balance): the items this batch has posted for
-- that user so far are applied to the stored balance first, and every posted item's row is dated when it is
-- decided, so the ledger reads in order — the items before the expiry, the expiry, the items after it. (The
-- expiry row was once written from a balance without the earlier items, and their rows after it.)
-- The result gained holds_expired: a changed result type needs the old function dropped first.
drop function if exists credits.use_batch(text[], int8[], text[], text[], jsonb[], text[], text[]);
create function credits.use_batch(
  p_users text[], p_amounts int8[], p_apps text[], p_descriptions text[], p_metadata jsonb[], p_keys text[],
  p_hashes text[])
returns table (ord int, outcome text, transaction_id uuid, available int8, holds_expired int)
language plpgsql as $$
#variable_conflict use_column
declare
  v_count int := cardinality(p_users);
  -- per item, in input order
  v_slot int[];
  v_first int[];
  v_prior_id uuid[];
  v_prior_hash text[];
  v_prior_available int8[];
  v_refused_hash text[];
  v_refused_available int8[];
  v_outcome text[];
  v_tx uuid[];
  v_before int8[];
  v_at timestamptz[];
  v_last timestamptz := '-infinity';
  v_available int8[];
  v_taken int[];
  v_expired int[];
  -- per account, in user_id order (v_slot points here)
  a_user text[];
  a_balance int8[];
  a_reserved int8[];
  a_checked boolean[];
  a_pending int8[];
  v_lapsed boolean;
  v_missing boolean;
  v_balance int8;
  v_reserved int8;
  v_released int;
  i int;
  s int;
  w int;
begin
  if v_count is null or v_count = 0 then
    return;
  end if;
  v_outcome := array_fill(null::text, array[v_count]);
  v_tx := array_fill(null::uuid, array[v_count]);
  v_before := array_fill(null::int8, array[v_count]);
  v_at := array_fill(null::timestamptz, array[v_count]);
  v_available := array_fill(null::int8, array[v_count]);
  v_taken := array_fill(null::int, array[v_count]);
  v_expired := array_fill(0, array[v_count]);
  -- v_slot: the item's account; v_first: the first item of the batch with the same (user, key)
  select array_agg(u.user_id order by u.user_id collate "C") into a_user
    from (select distinct x.user_id from unnest(p_users) as x(user_id)) u;
  select array_agg(r.slot order by r.n), array_agg(r.first order by r.n)
    into v_slot, v_first
    from (select x.n, dense_rank() over (order by x.user_id collate "C")::int as slot,
                 -- an item without a key is its own first (keyless items are never replays)
                 case when x.key is null then x.n
                      else min(x.n) over (partition by x.user_id, x.key) end::int as first
            from unnest(p_users, p_keys) with ordinality as x(user_id, key, n)) r;

  -- One statement locks the balance rows (in user_id order, the subquery's) and reads them. A user without a
  -- balance row has no row to lock, and a refusal must be decided under a lock (a grant and a debit under the
  -- refused key could commit meanwhile): the missing rows are made, empty, and everything is locked and read
  -- again (a row someone else made meanwhile, with credits, included). Balance rows are never deleted, so the
  -- second round finds them all.
  loop
    select array_agg(coalesce(b.balance, 0) order by u.n), array_agg(coalesce(b.reserved, 0) order by u.n),
           array_agg(false), array_agg(0::int8), coalesce(bool_or(b.next_lot_expiry <= now()), false),
           coalesce(bool_or(b.user_id is null), false)
      into a_balance, a_reserved, a_checked, a_pending, v_lapsed, v_missing
      from unnest(a_user) with ordinality as u(user_id, n)
      left join (select l.user_id, l.balance, l.reserved, l.next_lot_expiry from credits.balances l
                  where l.user_id = any(a_user) order by l.user_id collate "C" for update) b on b.user_id = u.user_id;
    exit when not v_missing;
    insert into credits.balances (user_id)
    select u.user_id from unnest(a_user) as u(user_id) order by u.user_id collate "C"
    on conflict (user_id) do nothing;
  end loop;
  if v_lapsed then
    -- lots whose time is up are expired before anything is decided (no item may count an expired credit)
    perform credits.expire_lots('user', b.user_id) from credits.balances b
      where b.user_id = any(a_user) and b.next_lot_expiry <= now() order by b.user_id collate "C";
    select array_agg(coalesce(b.balance, 0) order by u.n), array_agg(coalesce(b.reserved, 0) order by u.n)
      into a_balance, a_reserved
      from unnest(a_user) with ordinality as u(user_id, n)
      left join credits.balances b on b.user_id = u.user_id;
  end if;
  select array_agg(t.id order by x.n), array_agg(t.request_hash order by x.n),
         array_agg(coalesce(t.available_after, t.balance_after) order by x.n),
         array_agg(f.request_hash order by x.n), array_agg((f.details->>'available')::int8 order by x.n)
    into v_prior_id, v_prior_hash, v_prior_available, v_refused_hash, v_refused_available
    from unnest(p_users, p_keys) with ordinality as x(user_id, key, n)
    -- LATERAL: one index probe per item; a plain join may be planned as a merge join over a range of the index.
    -- offset 0 keeps each a parameterised probe in the generic plan PL/pgSQL caches too (flattened, the refusals
    -- lookup was planned as a scan of every personal refusal, filtered per item).
    left join lateral (select t.id, t.request_hash, t.available_after, t.balance_after from credits.transactions t
                        where t.user_id = x.user_id and t.idempotency_key = x.key offset 0) t on true
    left join lateral (select f.request_hash, f.details from credits.refusals f
                        where f.user_id = x.user_id and f.idempotency_key = x.key and f.key_space = 'personal'
                        offset 0) f on true;

  for i in 1 .. v_count loop
    w := v_taken[v_first[i]];
    v_outcome[i] := credits.key_outcome(p_hashes[i], v_prior_id[i] is not null, v_prior_hash[i],
                                        v_refused_hash[i], p_hashes[w], v_outcome[w] = 'ok');
    if v_outcome[i] = 'replay' and v_prior_id[i] is not null then
      v_tx[i] := v_prior_id[i];
      v_available[i] := v_prior_available[i];
    elsif v_outcome[i] = 'refused' and v_refused_hash[i] is not null then
      v_available[i] := v_refused_available[i];
    elsif v_outcome[i] in ('replay', 'refused') then
      -- the same key appeared earlier in this batch and was posted or refused there
      v_tx[i] := v_tx[w];
      v_available[i] := v_available[w];
    elsif v_outcome[i] is null then
      s := v_slot[i];
      if not a_checked[s] and not credits.covers(a_balance[s], a_reserved[s], null, p_amounts[i]) then
        a_checked[s] := true;
        if a_pending[s] > 0 then
          update credits.balances
             set balance = balance - a_pending[s], total_spent = total_spent + a_pending[s],
                 version = version + 1, updated_at = now()
           where user_id = a_user[s];
          a_pending[s] := 0;
        end if;
        v_released := credits.release_expired_holds(a_user[s], 1000);
        if v_released > 0 then
          v_expired[i] := v_released;
          -- the returned holds may have freed credits of a lapsed lot, which expired with them
          select b.balance, b.reserved into v_balance, v_reserved from credits.balances b where b.user_id = a_user[s];
          a_balance[s] := v_balance;
          a_reserved[s] := v_reserved;
        end if;
      end if;
      if credits.covers(a_balance[s], a_reserved[s], null, p_amounts[i]) then
        v_before[i] := a_balance[s];
        -- dated here, in input order and strictly rising: the row's time orders the ledger (a time left to the
        -- INSERT is taken before its ORDER BY sorts the rows, and an expiry posted meanwhile is later)
        v_last := greatest(clock_timestamp(), v_last + interval '1 microsecond');
        v_at[i] := v_last;
        a_balance[s] := a_balance[s] - p_amounts[i];
        a_pending[s] := a_pending[s] + p_amounts[i];
        v_outcome[i] := 'ok';
        v_tx[i] := credits.uuid_v7();
        v_available[i] := a_balance[s] - a_reserved[s];
        v_taken[v_first[i]] := i;
      else
        v_outcome[i] := 'insufficient';
        v_available[i] := a_balance[s] - a_reserved[s];
        if p_keys[i] is not null then
          -- the refusal takes its key, under this batch's row lock of the account
          v_taken[v_first[i]] := i;
          perform credits.record_refusal('personal', a_user[s], null, p_keys[i], p_hashes[i],
            'INSUFFICIENT_CREDITS', jsonb_build_object('required', p_amounts[i], 'available', v_available[i]));
        end if;
      end if;
    end if;
  end loop;

  -- The posted items' lot portions: one burn per account for the sum of its items, split back in input order
  -- (credits.burn_split).
  with items as (
    select t.n, t.outcome, t.id, t.user_id, t.amount, t.before, t.at, t.available, t.app_id, t.description,
           t.metadata, t.key, t.hash
      from unnest(v_outcome, v_tx, p_users, p_amounts, v_before, v_at, v_available, p_apps, p_descriptions,
                  p_metadata, p_keys, p_hashes)
           with ordinality as t(outcome, id, user_id, amount, before, at, available, app_id, description, metadata,
                                key, hash, n)
  ), split as materialized (
    select s.n, s.lot_ids, s.lot_amounts
      from credits.burn_split('user', p_users,
                              array(select case when o.outcome = 'ok' then o.amount end
                                      from unnest(v_outcome, p_amounts) with ordinality as o(outcome, amount, k)
                                     order by o.k)) s
  ), posted as (
    insert into credits.transactions
      (id, user_id, type, amount, balance_before, balance_after, available_after, app_id, description, metadata,
       idempotency_key, request_hash, lot_ids, lot_amounts, created_at)
    select t.id, t.user_id, 'usage', -t.amount, t.before, t.before - t.amount, t.available, t.app_id,
           t.description, t.metadata, t.key, t.hash, s.lot_ids, s.lot_amounts, t.at
      from items t join split s on s.n = t.n
     where t.outcome = 'ok'
     order by t.n
    returning user_id, app_id, -amount as spent, (created_at at time zone 'utc')::date as day
  )
  insert into credits.usage_stats as u (user_id, app_id, date, credits_used)
  select p.user_id, p.app_id, p.day, sum(p.spent)::int8
    from posted p
   group by p.user_id, p.app_id, p.day
   order by p.user_id collate "C", p.app_id collate "C", p.day
  on conflict (user_id, app_id, date) do update set credits_used = u.credits_used + excluded.credits_used;

  -- what each account's posted items took and was not applied before a return of holds
  update credits.balances b
     set balance = b.balance - d.spent, total_spent = b.total_spent + d.spent, version = b.version + 1,
         updated_at = now()
    from unnest(a_user, a_pending) as d(user_id, spent)
   where b.user_id = d.user_id and d.spent > 0;

  return query
    select r.n::int, r.outcome, r.id, r.available, r.expired
      from unnest(v_outcome, v_tx, v_available, v_expired) with ordinality as r(outcome, id, available, expired, n)
     order by r.n;
end
$$;
