import { type Kysely, sql } from 'kysely';
import type { Database, JsonObject } from '../database.ts';

/** One member's spend from a guild pool, as credits.pool_use_batch takes it. */
export interface PoolBatchDebit {
  guildId: string;
  userId: string;
  amount: number;
  appId: string;
  description: string;
  metadata?: JsonObject | null | undefined;
  /** Absent = a keyless spend. Scoped to (guild, member). */
  idempotencyKey?: string | null | undefined;
  requestHash: string;
}

export type PoolBatchOutcome =
  | { outcome: 'ok' | 'replay'; transactionId: string; available: number }
  | { outcome: 'insufficient'; available: number }
  | { outcome: 'daily_limit' | 'monthly_limit'; limit: number; used: number }
  /** The key was refused before (or earlier in the batch) with the same request: what was recorded. */
  | { outcome: 'refused'; reason: string; details: JsonObject }
  | { outcome: 'conflict' | 'no_pool' };

/**
 * Posts many pool spends in one call of credits.pool_use_batch (one round trip, one transaction; see
 * functions/pool_use_batch.sql for how), the items as parallel arrays. Returns one outcome per spend, in input
 * order, and what the call returned and expired on the way (lapsed pool holds, credits of lapsed lots).
 */
export async function postPoolUseBatch(
  db: Kysely<Database>,
  debits: readonly PoolBatchDebit[],
): Promise<{ outcomes: PoolBatchOutcome[]; holdsExpired: number; creditsExpired: number }> {
  const column = <T>(pick: (debit: PoolBatchDebit) => T) => debits.map(pick);
  const { rows } = await sql<{
    ord: number;
    outcome: PoolBatchOutcome['outcome'];
    transaction_id: string | null;
    available: number | null;
    cap: number | null;
    used: number | null;
    holds_expired: number;
    credits_expired: number;
    reason: string | null;
    details: JsonObject | null;
  }>`
    select ord, outcome, transaction_id, available, cap, used, holds_expired, credits_expired, reason, details
      from credits.pool_use_batch(
        ${column((d) => d.guildId)}::text[], ${column((d) => d.userId)}::text[],
        ${column((d) => d.amount)}::int8[], ${column((d) => d.appId)}::text[],
        ${column((d) => d.description)}::text[],
        ${column((d) => (d.metadata ? JSON.stringify(d.metadata) : null))}::jsonb[],
        ${column((d) => d.idempotencyKey ?? null)}::text[], ${column((d) => d.requestHash)}::text[])
  `.execute(db);
  if (rows.length !== debits.length) throw new Error('pool_use_batch did not return one result per item');
  const outcomes = rows.map((row): PoolBatchOutcome => {
    switch (row.outcome) {
      case 'ok':
      case 'replay':
        return { outcome: row.outcome, transactionId: row.transaction_id!, available: row.available! };
      case 'insufficient':
        return { outcome: 'insufficient', available: row.available! };
      case 'daily_limit':
      case 'monthly_limit':
        return { outcome: row.outcome, limit: row.cap!, used: row.used! };
      case 'refused':
        return { outcome: 'refused', reason: row.reason!, details: row.details ?? {} };
      case 'conflict':
      case 'no_pool':
        return { outcome: row.outcome };
      default:
        throw new Error(`pool_use_batch returned an unknown outcome: ${String(row.outcome)}`);
    }
  });
  return {
    outcomes,
    holdsExpired: rows.reduce((sum, row) => sum + row.holds_expired, 0),
    creditsExpired: rows.reduce((sum, row) => sum + row.credits_expired, 0),
  };
}
