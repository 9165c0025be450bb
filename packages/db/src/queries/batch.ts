import { type Kysely, sql } from 'kysely';
import type { Database, JsonObject } from '../database.ts';

export interface BatchDebit {
  userId: string;
  amount: number;
  appId: string;
  description: string;
  metadata?: JsonObject | null | undefined;
  /** Absent = a keyless debit (coalesced credits.use calls may have none). */
  idempotencyKey?: string | null | undefined;
  requestHash: string;
}

export type BatchOutcome =
  | { outcome: 'ok' | 'replay'; transactionId: string; available: number }
  /**
   * Refused for too few credits; `replayed` when the key was refused before (or earlier in the batch) with the
   * same request: that recorded refusal again, `available` as it said.
   */
  | { outcome: 'insufficient'; available: number; replayed?: true }
  | { outcome: 'conflict' };

/**
 * Posts many usage debits in one call of credits.use_batch (one round trip, one transaction; see
 * functions/use_batch.sql for how), passing the items as parallel arrays so Postgres parses no JSON per item.
 * Returns one outcome per debit, in input order, and how many lapsed holds the call returned on the way.
 */
export async function postUsageBatch(
  db: Kysely<Database>,
  debits: readonly BatchDebit[],
): Promise<{ outcomes: BatchOutcome[]; holdsExpired: number }> {
  const column = <T>(pick: (debit: BatchDebit) => T) => debits.map(pick);
  const { rows } = await sql<{
    ord: number;
    outcome: BatchOutcome['outcome'] | 'refused';
    transaction_id: string | null;
    available: number | null;
    holds_expired: number;
  }>`
    select ord, outcome, transaction_id, available, holds_expired
      from credits.use_batch(
        ${column((d) => d.userId)}::text[], ${column((d) => d.amount)}::int8[], ${column((d) => d.appId)}::text[],
        ${column((d) => d.description)}::text[], ${column((d) => (d.metadata ? JSON.stringify(d.metadata) : null))}::jsonb[],
        ${column((d) => d.idempotencyKey ?? null)}::text[], ${column((d) => d.requestHash)}::text[])
  `.execute(db);
  if (rows.length !== debits.length) throw new Error('use_batch did not return one result per item');
  const outcomes = rows.map((row): BatchOutcome => {
    switch (row.outcome) {
      case 'ok':
      case 'replay':
        return { outcome: row.outcome, transactionId: row.transaction_id!, available: row.available! };
      case 'insufficient':
        return { outcome: 'insufficient', available: row.available! };
      case 'refused':
        return { outcome: 'insufficient', available: row.available!, replayed: true };
      case 'conflict':
        return { outcome: 'conflict' };
      default:
        throw new Error(`use_batch returned an unknown outcome: ${String(row.outcome)}`);
    }
  });
  return { outcomes, holdsExpired: rows.reduce((sum, row) => sum + row.holds_expired, 0) };
}
