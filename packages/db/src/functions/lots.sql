-- Credit lots: the burn order, written once, and every way credits enter, leave, pin and expire from lots.
-- Each function is called by a money statement right after that statement has locked the account row (by
-- LATERAL on the account update's RETURNING, so it runs only when the update wrote a row): lot rows are only
-- ever written under their account's row lock, which is what serialises them. These are volatile PL/pgSQL
-- functions on purpose: each of their statements takes a fresh snapshot, so they read the lots as they are
-- under the lock — a CTE of the calling statement would read them as of before it waited for the lock.
-- A portion list is two arrays: lot_ids[i] gave or took lot_amounts[i] (> 0) credits.

-- credits.burn_lots: takes from each account p_accounts[i] p_amounts[i] credits of its lots in THE burn order
-- — priority ascending, then the soonest expiry (never-expiring last), then the oldest, then id — skipping
-- expired and pinned credits. p_pin = false burns them (remaining falls); p_pin = true pins them for a hold
-- (pinned grows). One row per account with an amount > 0: the lots it took from, in burn order. Lots named in
-- p_first give before all others (in the burn order among themselves): a clawback takes back a refunded
-- purchase's own credits before any other, so what the buyer got elsewhere stays theirs.
-- Set-based (one read and one update of all the accounts' lots: a batch of debits over many accounts burns
-- with two statements instead of two per account): each lot gives what is still missing after the lots
-- before it in the order, which is the running sum of the free credits over the account's lots.
-- The caller has checked the accounts (credits.covers), so their lots cover the amounts; if they do not,
-- lots and balance disagree and the statement fails rather than write a ledger row without its lots.
-- The update finds each lot by its id. (It used the ctid the read found it at, to save a descent of lots_pkey,
-- but a lot row written meanwhile by a writer that does not take the account lock — the expiring-notice job
-- setting expiry_noticed — has a new ctid, the update's recheck of the new version then fails `ctid = tid`,
-- and the lot was silently not burned while the balance and the ledger row were written.) The statement
-- also fails if any lot it took from was not written.
-- (The drops remove the versions without p_first: beside them, a call without it would match two functions.)
drop function if exists credits.take_lots(text, text, int8, boolean);
drop function if exists credits.take_lots_from(text, text, int8, uuid[]);
drop function if exists credits.burn_lots(text, text[], int8[], boolean);
create or replace function credits.burn_lots(p_kind text, p_accounts text[], p_amounts int8[], p_pin boolean,
  p_first uuid[] default '{}')
returns table (account_id text, lot_ids uuid[], lot_amounts int8[])
language plpgsql as $$
#variable_conflict use_column
begin
  return query
    with wanted as (
      select w.account_id, w.amount from unnest(p_accounts, p_amounts) as w(account_id, amount) where w.amount > 0
    ), runs as (
      select l.id, l.account_id, w.amount, l.remaining - l.pinned as free,
             (sum(l.remaining - l.pinned) over burn)::int8 as upto, row_number() over burn as k
        from wanted w
       -- One index range of lots_burn_order per account (offset 0 keeps the subquery a parameterised scan):
       -- joined flat, the generic plan PL/pgSQL caches after a few calls read every lot of p_kind and filtered
       -- them per account (28 ms instead of 3 for a batch of 100 accounts over 2,000 lots; worse with more).
       cross join lateral (
         select c.id, c.account_id, c.remaining, c.pinned, c.priority, c.expires_at, c.created_at
           from credits.lots c
          where c.account_kind = p_kind and c.account_id = w.account_id
            and not c.spent and c.remaining > c.pinned and (c.expires_at is null or c.expires_at > now())
         offset 0) l
      window burn as (partition by l.account_id
                      order by l.id = any(p_first) desc, l.priority, l.expires_at, l.created_at, l.id)
    ), taken as (
      select r.id, r.account_id, r.k, least(r.free, r.amount - (r.upto - r.free)) as amount
        from runs r
       where r.upto - r.free < r.amount
    ), written as (
      update credits.lots l
         set remaining = l.remaining - case when p_pin then 0 else t.amount end,
             pinned = l.pinned + case when p_pin then t.amount else 0 end
        from taken t
       where l.id = t.id
      returning l.account_id, t.amount
    ), wrote as (
      select x.account_id, sum(x.amount) as amount from written x group by x.account_id
    )
    select w.account_id, t.lot_ids, t.lot_amounts
      from wanted w
      left join (select t.account_id, array_agg(t.id order by t.k) as lot_ids,
                        array_agg(t.amount order by t.k) as lot_amounts
                   from taken t group by t.account_id) t on t.account_id = w.account_id
      left join wrote x on x.account_id = w.account_id
     -- the PL/pgSQL call only when it fails (a call per account cost more than the check): the lots must cover
     -- the amount, and every credit taken must have been written
     where case when coalesce(x.amount, 0) >= w.amount then true
                else credits.lots_cover(p_kind, w.account_id, w.amount, coalesce(x.amount, 0)) end;
end
$$;

-- The failure of credits.burn_lots when an account's lots do not cover what it was asked to take.
create or replace function credits.lots_cover(p_kind text, p_account text, p_amount int8, p_took numeric)
returns boolean language plpgsql as $$
begin
  if p_took < p_amount then
    raise exception 'the lots of % % cannot cover % credits (% missing)', p_kind, p_account, p_amount,
      p_amount - p_took using errcode = 'internal_error';
  end if;
  return true;
end
$$;

-- credits.burn_split: the lots of many debits at once, for the batch functions (use_batch, pool_use_batch).
-- Item i debits p_amounts[i] from account p_accounts[i] (null or 0: not posted, no portions). Each account
-- burns once, for the sum of its items (credits.burn_lots), and the burned run is split back over its items
-- in input order: item i gets the part [c_i - amount_i, c_i) of the run, c_i being the running sum of the
-- account's items up to i. The same portions as burning the items one by one (the burn order does not move
-- within the transaction), with one lot update per lot instead of one per item. One row per posted item: its
-- position (1-based) and its portions.
create or replace function credits.burn_split(p_kind text, p_accounts text[], p_amounts int8[])
returns table (n int8, lot_ids uuid[], lot_amounts int8[])
language plpgsql as $$
#variable_conflict use_column
begin
  return query
    with items as (
      select x.n, x.account_id, x.amount, sum(x.amount) over (partition by x.account_id order by x.n) as c
        from unnest(p_accounts, p_amounts) with ordinality as x(account_id, amount, n)
       where x.amount > 0
    ), totals as (
      select array_agg(t.account_id) as accounts, array_agg(t.total) as amounts
        from (select i.account_id, sum(i.amount)::int8 as total from items i group by i.account_id) t
    ), burned as materialized (
      select l.account_id, p.k, p.lot_id, p.amount,
             sum(p.amount) over (partition by l.account_id order by p.k) as pc
        from totals a
       cross join lateral credits.burn_lots(p_kind, a.accounts, a.amounts, false) l
       cross join lateral unnest(l.lot_ids, l.lot_amounts) with ordinality as p(lot_id, amount, k)
    )
    select i.n, array_agg(b.lot_id order by b.k),
           array_agg((least(i.c, b.pc) - greatest(i.c - i.amount, b.pc - b.amount))::int8 order by b.k)
      from items i
      join burned b on b.account_id = i.account_id and b.pc > i.c - i.amount and b.pc - b.amount < i.c
     group by i.n;
end
$$;

-- credits.take_lots: credits.burn_lots for one account (the single debit, hold and pool statements call it
-- LATERAL on their account update; a clawback names the lots that give first); nothing to take gives empty
-- portion lists.
create or replace function credits.take_lots(
  p_kind text, p_account text, p_amount int8, p_pin boolean, p_first uuid[] default '{}',
  out lot_ids uuid[], out lot_amounts int8[])
language plpgsql as $$
begin
  select b.lot_ids, b.lot_amounts into lot_ids, lot_amounts
    from credits.burn_lots(p_kind, array[p_account], array[p_amount], p_pin, p_first) b;
  lot_ids := coalesce(lot_ids, '{}');
  lot_amounts := coalesce(lot_amounts, '{}');
end
$$;

-- credits.add_lot: a new lot of p_amount credits (a purchase, a grant, a refund with no lot to return to).
create or replace function credits.add_lot(
  p_kind text, p_account text, p_amount int8, p_source text, p_category text, p_priority int,
  p_expires_at timestamptz, out lot_ids uuid[], out lot_amounts int8[])
language sql as $$
  insert into credits.lots (account_kind, account_id, source, category, priority, amount, remaining, expires_at)
  values (p_kind, p_account, p_source, p_category, p_priority, p_amount, p_amount, p_expires_at)
  returning array[id], array[amount]
$$;

-- credits.mirror_lots: credits moved from other lots (funding a pool, a gift portion) arrive as one new lot
-- per source portion with the source lot's expiry and priority, so credits never gain a later expiry by
-- moving. p_category null keeps the source category; 'promotional' demotes (gifts received); p_priority null
-- keeps the source priority.
create or replace function credits.mirror_lots(
  p_kind text, p_account text, p_from_ids uuid[], p_from_amounts int8[], p_source text, p_category text,
  p_priority int, out lot_ids uuid[], out lot_amounts int8[])
language sql as $$
  with made as (
    insert into credits.lots (account_kind, account_id, source, category, priority, amount, remaining, expires_at)
    select p_kind, p_account, p_source, coalesce(p_category, l.category), coalesce(p_priority, l.priority),
           x.amount, x.amount, l.expires_at
      from unnest(p_from_ids, p_from_amounts) with ordinality as x(id, amount, n)
      join credits.lots l on l.id = x.id
     order by x.n
    returning id, amount
  )
  select coalesce(array_agg(id), '{}'), coalesce(array_agg(amount), '{}') from made
$$;

-- credits.return_lots: credits given back to the lots they left (a refund of a use, a gift's unclaimed
-- escrow): their expiry never moves. A lot whose time has passed gets them back and is expired by
-- credits.expire_lots in the same transaction (the caller lowers next_lot_expiry so that it must).
create or replace function credits.return_lots(p_ids uuid[], p_amounts int8[], out lot_ids uuid[],
  out lot_amounts int8[])
language plpgsql as $$
begin
  update credits.lots l set remaining = l.remaining + x.amount
    from (select id, sum(amount)::int8 as amount from unnest(p_ids, p_amounts) as u(id, amount) group by id) x
   where l.id = x.id;
  lot_ids := p_ids;
  lot_amounts := p_amounts;
end
$$;

-- credits.settle_pins: ends a hold's pins. The first p_consume credits of its portions (pinned in burn order)
-- are consumed (they leave their lots), the rest is only unpinned. Returns the consumed portions: what the
-- commit's ledger row names. p_consume = 0 is a release.
create or replace function credits.settle_pins(p_ids uuid[], p_amounts int8[], p_consume int8,
  out lot_ids uuid[], out lot_amounts int8[])
language plpgsql as $$
begin
  with portions as (
    select x.id, x.amount, x.n,
           greatest(0, least(x.amount, p_consume - (sum(x.amount) over (order by x.n) - x.amount)))::int8 as used
      from unnest(p_ids, p_amounts) with ordinality as x(id, amount, n)
  ), settled as (
    update credits.lots l set pinned = l.pinned - p.amount, remaining = l.remaining - p.used
      from portions p
     where l.id = p.id
    returning l.id
  )
  select coalesce(array_agg(p.id order by p.n) filter (where p.used > 0), '{}'),
         coalesce(array_agg(p.used order by p.n) filter (where p.used > 0), '{}')
    into lot_ids, lot_amounts
    from portions p
   where (select count(*) from settled) >= 0;
end
$$;

-- credits.lots_expiry(ids): the earliest expiry among these lots (null: none expires). What an account's
-- next_lot_expiry is lowered to when credits return to, or are unpinned in, these lots.
create or replace function credits.lots_expiry(p_ids uuid[]) returns timestamptz
language sql stable as $$
  select min(expires_at) from credits.lots where id = any(p_ids)
$$;

-- credits.expire_lots: the expiry of one account, written once. Locks the account row; if its
-- next_lot_expiry has passed, every lot whose time is up loses its unpinned credits with one `expiry` ledger
-- row each (negative, a system key in the namespace no caller can reach, numbered by what the lot had
-- already lost to expiry), the account balance falls by as much, a `credits.expired` event is written, and
-- next_lot_expiry moves to the next lot that can expire. Pinned credits wait for their hold: what it releases
-- is expired by the next call. Under the row lock, two instances never expire the same credits twice.
-- p_cause names the ledger entry whose own transaction made credits expire (a refund returned to a lapsed
-- lot, a commit that freed part of one): its expiry rows say so in their metadata (`causedBy`), so a replay
-- of that entry answers what was spendable after them, as the first call did. Returns the credits expired.
-- (The drop removes the two-argument version this one replaced; "or replace" lets the file be applied again
-- over itself, as every change to this file does.)
drop function if exists credits.expire_lots(text, text);
create or replace function credits.expire_lots(p_kind text, p_account text, p_cause uuid default null) returns int8
language plpgsql as $$
declare
  v_next timestamptz;
  v_lot record;
  v_balance int8;
  v_reserved int8;
  v_total int8 := 0;
  v_tx uuid;
  v_metadata jsonb := case when p_cause is null then null else jsonb_build_object('causedBy', p_cause) end;
begin
  if p_kind = 'user' then
    select next_lot_expiry into v_next from credits.balances where user_id = p_account for update;
  else
    select next_lot_expiry into v_next from credits.guild_pools where organization_id = p_account for update;
  end if;
  if v_next is null or v_next > now() then
    return 0;
  end if;
  for v_lot in
    select id, remaining - pinned as lapsed, expired, expires_at, category, source from credits.lots
     where account_kind = p_kind and account_id = p_account and not spent and remaining > pinned
       and expires_at <= now()
     order by expires_at, created_at, id
  loop
    update credits.lots set remaining = pinned, expired = expired + v_lot.lapsed where id = v_lot.id;
    if p_kind = 'user' then
      update credits.balances
         set balance = balance - v_lot.lapsed, total_expired = total_expired + v_lot.lapsed,
             version = version + 1, updated_at = now()
       where user_id = p_account
      returning balance, reserved into v_balance, v_reserved;
      insert into credits.transactions
        (user_id, type, amount, balance_before, balance_after, available_after, description, metadata,
         idempotency_key, lot_ids, lot_amounts)
      values (p_account, 'expiry', -v_lot.lapsed, v_balance + v_lot.lapsed, v_balance, v_balance - v_reserved,
              'Credits expired', v_metadata, E'\x1f' || 'expiry:' || v_lot.id || ':' || v_lot.expired,
              array[v_lot.id], array[v_lot.lapsed])
      returning id into v_tx;
    else
      update credits.guild_pools
         set balance = balance - v_lot.lapsed, total_expired = total_expired + v_lot.lapsed,
             version = version + 1, updated_at = now()
       where organization_id = p_account
      returning balance, reserved into v_balance, v_reserved;
      insert into credits.guild_transactions
        (organization_id, user_id, type, amount, balance_before, balance_after, available_after, description,
         metadata, idempotency_key, lot_ids, lot_amounts)
      values (p_account, '', 'expiry', -v_lot.lapsed, v_balance + v_lot.lapsed, v_balance, v_balance - v_reserved,
              'Credits expired', v_metadata, E'\x1f' || 'expiry:' || v_lot.id || ':' || v_lot.expired,
              array[v_lot.id], array[v_lot.lapsed])
      returning id into v_tx;
    end if;
    insert into credits.events (type, user_id, guild_id, data)
    values ('credits.expired',
            case when p_kind = 'user' then p_account end,
            case when p_kind = 'guild' then p_account end,
            jsonb_build_object(
              case when p_kind = 'user' then 'userId' else 'guildId' end, p_account,
              'lotId', v_lot.id, 'amount', v_lot.lapsed, 'expiresAt', v_lot.expires_at,
              'category', v_lot.category, 'source', v_lot.source,
              'available', v_balance - v_reserved, 'transactionId', v_tx));
    v_total := v_total + v_lot.lapsed;
  end loop;
  v_next := (select min(expires_at) from credits.lots
              where account_kind = p_kind and account_id = p_account and not spent and remaining > pinned
                and expires_at is not null);
  if p_kind = 'user' then
    update credits.balances set next_lot_expiry = v_next where user_id = p_account;
  else
    update credits.guild_pools set next_lot_expiry = v_next where organization_id = p_account;
  end if;
  return v_total;
end
$$;

-- credits.expire_due_lots: the sweep. Expires the accounts whose next_lot_expiry has passed, at most p_limit,
-- each in this one transaction; accounts another instance has locked are skipped (SKIP LOCKED) and left to
-- it or the next pass. Returns the credits expired from users' balances and from pools, and how many accounts
-- it went through (some expire nothing: their lots were spent before their expiry, the date was stale; each
-- leaves with its next expiry recomputed, so a sweep draining passes until `accounts` is 0 ends).
drop function if exists credits.expire_due_lots(int);
create function credits.expire_due_lots(p_limit int, out personal int8, out pools int8, out accounts int)
language plpgsql as $$
declare
  v_account record;
begin
  personal := 0;
  pools := 0;
  accounts := 0;
  for v_account in
    select user_id from credits.balances
     where next_lot_expiry <= now() order by user_id limit p_limit for update skip locked
  loop
    personal := personal + credits.expire_lots('user', v_account.user_id);
    accounts := accounts + 1;
  end loop;
  for v_account in
    select organization_id from credits.guild_pools
     where next_lot_expiry <= now() order by organization_id limit p_limit for update skip locked
  loop
    pools := pools + credits.expire_lots('guild', v_account.organization_id);
    accounts := accounts + 1;
  end loop;
end
$$;

-- credits.notice_expiring_lots: writes one `credits.expiring` event per lot whose credits (some left, not
-- expired yet) expire within p_days, at most p_limit per call, and marks the lot so it is never noticed twice.
-- Lots are claimed with SKIP LOCKED, so instances sweeping together notice each lot once; only the flag is
-- written (a burn that waits for the row lock meanwhile finds the lot as it was). Returns how many it noticed.
create or replace function credits.notice_expiring_lots(p_days int, p_limit int) returns int
language plpgsql as $$
declare
  v_count int;
begin
  with due as (
    select id from credits.lots
     where not spent and remaining > pinned and expires_at is not null and expires_at > now()
       and expires_at <= now() + make_interval(days => p_days) and not expiry_noticed
     order by expires_at limit p_limit
       for update skip locked
  ), noticed as (
    update credits.lots l set expiry_noticed = true from due where l.id = due.id
    returning l.id, l.account_kind, l.account_id, l.remaining, l.expires_at, l.category, l.source
  ), written as (
    insert into credits.events (type, user_id, guild_id, data)
    select 'credits.expiring',
           case when account_kind = 'user' then account_id end,
           case when account_kind = 'guild' then account_id end,
           jsonb_build_object(case when account_kind = 'user' then 'userId' else 'guildId' end, account_id,
                              'lotId', id, 'amount', remaining, 'expiresAt', expires_at,
                              'category', category, 'source', source)
      from noticed order by expires_at, id
    returning 1
  )
  select count(*) into v_count from written;
  return v_count;
end
$$;
