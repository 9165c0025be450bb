import { type Kysely, sql } from 'kysely';

// Frozen. credits.debit_many applies many debits of ONE user in one transaction, in order, each with its own
// ledger row, idempotency and outcome. The server uses it to coalesce concurrent debits of a hot account
// (one commit for many callers instead of one each).
//
// It locks the balance row first. Every writer of a user's ledger rows updates that row in the same
// transaction, so while the lock is held no other transaction can insert a key of this user: the key
// look-up below cannot race, and the unique index stays the backstop (a violation aborts the whole call).
export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create function credits.debit_many(p_user_id text, p_items jsonb)
    returns table (ord int, outcome text, id uuid, balance_after int8, available_after int8, created_at timestamptz)
    language plpgsql as $$
    declare
      v_balance int8;
      v_reserved int8;
      v_spent int8 := 0;
      v_count int := 0;
      v_item jsonb;
      v_ord int := 0;
      v_amount int8;
      v_key text;
      v_first record;
      v_id uuid;
      v_created timestamptz;
    begin
      select b.balance, b.reserved into v_balance, v_reserved
        from credits.balances b where b.user_id = p_user_id for update;
      for v_item in select value from jsonb_array_elements(p_items) loop
        v_ord := v_ord + 1;
        v_key := v_item->>'idempotency_key';
        if v_key is not null then
          select t.id, t.request_hash, t.balance_after, t.available_after, t.created_at into v_first
            from credits.transactions t where t.user_id = p_user_id and t.idempotency_key = v_key;
          if found then
            return query select v_ord,
              case when v_first.request_hash is not distinct from v_item->>'request_hash' then 'replay' else 'conflict' end,
              v_first.id, v_first.balance_after, v_first.available_after, v_first.created_at;
            continue;
          end if;
        end if;
        v_amount := (v_item->>'amount')::int8;
        if v_balance is null or v_balance - v_reserved < v_amount then
          return query select v_ord, 'insufficient'::text, null::uuid, v_balance, coalesce(v_balance - v_reserved, 0), null::timestamptz;
          continue;
        end if;
        v_balance := v_balance - v_amount;
        v_spent := v_spent + v_amount;
        v_count := v_count + 1;
        insert into credits.transactions as t
          (user_id, type, amount, balance_before, balance_after, available_after, app_id, description, metadata,
           idempotency_key, request_hash)
        values (p_user_id, 'usage', -v_amount, v_balance + v_amount, v_balance, v_balance - v_reserved,
                v_item->>'app_id', v_item->>'description', v_item->'metadata', v_key, v_item->>'request_hash')
        returning t.id, t.created_at into v_id, v_created;
        insert into credits.usage_stats as u (user_id, app_id, date, credits_used)
        values (p_user_id, v_item->>'app_id', (now() at time zone 'utc')::date, v_amount)
        on conflict (user_id, app_id, date) do update set credits_used = u.credits_used + excluded.credits_used;
        return query select v_ord, 'ok'::text, v_id, v_balance, v_balance - v_reserved, v_created;
      end loop;
      if v_count > 0 then
        update credits.balances b
           set balance = v_balance, total_spent = b.total_spent + v_spent, version = b.version + v_count,
               updated_at = now()
         where b.user_id = p_user_id;
      end if;
    end
    $$`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop function credits.debit_many(text, jsonb)`.execute(db);
}
