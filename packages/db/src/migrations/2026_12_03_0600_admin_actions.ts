import { type Kysely, sql } from 'kysely';

// Frozen. The operator console's audit trail (issue 18): one row per action an operator performed — who,
// what, on which account, why, the request and what it answered. Append-only like the ledger: the same
// trigger function refuses UPDATE, DELETE and TRUNCATE. `idempotency_key` is derived from the console form's
// nonce, so a form submitted twice is recorded (and performed) once.
export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table credits.admin_actions (
      id uuid primary key default gen_random_uuid(),
      operator text not null,
      action text not null,
      target text not null,
      reason text not null,
      idempotency_key text not null,
      request jsonb not null,
      result jsonb not null,
      created_at timestamptz not null default clock_timestamp(),
      constraint admin_actions_reason_given check (length(btrim(reason)) > 0),
      constraint admin_actions_operator_given check (length(operator) > 0)
    )`.execute(db);
  await sql`create unique index admin_actions_idempotency_key on credits.admin_actions (idempotency_key)`.execute(
    db,
  );
  await sql`create index admin_actions_history on credits.admin_actions (created_at desc, id desc)`.execute(
    db,
  );
  await sql`create index admin_actions_target on credits.admin_actions (target, created_at desc, id desc)`.execute(
    db,
  );
  await sql`create trigger admin_actions_immutable before update or delete on credits.admin_actions for each row execute function credits.refuse_ledger_change()`.execute(
    db,
  );
  await sql`create trigger admin_actions_no_truncate before truncate on credits.admin_actions for each statement execute function credits.refuse_ledger_change()`.execute(
    db,
  );
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table credits.admin_actions`.execute(db);
}
