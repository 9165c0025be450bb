import { type Kysely, sql } from 'kysely';

// Frozen: two-phase reservations (holds) and the batch usage function, as of 2026-11-25.
//
// A hold moves no credits: it raises `reserved` on the account (balances, or a guild pool when
// organization_id is set) and writes no ledger row, so Σ ledger = balance stays true. Committing posts one
// `usage` ledger row and lowers balance and reserved together; releasing or expiring only lowers reserved.
//
// Lock order, shared by every writer that touches more than one row: a reservation row first (commit,
// release), then balance rows in user_id order (collation "C"). Writers that hold balance rows never wait for a reservation
// row (they claim them with SKIP LOCKED), so no cycle can form.

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table credits.reservations (
      id uuid primary key default gen_random_uuid(),
      user_id text not null,
      organization_id text,
      amount int8 not null,
      status text not null default 'open',
      app_id text not null,
      description text not null default '',
      metadata jsonb,
      idempotency_key text not null,
      request_hash text not null,
      available_after int8 not null,
      expires_at timestamptz not null,
      committed_amount int8,
      released_amount int8,
      transaction_id uuid,
      commit_hash text,
      created_at timestamptz not null default clock_timestamp(),
      updated_at timestamptz not null default clock_timestamp(),
      closed_at timestamptz,
      constraint reservations_status_known check (status in ('open', 'committed', 'released', 'expired')),
      constraint reservations_amount_positive check (amount > 0 and amount <= 9007199254740991),
      constraint reservations_settlement check (
        (status = 'open' and committed_amount is null and released_amount is null and transaction_id is null
          and closed_at is null)
        or (status = 'committed' and committed_amount > 0 and committed_amount <= amount
          and released_amount = amount - committed_amount and transaction_id is not null and commit_hash is not null
          and closed_at is not null)
        or (status in ('released', 'expired') and committed_amount is null and released_amount = amount
          and transaction_id is null and closed_at is not null))
    )`.execute(db);
  await sql`create unique index reservations_user_idempotency_key on credits.reservations (user_id, idempotency_key)`.execute(
    db,
  );
  // Both partial indexes only hold open reservations, so they stay small however long the history grows.
  await sql`create index reservations_open_expiry on credits.reservations (expires_at) where status = 'open'`.execute(
    db,
  );
  await sql`create index reservations_open_by_user on credits.reservations (user_id, expires_at) where status = 'open'`.execute(
    db,
  );

  // Returns expired personal holds to their accounts: for one user (check on access) or for everyone (the
  // periodic sweep), at most p_limit per call. Holds are claimed with SKIP LOCKED, so two sweeping instances
  // never take the same hold and never wait for a commit in progress (that commit settles the hold itself);
  // the conditional status makes a hold return exactly once. Returns how many holds were returned.
  // Pool holds (organization_id set) are settled against credits.guild_pools and are left alone here.
  await sql`
    create function credits.release_expired_holds(p_user_id text, p_limit int)
    returns int language plpgsql as $$
    declare
      v_ids uuid[];
    begin
      if p_user_id is null then
        select array_agg(id) into v_ids from (
          select id from credits.reservations
           where status = 'open' and expires_at <= now() and organization_id is null
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
        where user_id in (select user_id from credits.reservations where id = any(v_ids))
        order by user_id collate "C" for update;
      with closed as (
        update credits.reservations
           set status = 'expired', released_amount = amount, closed_at = now(), updated_at = now()
         where id = any(v_ids) and status = 'open'
        returning user_id, amount
      )
      update credits.balances b
         set reserved = b.reserved - c.total, version = b.version + 1, updated_at = now()
        from (select user_id, sum(amount)::int8 as total from closed group by user_id) c
       where b.user_id = c.user_id;
      return cardinality(v_ids);
    end
    $$`.execute(db);

  // Batch usage in one call (one round trip, one transaction) instead of one transaction per item.
  // The items arrive as parallel arrays (already validated by the server), element i of each being item i.
  // Returns one row per item, in input order: outcome 'ok' (posted), 'replay' (the key was posted before
  // with the same request), 'conflict' (the key was posted with another request) or 'insufficient';
  // transaction_id, and available (spendable after the item; for 'insufficient', spendable when refused).
  //
  // How: lock every balance row of the batch once, in user_id order (the order every multi-account writer
  // uses, "C" collation so it never depends on locale); decide each item in input order on in-memory copies
  // of the locked balances (expanded PL/pgSQL arrays, O(1) per access); then write everything set-based:
  // one INSERT of all ledger rows, one UPDATE of the balances, one usage upsert. Per item that leaves a few
  // array operations plus the ledger insert itself, which is most of the cost. While the balance rows are
  // locked no other writer can post a ledger row for these users, so the key lookup made after locking
  // cannot be overtaken; should the unique index fire anyway, the whole call fails and the server retries
  // it (every item is idempotent). An item whose user has too little is checked once more after returning
  // that user's expired holds (check on access).
  // Measured with packages/server/scripts/measure-use-batch.ts on the 2-core machine (while other test runs
  // shared it): about 40 ms of Postgres CPU per 1,000 debits, 16,000 debits/s for the call alone from one
  // caller; a third of that time is the ledger INSERT with its three indexes.
  await sql`
    create function credits.use_batch(
      p_users text[], p_amounts int8[], p_apps text[], p_descriptions text[], p_metadata jsonb[], p_keys text[],
      p_hashes text[])
    returns table (ord int, outcome text, transaction_id uuid, available int8)
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
      v_outcome text[];
      v_tx uuid[];
      v_before int8[];
      v_available int8[];
      v_winner int[];
      -- per account, in user_id order (v_slot points here)
      a_user text[];
      a_balance int8[];
      a_reserved int8[];
      a_checked boolean[];
      v_reserved int8;
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
      v_available := array_fill(null::int8, array[v_count]);
      v_winner := array_fill(null::int, array[v_count]);
      -- v_slot: the item's account; v_first: the first item of the batch with the same (user, key)
      select array_agg(u.user_id order by u.user_id collate "C") into a_user
        from (select distinct x.user_id from unnest(p_users) as x(user_id)) u;
      select array_agg(r.slot order by r.n), array_agg(r.first order by r.n)
        into v_slot, v_first
        from (select x.n, dense_rank() over (order by x.user_id collate "C")::int as slot,
                     min(x.n) over (partition by x.user_id, x.key)::int as first
                from unnest(p_users, p_keys) with ordinality as x(user_id, key, n)) r;

      perform 1 from credits.balances where user_id = any(a_user) order by user_id collate "C" for update;

      select array_agg(coalesce(b.balance, 0) order by u.n), array_agg(coalesce(b.reserved, 0) order by u.n),
             array_agg(false)
        into a_balance, a_reserved, a_checked
        from unnest(a_user) with ordinality as u(user_id, n)
        left join credits.balances b on b.user_id = u.user_id;
      select array_agg(t.id order by x.n), array_agg(t.request_hash order by x.n),
             array_agg(coalesce(t.available_after, t.balance_after) order by x.n)
        into v_prior_id, v_prior_hash, v_prior_available
        from unnest(p_users, p_keys) with ordinality as x(user_id, key, n)
        left join credits.transactions t on t.user_id = x.user_id and t.idempotency_key = x.key;

      for i in 1 .. v_count loop
        w := v_winner[v_first[i]];
        if v_prior_id[i] is not null then
          if v_prior_hash[i] is not distinct from p_hashes[i] then
            v_outcome[i] := 'replay';
            v_tx[i] := v_prior_id[i];
            v_available[i] := v_prior_available[i];
          else
            v_outcome[i] := 'conflict';
          end if;
        elsif w is not null then
          -- the same key appeared earlier in this batch and was posted there
          if p_hashes[w] = p_hashes[i] then
            v_outcome[i] := 'replay';
            v_tx[i] := v_tx[w];
            v_available[i] := v_available[w];
          else
            v_outcome[i] := 'conflict';
          end if;
        else
          s := v_slot[i];
          if a_balance[s] - a_reserved[s] < p_amounts[i] and not a_checked[s] then
            a_checked[s] := true;
            if credits.release_expired_holds(a_user[s], 1000) > 0 then
              select b.reserved into v_reserved from credits.balances b where b.user_id = a_user[s];
              a_reserved[s] := v_reserved;
            end if;
          end if;
          if a_balance[s] - a_reserved[s] >= p_amounts[i] then
            v_before[i] := a_balance[s];
            a_balance[s] := a_balance[s] - p_amounts[i];
            v_outcome[i] := 'ok';
            v_tx[i] := gen_random_uuid();
            v_available[i] := a_balance[s] - a_reserved[s];
            v_winner[v_first[i]] := i;
          else
            v_outcome[i] := 'insufficient';
            v_available[i] := a_balance[s] - a_reserved[s];
          end if;
        end if;
      end loop;

      insert into credits.transactions
        (id, user_id, type, amount, balance_before, balance_after, available_after, app_id, description, metadata,
         idempotency_key, request_hash)
      select t.id, t.user_id, 'usage', -t.amount, t.before, t.before - t.amount, t.available, t.app_id,
             t.description, t.metadata, t.key, t.hash
        from unnest(v_outcome, v_tx, p_users, p_amounts, v_before, v_available, p_apps, p_descriptions, p_metadata,
                    p_keys, p_hashes)
             as t(outcome, id, user_id, amount, before, available, app_id, description, metadata, key, hash)
       where t.outcome = 'ok';

      update credits.balances b
         set balance = b.balance - d.spent, total_spent = b.total_spent + d.spent, version = b.version + 1,
             updated_at = now()
        from (select t.user_id, sum(t.amount)::int8 as spent
                from unnest(v_outcome, p_users, p_amounts) as t(outcome, user_id, amount)
               where t.outcome = 'ok' group by t.user_id) d
       where b.user_id = d.user_id;

      insert into credits.usage_stats as u (user_id, app_id, date, credits_used)
      select t.user_id, t.app_id, (now() at time zone 'utc')::date, sum(t.amount)::int8
        from unnest(v_outcome, p_users, p_apps, p_amounts) as t(outcome, user_id, app_id, amount)
       where t.outcome = 'ok'
       group by t.user_id, t.app_id
       order by t.user_id collate "C", t.app_id collate "C"
      on conflict (user_id, app_id, date) do update set credits_used = u.credits_used + excluded.credits_used;

      return query
        select r.n::int, r.outcome, r.id, r.available
          from unnest(v_outcome, v_tx, v_available) with ordinality as r(outcome, id, available, n)
         order by r.n;
    end
    $$`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop function credits.use_batch(text[], int8[], text[], text[], jsonb[], text[], text[])`.execute(
    db,
  );
  await sql`drop function credits.release_expired_holds(text, int)`.execute(db);
  await sql`drop table credits.reservations`.execute(db);
}
