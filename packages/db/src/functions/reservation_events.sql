-- reservation.expired (issue 16): one event per hold whose time ran out, written by the row trigger
-- reservations_expired_event in the transaction that returned the hold — the periodic sweep, the check on
-- access of a debit or hold (credits.release_expired_holds / release_expired_pool_holds, use_batch) or a
-- commit or release that found the hold lapsed. The trigger's WHEN (open → expired) keeps every other
-- update of a reservation from calling this function.
create or replace function credits.reservation_expired_event() returns trigger
language plpgsql as $$
begin
  insert into credits.events (type, user_id, guild_id, data)
  values ('reservation.expired', new.user_id, new.organization_id,
          jsonb_strip_nulls(jsonb_build_object(
            'userId', new.user_id,
            'guildId', new.organization_id,
            'reservationId', new.id,
            'amount', new.amount,
            'appId', new.app_id,
            'expiresAt', new.expires_at,
            'expiredAt', new.closed_at)));
  return null;
end
$$;
