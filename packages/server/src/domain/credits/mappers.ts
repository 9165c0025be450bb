import type { JsonObject, LedgerRow, PackageRow, PurchaseRow } from '@mana-credits/db';

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

/** A package as operators manage it (internal.packages). */
export function toStoredPackageView(row: PackageRow) {
  return {
    ...toPackageView(row),
    stripePriceId: row.stripe_price_id,
    active: row.active,
    sortOrder: row.sort_order,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

export function toPurchaseStatusView(row: PurchaseRow) {
  return {
    id: row.id,
    status: row.status,
    credits: row.credits,
    priceEuroCents: row.price_euro_cents,
    createdAt: row.created_at,
    completedAt: row.completed_at,
  };
}

export function toPurchaseView(row: PurchaseRow) {
  return {
    ...toPurchaseStatusView(row),
    packageId: row.package_id,
    currency: row.currency,
    /** Credits refunds and disputes took back, and what they could not take because it was spent. */
    clawedBackCredits: row.clawed_back_credits,
    unrecoveredCredits: row.unrecovered_credits,
  };
}

/** The answer to every call that moves one personal ledger entry; also what a replay returns. */
export function toMovementResult(row: Pick<LedgerRow, 'id' | 'balance_after' | 'available_after'>) {
  return { transactionId: row.id, balance: row.available_after ?? row.balance_after };
}

export type MovementResult = ReturnType<typeof toMovementResult>;
export type TransactionView = ReturnType<typeof toTransactionView>;
export type PackageView = ReturnType<typeof toPackageView>;
export type StoredPackageView = ReturnType<typeof toStoredPackageView>;
export type PurchaseView = ReturnType<typeof toPurchaseView>;
