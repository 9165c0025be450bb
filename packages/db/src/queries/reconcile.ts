import { type Kysely, type RawBuilder, sql } from 'kysely';
import type { Database } from '../database.ts';

// The reconcile checks: the invariants that say not one credit was created, lost or spent twice, each written
// as one readable query whose rows are the ids that break it. domain/audit/reconcile.ts reports them.

interface CheckDefinition {
  name: string;
  description: string;
  /** A query returning one row per violation. */
  query: RawBuilder<unknown>;
}

/** One check's outcome: how many rows violate it, and the first `sample` of them. */
export interface ReconcileCheckResult {
  name: string;
  description: string;
  violations: number;
  samples: Record<string, unknown>[];
}

export type ReconcileTotals = {
  users: number;
  ledger_rows: number;
  balances: number;
  pools: number;
};

/**
 * The checks, each a query returning one row per violation (the row names the ids that show it). Every check
 * reads committed data in one repeatable-read snapshot (runReconcileChecks), so concurrent traffic cannot
 * fake a drift.
 */
const CHECKS: CheckDefinition[] = [
  {
    name: 'user_ledger_matches_balance',
    description: 'per user: Σ ledger = balance',
    query: sql`
      select coalesce(b.user_id, l.user_id) as user_id, coalesce(b.balance, 0) as balance, coalesce(l.total, 0) as ledger
        from credits.balances b
        full join (select user_id, sum(amount)::int8 as total from credits.transactions group by user_id) l
          on l.user_id = b.user_id
       where coalesce(b.balance, 0) <> coalesce(l.total, 0)`,
  },
  {
    name: 'balances_non_negative',
    description: 'per user: balance >= 0 and 0 <= reserved <= balance',
    query: sql`select user_id, balance, reserved from credits.balances where balance < 0 or reserved < 0 or reserved > balance`,
  },
  {
    name: 'ledger_chain',
    description: 'per ledger row: balance_after = balance_before + amount',
    query: sql`select id, user_id from credits.transactions where balance_after <> balance_before + amount`,
  },
  {
    name: 'ledger_rows_continue',
    description:
      "per user: each ledger row's balance_before = the balance_after of the row before it (by time; rows " +
      'written in the same microsecond, whose order the time cannot tell, are not compared)',
    query: sql`
      select c.user_id, c.id as transaction_id, c.type, c.balance_before, c.previous_after, c.created_at
        from (select t.user_id, t.id, t.type, t.balance_before, t.created_at,
                     lag(t.balance_after) over w as previous_after, lag(t.created_at) over w as previous_at,
                     lag(t.created_at, 2) over w as before_previous_at, lead(t.created_at) over w as next_at
                from credits.transactions t
              window w as (partition by t.user_id order by t.created_at, t.id)) c
       where c.previous_after is not null and c.balance_before <> c.previous_after
         -- both rows alone at their instant (a row sharing it with another may be either of them in the chain)
         and c.previous_at < c.created_at and (c.next_at is null or c.next_at > c.created_at)
         and (c.before_previous_at is null or c.before_previous_at < c.previous_at)`,
  },
  {
    name: 'holds_match_reservations',
    description: 'per user and pool: reserved = Σ open holds',
    query: sql`
      select 'user' as account, coalesce(b.user_id, h.user_id) as id, coalesce(b.reserved, 0) as reserved,
             coalesce(h.held, 0) as held
        from credits.balances b
        full join (select user_id, sum(amount)::int8 as held from credits.reservations
                    where status = 'open' and organization_id is null group by user_id) h on h.user_id = b.user_id
       where coalesce(b.reserved, 0) <> coalesce(h.held, 0)
      union all
      select 'pool', coalesce(p.organization_id, h.organization_id), coalesce(p.reserved, 0), coalesce(h.held, 0)
        from credits.guild_pools p
        full join (select organization_id, sum(amount)::int8 as held from credits.reservations
                    where status = 'open' and organization_id is not null group by organization_id) h
          on h.organization_id = p.organization_id
       where coalesce(p.reserved, 0) <> coalesce(h.held, 0)`,
  },
  {
    name: 'pool_ledger_matches_balance',
    description: 'per pool: Σ guild ledger = pool balance, balance >= 0',
    query: sql`
      select coalesce(p.organization_id, l.organization_id) as organization_id, coalesce(p.balance, 0) as balance,
             coalesce(l.total, 0) as ledger
        from credits.guild_pools p
        full join (select organization_id, sum(amount)::int8 as total from credits.guild_transactions
                    group by organization_id) l on l.organization_id = p.organization_id
       where coalesce(p.balance, 0) <> coalesce(l.total, 0) or p.balance < 0 or p.reserved > p.balance`,
  },
  {
    name: 'member_usage_counters',
    description: 'per guild member and UTC day: the limit counter = Σ pool usage in the guild ledger',
    query: sql`
      select coalesce(c.organization_id, l.organization_id) as organization_id, coalesce(c.user_id, l.user_id) as user_id,
             coalesce(c.day, l.day) as day, coalesce(c.spent, 0) as counted, coalesce(l.spent, 0) as ledger
        from credits.guild_member_usage c
        full join (select organization_id, user_id, (created_at at time zone 'utc')::date as day,
                          -sum(amount)::int8 as spent
                     from credits.guild_transactions where type = 'usage'
                    group by organization_id, user_id, (created_at at time zone 'utc')::date) l
          on l.organization_id = c.organization_id and l.user_id = c.user_id and l.day = c.day
       where coalesce(c.spent, 0) <> coalesce(l.spent, 0)`,
  },
  {
    name: 'one_execution_per_idempotency_key',
    description: 'per (account, idempotency key): one ledger row',
    query: sql`
      select user_id, idempotency_key, count(*)::int8 as executions from credits.transactions
       where idempotency_key is not null group by user_id, idempotency_key having count(*) > 1
      union all
      select organization_id || '/' || user_id, idempotency_key, count(*)::int8 from credits.guild_transactions
       where idempotency_key is not null group by organization_id, user_id, idempotency_key having count(*) > 1`,
  },
  {
    // Refusals move no money; this is what recording them is for: the late original of a refused call (an
    // attempt paused on another instance) must not execute after its caller was told it was refused.
    name: 'no_execution_after_refusal',
    description: 'per refused keyed request: no row posted or hold placed under its key for the same request',
    query: sql`
      select f.id as refusal_id, f.key_space, f.user_id, f.organization_id, f.idempotency_key
        from credits.refusals f
       where case f.key_space
               when 'personal' then exists (
                 select 1 from credits.transactions t
                  where t.user_id = f.user_id and t.idempotency_key = f.idempotency_key
                    and t.request_hash = f.request_hash)
               when 'guild' then exists (
                 select 1 from credits.guild_transactions t
                  where t.organization_id = f.organization_id and t.user_id = f.user_id
                    and t.idempotency_key = f.idempotency_key and t.request_hash = f.request_hash)
               else exists (
                 select 1 from credits.reservations r
                  where r.user_id = f.user_id and r.idempotency_key = f.idempotency_key
                    and r.request_hash = f.request_hash)
             end`,
  },
  {
    name: 'refunds_within_usage',
    description: 'per usage row: Σ refunds <= the amount spent',
    query: sql`
      select u.id as transaction_id, u.user_id, -u.amount as spent, r.refunded
        from credits.transactions u
        join (select reference_transaction_id, sum(amount)::int8 as refunded from credits.transactions
               where type = 'refund' and reference_transaction_id is not null group by reference_transaction_id) r
          on r.reference_transaction_id = u.id
       where r.refunded > -u.amount`,
  },
  {
    name: 'gift_escrow',
    description:
      'per gift: funding = credits_per_portion × portions = claimed + refunded + still claimable, matching ledger and redemptions',
    query: sql`
      select g.id as gift_id, g.status, g.claimed_portions, g.refunded_credits, f.amount as funding,
             coalesce(r.claims, 0) as claims, coalesce(r.credited, 0) as credited, coalesce(rf.refunded, 0) as refunded
        from gifts.gift_codes g
        left join credits.transactions f on f.id = g.funding_transaction_id
        left join (select gift_code_id, count(*)::int8 as claims, sum(credits_received)::int8 as credited
                     from gifts.gift_redemptions where status = 'success' group by gift_code_id) r
          on r.gift_code_id = g.id
        left join (select reference_transaction_id, sum(amount)::int8 as refunded from credits.transactions
                    where type = 'refund' and reference_transaction_id is not null group by reference_transaction_id) rf
          on rf.reference_transaction_id = g.funding_transaction_id
       where f.amount is distinct from -(g.credits_per_portion * g.total_portions)
          or coalesce(r.claims, 0) <> g.claimed_portions
          or coalesce(r.credited, 0) <> g.credits_per_portion * g.claimed_portions
          or coalesce(rf.refunded, 0) <> g.refunded_credits
          or (g.status in ('active', 'depleted') and g.refunded_credits <> 0)
          or (g.status = 'depleted' and g.claimed_portions <> g.total_portions)
          or (g.status in ('expired', 'cancelled', 'refunded')
              and g.refunded_credits + g.credits_per_portion * g.claimed_portions <> g.credits_per_portion * g.total_portions)`,
  },
  {
    name: 'gift_money_accounts',
    description:
      "per gift: its funding row is the creator's, each portion's credit row the redeemer's (type gift, its amount), each refund of its escrow the creator's",
    query: sql`
      select g.id as gift_id, 'funding' as row_kind, f.id as transaction_id, f.user_id, g.creator_id as expected_user_id
        from gifts.gift_codes g
        join credits.transactions f on f.id = g.funding_transaction_id
       where f.user_id <> g.creator_id or f.type <> 'gift'
      union all
      select r.gift_code_id, 'redemption', r.credit_transaction_id, c.user_id, r.redeemer_user_id
        from gifts.gift_redemptions r
        left join credits.transactions c on c.id = r.credit_transaction_id
       where r.status = 'success'
         and (c.id is null or c.user_id <> r.redeemer_user_id or c.type <> 'gift'
              or c.amount is distinct from r.credits_received)
      union all
      select g.id, 'refund', t.id, t.user_id, g.creator_id
        from gifts.gift_codes g
        join credits.transactions t on t.reference_transaction_id = g.funding_transaction_id and t.type = 'refund'
       where t.user_id <> g.creator_id`,
  },
  {
    name: 'purchases_credited_once',
    description: 'per purchase: completed ⇔ exactly one purchase ledger row for its credits; otherwise none',
    query: sql`
      select p.id as purchase_id, p.status, p.credits, coalesce(l.rows, 0) as ledger_rows, l.credited
        from credits.purchases p
        left join (select user_id, idempotency_key, count(*)::int8 as rows, sum(amount)::int8 as credited
                     from credits.transactions where type = 'purchase' group by user_id, idempotency_key) l
          on l.user_id = p.user_id and l.idempotency_key = chr(31) || 'purchase:' || p.id
       where (p.status = 'completed' and (coalesce(l.rows, 0) <> 1 or l.credited <> p.credits))
          or (p.status <> 'completed' and coalesce(l.rows, 0) <> 0)`,
  },
  {
    name: 'auto_top_ups_match_purchases',
    description:
      'per auto top-up attempt: succeeded ⇔ its purchase (of the same user) is completed; automatic purchases are ' +
      'otherwise checked like every purchase (credited once, with its system key)',
    query: sql`
      select a.id as attempt_id, a.status, a.user_id, p.id as purchase_id, p.status as purchase_status,
             p.user_id as purchase_user_id
        from credits.auto_top_up_attempts a
        left join credits.purchases p on p.id = a.purchase_id
       where (a.status = 'succeeded') <> (p.status is not distinct from 'completed')
          or (p.id is not null and p.user_id <> a.user_id)`,
  },
  {
    name: 'system_rows_carry_system_keys',
    description:
      'per purchase credit and clawback: the system key of its purchase (a namespace no caller key can reach)',
    query: sql`
      select id as transaction_id, user_id, type, idempotency_key from credits.transactions
       where (type = 'purchase'
              and idempotency_key is distinct from chr(31) || 'purchase:' || (metadata->>'purchaseId'))
          or (type = 'clawback'
              and (idempotency_key is null
                   or idempotency_key not like chr(31) || 'clawback:' || (metadata->>'purchaseId') || ':%'))`,
  },
  {
    name: 'purchase_clawbacks_match',
    description:
      'per purchase: its clawback rows (of its buyer) take clawed_back_credits net, and give back returned_credits',
    query: sql`
      select p.id::text as purchase_id, p.user_id, p.clawed_back_credits, p.returned_credits, t.taken, t.given
        from credits.purchases p
        left join (select metadata->>'purchaseId' as purchase_id, user_id,
                          coalesce(-sum(amount) filter (where amount < 0), 0)::int8 as taken,
                          coalesce(sum(amount) filter (where amount > 0), 0)::int8 as given
                     from credits.transactions where type = 'clawback'
                    group by metadata->>'purchaseId', user_id) t
          on t.purchase_id = p.id::text and t.user_id = p.user_id
       where coalesce(t.taken, 0) - coalesce(t.given, 0) <> p.clawed_back_credits
          or coalesce(t.given, 0) <> p.returned_credits
      union all
      select t.metadata->>'purchaseId', t.user_id, null, null, null, null
        from credits.transactions t
       where t.type = 'clawback'
         and not exists (select 1 from credits.purchases p
                          where p.id::text = t.metadata->>'purchaseId' and p.user_id = t.user_id)`,
  },
  {
    name: 'global_conservation',
    description:
      'Σ balances (holds included) + Σ pools + gift escrow = Σ purchased + Σ granted − Σ used (net of refunds) − Σ clawed back',
    query: sql`
      with flows as (
        select
          (select coalesce(sum(balance), 0) from credits.balances)::int8 as balances,
          (select coalesce(sum(balance), 0) from credits.guild_pools)::int8 as pools,
          (select coalesce(sum(credits_per_portion * (total_portions - claimed_portions)), 0) from gifts.gift_codes
            where status = 'active')::int8 as escrow,
          (select coalesce(sum(amount), 0) from credits.transactions where type = 'purchase')::int8 as purchased,
          (select coalesce(sum(amount), 0) from credits.transactions where type = 'grant')::int8 as granted,
          (select coalesce(-sum(amount), 0) from credits.transactions where type = 'clawback')::int8 as clawed_back,
          ((select coalesce(-sum(amount), 0) from credits.transactions where type = 'usage')
           - (select coalesce(sum(r.amount), 0) from credits.transactions r
                join credits.transactions u on u.id = r.reference_transaction_id and u.type = 'usage'
               where r.type = 'refund')
           + (select coalesce(-sum(amount), 0) from credits.guild_transactions where type = 'usage')
           - (select coalesce(sum(amount), 0) from credits.guild_transactions where type = 'refund'))::int8 as used,
          ((select coalesce(-sum(amount), 0) from credits.transactions where type = 'expiry')
           + (select coalesce(-sum(amount), 0) from credits.guild_transactions where type = 'expiry'))::int8 as expired
      )
      select * from flows
       where balances + pools + escrow <> purchased + granted - used - clawed_back - expired`,
  },
  {
    name: 'lots_match_accounts',
    description: 'per user and pool: Σ lot remaining = balance and Σ lot pinned = reserved',
    query: sql`
      with accounts as (
        select 'user' as kind, user_id as id, balance, reserved from credits.balances
        union all
        select 'guild', organization_id, balance, reserved from credits.guild_pools
      ), lots as (
        select account_kind as kind, account_id as id, sum(remaining)::int8 as remaining, sum(pinned)::int8 as pinned
          from credits.lots group by account_kind, account_id
      )
      select coalesce(a.kind, l.kind) as account, coalesce(a.id, l.id) as id, a.balance, a.reserved,
             l.remaining, l.pinned
        from accounts a full join lots l on l.kind = a.kind and l.id = a.id
       where coalesce(a.balance, 0) <> coalesce(l.remaining, 0) or coalesce(a.reserved, 0) <> coalesce(l.pinned, 0)`,
  },
  {
    name: 'lot_ledger',
    description:
      'per lot: what the ledger rows naming it gave and took (plus an opening lot’s amount) = remaining; expiry rows = expired',
    query: sql`
      with portions as (
        select p.lot_id, sign(t.amount) * p.amount as signed, t.type
          from (select amount, type, lot_ids, lot_amounts from credits.transactions where lot_ids is not null
                union all
                select amount, type, lot_ids, lot_amounts from credits.guild_transactions where lot_ids is not null) t
         cross join lateral unnest(t.lot_ids, t.lot_amounts) as p(lot_id, amount)
      ), per_lot as (
        select lot_id, sum(signed)::int8 as net, coalesce(-sum(signed) filter (where type = 'expiry'), 0)::int8 as expired
          from portions group by lot_id
      )
      select l.id as lot_id, l.account_kind, l.account_id, l.amount, l.remaining, l.expired,
             coalesce(p.net, 0) as ledger_net, coalesce(p.expired, 0) as ledger_expired
        from credits.lots l left join per_lot p on p.lot_id = l.id
       where coalesce(p.net, 0) + case when l.opening then l.amount else 0 end <> l.remaining
          or coalesce(p.expired, 0) <> l.expired
      union all
      select p.lot_id, null, null, null, null, null, p.net, p.expired
        from per_lot p where not exists (select 1 from credits.lots l where l.id = p.lot_id)`,
  },
  {
    name: 'lot_portions_add_up',
    description:
      'per ledger row naming lots: Σ portions = |amount|; per open hold: Σ pinned portions = its amount',
    query: sql`
      select 'user' as ledger, id, amount, (select sum(a) from unnest(lot_amounts) a) as portions
        from credits.transactions
       where lot_ids is not null and (select coalesce(sum(a), 0) from unnest(lot_amounts) a) <> abs(amount)
      union all
      select 'guild', id, amount, (select sum(a) from unnest(lot_amounts) a)
        from credits.guild_transactions
       where lot_ids is not null and (select coalesce(sum(a), 0) from unnest(lot_amounts) a) <> abs(amount)
      union all
      select 'hold', id, amount, (select sum(a) from unnest(lot_amounts) a)
        from credits.reservations
       where status = 'open' and (select coalesce(sum(a), 0) from unnest(lot_amounts) a) <> amount`,
  },
  {
    name: 'holds_match_pins',
    description: 'per lot: pinned = Σ portions of the open holds that pinned it',
    query: sql`
      select l.id as lot_id, l.pinned, coalesce(h.held, 0) as held
        from credits.lots l
        left join (select p.lot_id, sum(p.amount)::int8 as held
                     from credits.reservations r
                    cross join lateral unnest(r.lot_ids, r.lot_amounts) as p(lot_id, amount)
                    where r.status = 'open' group by p.lot_id) h on h.lot_id = l.id
       where l.pinned <> coalesce(h.held, 0)`,
  },
  {
    name: 'no_spend_from_expired_lots',
    description:
      'no credits taken from a lot after its expiry (a hold commit may consume what it pinned before; 5 s grace for the clock of a statement in flight)',
    query: sql`
      select t.id as transaction_id, t.ledger, t.type, p.lot_id, l.expires_at, t.created_at
        from (select 'user' as ledger, id, type, amount, created_at, idempotency_key, lot_ids, lot_amounts
                from credits.transactions where amount < 0 and lot_ids is not null
              union all
              select 'guild', id, type, amount, created_at, idempotency_key, lot_ids, lot_amounts
                from credits.guild_transactions where amount < 0 and lot_ids is not null) t
       cross join lateral unnest(t.lot_ids) as p(lot_id)
        join credits.lots l on l.id = p.lot_id
       where t.type <> 'expiry' and l.expires_at is not null
         and t.created_at > l.expires_at + interval '5 seconds'
         and coalesce(t.idempotency_key, '') not like chr(31) || 'reservation:%'`,
  },
];

async function runCheck(
  db: Kysely<Database>,
  check: CheckDefinition,
  sample: number,
): Promise<ReconcileCheckResult> {
  const { rows } = await sql<Record<string, unknown> & { violations: number }>`
    with v as (${check.query})
    select v.*, count(*) over ()::int8 as violations from v limit ${sample}`.execute(db);
  return {
    name: check.name,
    description: check.description,
    violations: rows[0]?.violations ?? 0,
    samples: rows.map(({ violations: _count, ...row }) => row),
  };
}

/**
 * Runs every check, one after another, and reads the totals, all in one repeatable-read, read-only
 * transaction: one snapshot of committed data, so concurrent traffic cannot fake a drift. Each check answers
 * its count of violations and up to `sample` of them.
 */
export async function runReconcileChecks(
  db: Kysely<Database>,
  sample: number,
): Promise<{ checks: ReconcileCheckResult[]; totals: ReconcileTotals | undefined }> {
  return db
    .transaction()
    .setIsolationLevel('repeatable read')
    .setAccessMode('read only')
    .execute(async (trx) => {
      const checks: ReconcileCheckResult[] = [];
      for (const check of CHECKS) checks.push(await runCheck(trx, check, sample));
      const totals = await sql<ReconcileTotals>`
        select (select count(*) from credits.balances)::int8 as users,
               (select count(*) from credits.transactions)::int8 as ledger_rows,
               (select coalesce(sum(balance), 0) from credits.balances)::int8 as balances,
               (select coalesce(sum(balance), 0) from credits.guild_pools)::int8 as pools`.execute(trx);
      return { checks, totals: totals.rows[0] };
    });
}
