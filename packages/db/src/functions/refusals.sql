-- Refused keyed requests take their key (table credits.refusals, migration 2026_12_03_1230_refusals): the first
-- of {the refusal, the debit or hold} to commit under a key wins, and the other is answered as a replay of it.
-- Atomic by the account's row lock, the lock every spend of the account takes:
--   - a refusal is recorded (credits.record_refusal) in the transaction that decided it, while it holds the
--     row lock of the account that refused, after checking that no row took the key;
--   - every keyed debit and hold asks credits.assert_not_refused in its RETURNING, i.e. after its UPDATE took
--     that row lock.
-- Both are volatile PL/pgSQL on purpose: in READ COMMITTED each of their queries takes a fresh snapshot, so it
-- reads everything committed before the lock was granted. A plain subquery of the debit statement would read
-- the snapshot taken before it waited for the lock, and miss a refusal committed meanwhile (the late original
-- of a paused instance would then charge a key its caller was told was refused).
-- Key spaces, as their unique indexes: 'personal' (credits.transactions by user), 'guild'
-- (credits.guild_transactions by guild and member), 'hold' (credits.reservations by user).

-- credits.assert_not_refused: fails the calling statement with a unique violation on refusals_key when the key
-- was refused before (the statement, and what it wrote, is rolled back: the caller answers the refusal as a
-- replay, or CONFLICT). Returns true otherwise. A null key (keyless call) is never refused.
create or replace function credits.assert_not_refused(p_space text, p_user text, p_org text, p_key text)
returns boolean language plpgsql as $$
begin
  if p_key is not null and exists (
       select 1 from credits.refusals
        where user_id = p_user and idempotency_key = p_key and key_space = p_space
          and (organization_id = p_org or (organization_id is null and p_org is null))) then
    raise exception 'duplicate key value violates unique constraint "refusals_key"'
      using errcode = 'unique_violation', constraint = 'refusals_key',
            detail = 'this idempotency key was refused before';
  end if;
  return true;
end
$$;

-- credits.record_refusal: records that the request (p_hash) under p_key was refused with p_reason and p_details
-- (what the refusal answered, e.g. {required, available}). Call it under the row lock of the account that
-- refused, in the transaction that decided the refusal, and commit that transaction. Records nothing and
-- returns false when the key is taken already: by a row in its space (an earlier execution, perhaps the late
-- original, committed before the lock was granted: answer its replay) or by an earlier refusal.
create or replace function credits.record_refusal(
  p_space text, p_user text, p_org text, p_key text, p_hash text, p_reason text, p_details jsonb)
returns boolean language plpgsql as $$
declare
  v_posted boolean;
  v_id uuid;
begin
  v_posted := case p_space
    when 'personal' then exists (
      select 1 from credits.transactions where user_id = p_user and idempotency_key = p_key)
    when 'guild' then exists (
      select 1 from credits.guild_transactions
       where organization_id = p_org and user_id = p_user and idempotency_key = p_key)
    when 'hold' then exists (
      select 1 from credits.reservations where user_id = p_user and idempotency_key = p_key)
  end;
  if v_posted then
    return false;
  end if;
  insert into credits.refusals (key_space, user_id, organization_id, idempotency_key, request_hash, reason, details)
  values (p_space, p_user, p_org, p_key, p_hash, p_reason, p_details)
  on conflict do nothing
  returning id into v_id;
  return v_id is not null;
end
$$;

-- credits.key_outcome: THE replay-or-conflict rule of the batch functions (use_batch, pool_use_batch), as
-- withIdempotency (packages/server/src/domain/idempotency.ts) decides it for the single paths: a key's first
-- result answers it — a posted row (p_posted, with its request hash), else a recorded refusal, else an
-- earlier item of the same batch that was posted or refused (p_earlier_hash, p_earlier_posted). The same
-- request gets 'replay' (posted) or 'refused' (the refusal again); another request 'conflict'; null = the
-- key is free, decide the item.
create or replace function credits.key_outcome(
  p_hash text, p_posted boolean, p_posted_hash text, p_refused_hash text, p_earlier_hash text,
  p_earlier_posted boolean)
returns text language sql immutable as $$
  select case
    when p_posted then case when p_posted_hash is not distinct from p_hash then 'replay' else 'conflict' end
    when p_refused_hash is not null then case when p_refused_hash = p_hash then 'refused' else 'conflict' end
    when p_earlier_hash is not null then
      case when p_earlier_hash <> p_hash then 'conflict' when p_earlier_posted then 'replay' else 'refused' end
  end
$$;
