import type { GuildLedgerRow, GuildPoolRow } from '@mana-credits/db';

/** A pool as members see it; `balance` is spendable now (balance − reserved). */
export function toPoolView(row: GuildPoolRow) {
  return {
    guildId: row.organization_id,
    balance: row.balance - row.reserved,
    totalFunded: row.total_funded,
    totalSpent: row.total_spent,
  };
}

/** Guild ledger rows as callers see them. */
export function toGuildTransactionView(row: GuildLedgerRow) {
  return {
    id: row.id,
    userId: row.user_id,
    type: row.type,
    amount: row.amount,
    balanceBefore: row.balance_before,
    balanceAfter: row.balance_after,
    appId: row.app_id,
    description: row.description,
    createdAt: row.created_at,
  };
}

/** The answer to a pool spend; also what a replay returns. */
export function toPoolUseResult(row: Pick<GuildLedgerRow, 'id' | 'balance_after' | 'available_after'>) {
  return { transactionId: row.id, poolBalance: row.available_after ?? row.balance_after };
}

export type PoolView = ReturnType<typeof toPoolView>;
export type GuildTransactionView = ReturnType<typeof toGuildTransactionView>;
export type PoolUseResult = ReturnType<typeof toPoolUseResult>;
