-- credits.covers(balance, reserved, next_lot_expiry, amount): the no-overdraw rule, written once. An account
-- (a personal balance or a guild pool) pays `amount` only from credits that are neither spent, held nor
-- expired: every statement that takes credits out of an account or holds them (a use, a batch item, a hold,
-- a pool spend, funding, a gift escrow) asks this in its WHERE or its IF, under the account's row lock. While
-- a lot of the account has lapsed and its expiry is not posted yet (next_lot_expiry has passed), it says no:
-- the refusal path then posts the expiry (credits.expire_lots) and asks again, so no spend ever counts an
-- expired credit. A plain SQL expression the planner inlines, so asking it costs nothing.
drop function if exists credits.covers(int8, int8, int8);
create or replace function credits.covers(balance int8, reserved int8, next_lot_expiry timestamptz, amount int8)
returns boolean language sql stable parallel safe as $$
  select balance - reserved >= amount and (next_lot_expiry is null or next_lot_expiry > now())
$$;
