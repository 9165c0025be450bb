-- credits.covers(balance, reserved, amount): the no-overdraw rule, written once. An account (a personal
-- balance or a guild pool) pays `amount` only from credits that are neither spent nor held: every statement
-- that takes credits out of an account or holds them (a use, a batch item, a hold, a pool spend, funding, a
-- gift escrow) asks this in its WHERE or its IF, under the account's row lock. A plain SQL expression the
-- planner inlines, so asking it costs nothing.
create or replace function credits.covers(balance int8, reserved int8, amount int8) returns boolean
language sql immutable strict parallel safe as $$
  select balance - reserved >= amount
$$;
