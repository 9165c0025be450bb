import { type Kysely, type Migration, type MigrationResultSet, Migrator } from 'kysely';
import { applySqlFunctions } from './functions/index.ts';
import * as initial from './migrations/2026_11_25_0001_initial.ts';
import * as debitMany from './migrations/2026_11_25_0050_debit_many.ts';
import * as stripe from './migrations/2026_11_25_0100_stripe.ts';
import * as guild from './migrations/2026_11_25_0200_guild.ts';
import * as gifts from './migrations/2026_11_25_0300_gifts.ts';
import * as reservations from './migrations/2026_11_25_0400_reservations.ts';
import * as poolHolds from './migrations/2026_11_25_0600_pool_holds.ts';
import * as clock from './migrations/2026_12_03_0100_clock.ts';
import * as slidingRateLimit from './migrations/2026_12_03_0200_sliding_rate_limit.ts';
import * as sqlFunctionFiles from './migrations/2026_12_03_0300_sql_function_files.ts';
import * as ledgerTimeIndex from './migrations/2026_12_03_0400_ledger_time_index.ts';
import * as events from './migrations/2026_12_03_0500_events.ts';
import * as adminActions from './migrations/2026_12_03_0600_admin_actions.ts';
import * as lots from './migrations/2026_12_03_0800_lots.ts';
import * as autoTopUp from './migrations/2026_12_03_0900_auto_top_up.ts';
import * as refusals from './migrations/2026_12_03_1230_refusals.ts';
import * as timeOrderedIds from './migrations/2026_12_03_1300_time_ordered_ids.ts';
import * as unmatchedPayments from './migrations/2026_12_04_1000_unmatched_payments.ts';
import * as adminActionClaims from './migrations/2026_12_04_1100_admin_action_claims.ts';
import * as adminSessionRevocations from './migrations/2026_12_04_1200_admin_session_revocations.ts';
import * as disputeReinstatements from './migrations/2026_12_04_1300_dispute_reinstatements.ts';

/** Every migration, by its dated name. Add new ones here; never edit one that has shipped. */
export const migrations: Record<string, Migration> = {
  '2026_11_25_0001_initial': initial,
  '2026_11_25_0050_debit_many': debitMany,
  '2026_11_25_0300_gifts': gifts,
  '2026_11_25_0100_stripe': stripe,
  '2026_11_25_0200_guild': guild,
  '2026_11_25_0400_reservations': reservations,
  '2026_11_25_0600_pool_holds': poolHolds,
  '2026_12_03_0100_clock': clock,
  '2026_12_03_0200_sliding_rate_limit': slidingRateLimit,
  '2026_12_03_0300_sql_function_files': sqlFunctionFiles,
  '2026_12_03_0400_ledger_time_index': ledgerTimeIndex,
  '2026_12_03_0600_admin_actions': adminActions,
  '2026_12_03_0500_events': events,
  '2026_12_03_0800_lots': lots,
  '2026_12_03_0900_auto_top_up': autoTopUp,
  '2026_12_03_1230_refusals': refusals,
  '2026_12_03_1300_time_ordered_ids': timeOrderedIds,
  '2026_12_04_1000_unmatched_payments': unmatchedPayments,
  '2026_12_04_1100_admin_action_claims': adminActionClaims,
  '2026_12_04_1200_admin_session_revocations': adminSessionRevocations,
  '2026_12_04_1300_dispute_reinstatements': disputeReinstatements,
};

/**
 * Brings the schema up to date: the dated migrations, then the SQL function files that changed. Kysely's
 * migrator takes a Postgres advisory lock, so two instances starting at once apply each migration exactly once.
 */
// biome-ignore lint/suspicious/noExplicitAny: migrations are written against Kysely<any> on purpose
export async function migrateToLatest(db: Kysely<any>): Promise<MigrationResultSet> {
  const migrator = new Migrator({ db, provider: { getMigrations: async () => migrations } });
  const result = await migrator.migrateToLatest();
  if (result.error) {
    throw result.error instanceof Error ? result.error : new Error(String(result.error));
  }
  await applySqlFunctions(db);
  return result;
}
