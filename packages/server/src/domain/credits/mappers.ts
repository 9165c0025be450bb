import type {
  GuildLedgerRow,
  JsonObject,
  LedgerRow,
  PackageRow,
  PlacedHold,
  PostedEntry,
  PurchaseRow,
  ReservationRow,
} from '@mana-credits/db';

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
    /** Days the credits of a purchase stay valid; null = they never expire. */
    validityDays: row.validity_days,
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
    /** Credits taken back and given back again (disputes the merchant won). */
    returnedCredits: row.returned_credits,
    /** The latest payment reported for it that did not match its price: received, not credited. */
    unmatchedPayment: row.unmatched_payment
      ? { ...row.unmatched_payment, receivedAt: new Date(row.unmatched_payment.receivedAt) }
      : null,
  };
}

/** The answer to every call that moves one personal ledger entry; also what a replay returns. */
export function toMovementResult(row: Pick<LedgerRow, 'id' | 'balance_after' | 'available_after'>) {
  return { transactionId: row.id, balance: row.available_after ?? row.balance_after };
}

export interface ReserveResult {
  reservationId: string;
  expiresAt: Date;
  /** Spendable right after the hold. */
  balance: number;
}

/** The answer to a hold, from its reservation row; also what a replay returns. */
export function toReserveResult(
  row: Pick<ReservationRow, 'id' | 'expires_at' | 'available_after'>,
): ReserveResult {
  return { reservationId: row.id, expiresAt: row.expires_at, balance: row.available_after };
}

/** The same answer from the hold the call has just placed. */
export function toPlacedHoldResult(placed: PlacedHold): ReserveResult {
  return { reservationId: placed.id, expiresAt: placed.expiresAt, balance: placed.available };
}

export interface CommitResult {
  transactionId: string;
  committed: number;
  released: number;
  /** Spendable right after the commit. */
  balance: number;
}

/**
 * The answer a commit gave, rebuilt from the committed reservation and the ledger row it posted (personal or
 * guild): what committing again with the same request answers.
 */
export function toCommitResult(
  reservation: Pick<ReservationRow, 'committed_amount' | 'released_amount'>,
  entry: Pick<LedgerRow | GuildLedgerRow, 'id' | 'balance_after' | 'available_after'>,
): CommitResult {
  return {
    transactionId: entry.id,
    committed: reservation.committed_amount!,
    released: reservation.released_amount!,
    balance: entry.available_after ?? entry.balance_after,
  };
}

/** The same answer from the entry the call has just posted. */
export function toPostedMovementResult(posted: PostedEntry): MovementResult {
  return { transactionId: posted.id, balance: posted.available };
}

export type MovementResult = ReturnType<typeof toMovementResult>;
export type TransactionView = ReturnType<typeof toTransactionView>;
export type PackageView = ReturnType<typeof toPackageView>;
export type StoredPackageView = ReturnType<typeof toStoredPackageView>;
export type PurchaseView = ReturnType<typeof toPurchaseView>;
