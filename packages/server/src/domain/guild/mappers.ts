import type { GuildLedgerRow, GuildPoolRow, LedgerRow, PostedEntry } from '@mana-credits/db';

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

/** The same answer from the entry the call has just posted. */
export function toPostedPoolUseResult(posted: PostedEntry): PoolUseResult {
  return { transactionId: posted.id, poolBalance: posted.available };
}

type BalancesAfter = Pick<GuildLedgerRow | LedgerRow, 'balance_after' | 'available_after'>;

/** The answer to guild.fund as its two ledger rows tell it (the pool's and the funder's): what a replay returns. */
export function toFundResult(pool: BalancesAfter, personal: BalancesAfter) {
  return {
    poolBalance: pool.available_after ?? pool.balance_after,
    personalBalance: personal.available_after ?? personal.balance_after,
  };
}

/** The same answer from the two entries the call has just posted. */
export function toPostedFundResult(pool: PostedEntry, personal: PostedEntry): FundResult {
  return { poolBalance: pool.available, personalBalance: personal.available };
}

export type PoolView = ReturnType<typeof toPoolView>;
export type GuildTransactionView = ReturnType<typeof toGuildTransactionView>;
export type PoolUseResult = ReturnType<typeof toPoolUseResult>;
export type FundResult = ReturnType<typeof toFundResult>;
