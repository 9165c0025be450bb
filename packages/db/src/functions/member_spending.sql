-- credits.member_spending: the window rule of a guild member's caps, written once. What the member may still
-- spend from the pool is read here by every path: memberSpending (a single pool spend or hold, and the limits
-- the member sees) and credits.pool_use_batch (coalesced pool spends).
--
-- Returns the member's caps (null = unlimited, also when none were set), what they spent from the pool in
-- the UTC day p_today and in the UTC calendar month that contains it, and what their open pool holds keep
-- back. A spend counts in the UTC day (and month) of its ledger row, as credits.guild_member_usage books it;
-- a commit of a hold is such a spend, booked in the day of the commit. Every open hold counts in the current
-- day and month, whenever it was placed, until it is committed or returned: so a hold placed before midnight
-- still counts after it, and its commit — which checks no limit — can never take a window past its cap.
-- Holds whose time is up but that are not returned yet still count: a commit in progress may still settle
-- them. Inside a spend or a hold it must run after the pool row is locked, as its own statement, so that it
-- reads every spend, hold, commit and release committed before the lock was granted (each writes that row).
create or replace function credits.member_spending(p_organization_id text, p_user_id text, p_today date)
returns table (daily_limit int8, monthly_limit int8, spent_today int8, spent_this_month int8, held int8)
language sql stable as $$
  select l.daily_limit, l.monthly_limit, s.spent_today, s.spent_this_month, h.held
    from (
      select coalesce(sum(u.spent) filter (where u.day = p_today), 0)::int8 as spent_today,
             coalesce(sum(u.spent), 0)::int8 as spent_this_month
        from credits.guild_member_usage u
       where u.organization_id = p_organization_id and u.user_id = p_user_id
         and u.day between date_trunc('month', p_today)::date and p_today
    ) s
   cross join (
      select coalesce(sum(r.amount), 0)::int8 as held
        from credits.reservations r
       where r.organization_id = p_organization_id and r.user_id = p_user_id and r.status = 'open'
    ) h
    left join credits.guild_spending_limits l
      on l.organization_id = p_organization_id and l.user_id = p_user_id
$$;
