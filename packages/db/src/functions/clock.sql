-- credits.clock(): the one clock of the guild limit windows and of guild ledger dates: the database's
-- clock_timestamp(), shifted by the session setting mana_credits.clock_offset when a test sets it (the server
-- never does).
create or replace function credits.clock() returns timestamptz language sql volatile as $$
  select clock_timestamp()
         + coalesce(nullif(current_setting('mana_credits.clock_offset', true), ''), '0 seconds')::interval
$$;
