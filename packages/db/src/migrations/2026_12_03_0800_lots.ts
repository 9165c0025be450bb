import { type Kysely, sql } from 'kysely';

// Frozen: credit lots (issue 15). Every credit in an account (a user's balance or a guild pool) belongs to a
// lot with its own source, category, priority and expiry; credits leave in burn order (the function
// credits.take_lots, packages/db/src/functions/lots.sql). Never imports application types.
//
// - credits.lots: `remaining` is what is left of the lot, `pinned` the part of it held by open holds, `expired`
//   what left it by expiry. Per account Σ remaining = balance and Σ pinned = reserved (reconcile checks both).
// - Ledger rows and reservations name their lot portions: `lot_ids[i]` gave or took `lot_amounts[i]` credits
//   (positive; the row's sign says which way). Arrays on the append-only row, written by the statement that
//   writes the row: no second table, no second INSERT per debit.
// - `next_lot_expiry` on an account: never later than the earliest expiry of a lot with unpinned credits.
//   credits.covers refuses a spend while it has passed, so the spend path expires the lapsed lots first (the
//   check on access) and no spend ever counts an expired credit.
// - Existing balances become lots without expiry: paid up to what the account bought (net of clawbacks),
//   promotional for the rest; open holds pin them in burn order. These `opening` lots have no ledger row of
//   their own (the balance they split was already in the ledger).
// - `expiry_noticed`: the credits.expiring event of the lot was written (once per lot).

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table credits.lots (
      id uuid primary key default gen_random_uuid(),
      account_kind text not null,
      account_id text not null,
      source text not null,
      category text not null,
      priority int2 not null,
      amount int8 not null,
      remaining int8 not null,
      pinned int8 not null default 0,
      expired int8 not null default 0,
      expires_at timestamptz,
      opening boolean not null default false,
      expiry_noticed boolean not null default false,
      spent boolean generated always as (remaining = 0) stored,
      created_at timestamptz not null default now(),
      constraint lots_account_kind_known check (account_kind in ('user', 'guild')),
      constraint lots_source_known check (source in ('purchase', 'grant', 'gift', 'refund', 'funding')),
      constraint lots_category_known check (category in ('paid', 'promotional')),
      constraint lots_priority_range check (priority between 0 and 100),
      constraint lots_amount_range check (amount > 0 and amount <= 9007199254740991),
      constraint lots_remaining_range check (
        pinned >= 0 and pinned <= remaining and expired >= 0 and remaining + expired <= amount)
    ) with (fillfactor = 80)`.execute(db);
  // The burn order is the index order: a burn reads the first rows of one range and stops. Neither index
  // names `remaining` or `pinned` (only `spent`, which changes once, when a lot empties): so a debit's update
  // of a lot is a HOT update (no new index entries; room left on the page by the fillfactor), and a hot lot
  // burned thousands of times does not grow the indexes a burn walks.
  await sql`
    create index lots_burn_order on credits.lots (account_kind, account_id, priority, expires_at, created_at, id)
     where not spent`.execute(db);
  // The expiry sweep's and the notices' work list: lots with credits left that can expire.
  await sql`
    create index lots_expiry on credits.lots (expires_at) where expires_at is not null and not spent`.execute(
    db,
  );

  for (const table of ['transactions', 'guild_transactions', 'reservations']) {
    await sql`
      alter table ${sql.table(`credits.${table}`)}
        add column lot_ids uuid[],
        add column lot_amounts int8[],
        add constraint ${sql.ref(`${table}_lot_portions`)} check (
          (lot_ids is null) = (lot_amounts is null)
          and coalesce(cardinality(lot_ids) = cardinality(lot_amounts), true))`.execute(db);
  }
  for (const table of ['balances', 'guild_pools']) {
    await sql`
      alter table ${sql.table(`credits.${table}`)}
        add column next_lot_expiry timestamptz,
        add column total_expired int8 not null default 0`.execute(db);
  }
  await sql`alter table credits.packages add column validity_days int4,
    add constraint packages_validity_days_range check (validity_days between 1 and 3650)`.execute(db);
  await sql`alter table credits.purchases add column validity_days int4`.execute(db);

  await sql`alter table credits.transactions drop constraint transactions_type_known`.execute(db);
  await sql`
    alter table credits.transactions add constraint transactions_type_known
      check (type in ('purchase', 'usage', 'refund', 'gift', 'guild_funding', 'grant', 'clawback', 'expiry'))`.execute(
    db,
  );
  await sql`alter table credits.guild_transactions drop constraint guild_transactions_type_known`.execute(db);
  await sql`
    alter table credits.guild_transactions add constraint guild_transactions_type_known
      check (type in ('funding', 'usage', 'refund', 'expiry'))`.execute(db);

  // Existing balances: a paid lot of what was bought (net of clawbacks) and a promotional lot for the rest.
  await sql`
    insert into credits.lots (account_kind, account_id, source, category, priority, amount, remaining, opening)
    select 'user', a.user_id, s.source, s.category, s.priority, s.amount, s.amount, true
      from (
        select b.user_id, b.balance, least(b.balance, greatest(coalesce(p.bought, 0), 0)) as paid
          from credits.balances b
          left join (select user_id, sum(amount)::int8 as bought from credits.transactions
                      where type in ('purchase', 'clawback') group by user_id) p on p.user_id = b.user_id
         where b.balance > 0
      ) a
     cross join lateral (values ('purchase', 'paid', 50, a.paid), ('grant', 'promotional', 10, a.balance - a.paid))
           as s(source, category, priority, amount)
     where s.amount > 0`.execute(db);
  await sql`
    insert into credits.lots (account_kind, account_id, source, category, priority, amount, remaining, opening)
    select 'guild', organization_id, 'funding', 'promotional', 10, balance, balance, true
      from credits.guild_pools where balance > 0`.execute(db);

  // Open holds pin the opening lots in burn order (priority first): hold i takes the credits
  // [start_i, end_i) of its account's lots laid end to end in that order.
  await sql`
    with holds as (
      select r.id, coalesce(r.organization_id, r.user_id) as account_id,
             case when r.organization_id is null then 'user' else 'guild' end as account_kind,
             sum(r.amount) over w - r.amount as start_at, sum(r.amount) over w as end_at
        from credits.reservations r
       where r.status = 'open'
      window w as (partition by r.organization_id, case when r.organization_id is null then r.user_id end
                   order by r.created_at, r.id)
    ), lots as (
      select l.id, l.account_kind, l.account_id,
             sum(l.amount) over w - l.amount as start_at, sum(l.amount) over w as end_at
        from credits.lots l
      window w as (partition by l.account_kind, l.account_id order by l.priority, l.created_at, l.id)
    ), portions as (
      select h.id as hold_id, l.id as lot_id, l.start_at as lot_start,
             least(h.end_at, l.end_at) - greatest(h.start_at, l.start_at) as amount
        from holds h
        join lots l on l.account_kind = h.account_kind and l.account_id = h.account_id
                   and l.start_at < h.end_at and h.start_at < l.end_at
    ), pinned as (
      update credits.lots l set pinned = s.amount
        from (select lot_id, sum(amount)::int8 as amount from portions group by lot_id) s
       where l.id = s.lot_id
      returning l.id
    )
    update credits.reservations r
       set lot_ids = p.ids, lot_amounts = p.amounts
      from (select hold_id, array_agg(lot_id order by lot_start) as ids,
                   array_agg(amount order by lot_start) as amounts
              from portions group by hold_id) p
     where r.id = p.hold_id and (select count(*) from pinned) >= 0`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`alter table credits.guild_transactions drop constraint guild_transactions_type_known`.execute(db);
  await sql`
    alter table credits.guild_transactions add constraint guild_transactions_type_known
      check (type in ('funding', 'usage', 'refund'))`.execute(db);
  await sql`alter table credits.transactions drop constraint transactions_type_known`.execute(db);
  await sql`
    alter table credits.transactions add constraint transactions_type_known
      check (type in ('purchase', 'usage', 'refund', 'gift', 'guild_funding', 'grant', 'clawback'))`.execute(
    db,
  );
  await sql`alter table credits.purchases drop column validity_days`.execute(db);
  await sql`alter table credits.packages drop column validity_days`.execute(db);
  for (const table of ['balances', 'guild_pools']) {
    await sql`alter table ${sql.table(`credits.${table}`)} drop column next_lot_expiry, drop column total_expired`.execute(
      db,
    );
  }
  for (const table of ['transactions', 'guild_transactions', 'reservations']) {
    await sql`alter table ${sql.table(`credits.${table}`)} drop column lot_ids, drop column lot_amounts`.execute(
      db,
    );
  }
  await sql`drop table credits.lots`.execute(db);
}
