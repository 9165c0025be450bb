import type { JsonObject, LedgerRow, PackageRow } from '@mana-credits/db';

/** Ledger rows as callers see them. */
export function toTransactionView(row: LedgerRow) {
  return {
    id: row.id,
    type: row.type,
    status: row.status,
    amount: row.amount,
    balanceBefore: row.balance_before,
    balanceAfter: row.balance_after,
    appId: row.app_id,
    description: row.description,
    metadata: row.metadata as JsonObject | null,
    guildId: row.guild_id,
    referenceTransactionId: row.reference_transaction_id,
    createdAt: row.created_at,
  };
}

export function toPackageView(row: PackageRow) {
  return {
    id: row.id,
    name: row.name,
    description: row.description,
    credits: row.credits,
    priceEuroCents: row.price_euro_cents,
  };
}

/** The answer to every call that moves one personal ledger entry; also what a replay returns. */
export function toMovementResult(row: Pick<LedgerRow, 'id' | 'balance_after' | 'available_after'>) {
  return { transactionId: row.id, balance: row.available_after ?? row.balance_after };
}

export type MovementResult = ReturnType<typeof toMovementResult>;
export type TransactionView = ReturnType<typeof toTransactionView>;
export type PackageView = ReturnType<typeof toPackageView>;
