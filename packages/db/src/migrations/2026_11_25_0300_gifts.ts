import { type Kysely, sql } from 'kysely';

// Frozen once shipped. Gift escrow bookkeeping, the lookup of pending personalized gifts and a Postgres-backed
// fixed-window rate limiter (so limits hold across server instances).

export async function up(db: Kysely<any>): Promise<void> {
  // What went back to the creator (cancel or expiry). Escrow = credits_per_portion × total_portions is always
  // claimed_portions × credits_per_portion + refunded_credits + what is still claimable.
  await sql`alter table gifts.gift_codes
    add column refunded_credits int8 not null default 0,
    add column funding_transaction_id uuid,
    add constraint gift_codes_refund_within_escrow check (
      refunded_credits >= 0
      and refunded_credits + credits_per_portion * claimed_portions <= credits_per_portion * total_portions)`.execute(
    db,
  );
  await sql`create index gift_codes_pending_personalized on gifts.gift_codes (lower(target_email))
    where status = 'active' and type = 'personalized'`.execute(db);

  await sql`
    create table gifts.rate_limits (
      bucket text primary key,
      window_start timestamptz not null,
      hits int4 not null,
      constraint rate_limits_hits_positive check (hits >= 1)
    )`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table gifts.rate_limits`.execute(db);
  await sql`drop index gifts.gift_codes_pending_personalized`.execute(db);
  await sql`alter table gifts.gift_codes
    drop constraint gift_codes_refund_within_escrow,
    drop column funding_transaction_id,
    drop column refunded_credits`.execute(db);
}
