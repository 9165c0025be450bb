import { type Expression, type SqlBool, sql } from 'kysely';
import type { GuildLedgerType, LedgerType } from '../database.ts';

/** Filters of a ledger listing (the operator console's); an absent field filters nothing. */
export interface LedgerFilter<Type extends LedgerType | GuildLedgerType = LedgerType | GuildLedgerType> {
  type?: Type | undefined;
  appId?: string | undefined;
  /** Inclusive. */
  from?: Date | undefined;
  /** Exclusive. */
  to?: Date | undefined;
}

/**
 * The filter as conditions on columns both ledgers have (type, app_id, created_at), for a query reading one
 * of them; none for an empty filter.
 */
export function ledgerFilterConditions(filter: LedgerFilter): Expression<SqlBool>[] {
  const conditions: Expression<SqlBool>[] = [];
  if (filter.type !== undefined) conditions.push(sql<SqlBool>`${sql.ref('type')} = ${filter.type}`);
  if (filter.appId !== undefined) conditions.push(sql<SqlBool>`${sql.ref('app_id')} = ${filter.appId}`);
  if (filter.from !== undefined) conditions.push(sql<SqlBool>`${sql.ref('created_at')} >= ${filter.from}`);
  if (filter.to !== undefined) conditions.push(sql<SqlBool>`${sql.ref('created_at')} < ${filter.to}`);
  return conditions;
}
