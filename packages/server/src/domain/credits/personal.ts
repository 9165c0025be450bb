import {
  creditBalance,
  type Database,
  debitBalance,
  ensureBalance,
  expiredBecauseOf,
  getBalance,
  type JsonObject,
  LOT_DEFAULTS,
  type LotCategory,
  type LotCredit,
  listActivePackages,
  listLedgerEntries,
  lockLedgerEntry,
  portionsOf,
  refundedAmountOf,
  slicePortions,
  summarizeLots,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { InvalidCursorError, InvalidRequestError, NotFoundError } from '../errors.ts';
import { ledgerKeys, requestHash, withIdempotency } from '../idempotency.ts';
import { expireAccountLots, spendPersonal } from '../spending.ts';
import { creditEarned } from './balance-limit.ts';
import {
  type MovementResult,
  toMovementResult,
  toPackageView,
  toPostedMovementResult,
  toTransactionView,
} from './mappers.ts';

export interface SpendInput {
  userId: string;
  amount: number;
  appId: string;
  description: string;
  idempotencyKey?: string | undefined;
  metadata?: JsonObject | undefined;
}

/** The fingerprint of a usage debit; shared by credits.use and batch items, which share one key space. */
export function usageRequestHash(input: Omit<SpendInput, 'userId' | 'idempotencyKey'>): string {
  return requestHash('credits.use', {
    amount: input.amount,
    appId: input.appId,
    description: input.description,
    metadata: input.metadata,
  });
}

/**
 * What a usage request writes besides its account (amount, app, description, metadata, key, fingerprint):
 * one mapping for credits.use, guild.use and holds, so their ledger rows and reservations say the same.
 */
export function usageFields(
  input: Omit<SpendInput, 'userId'>,
  requestHash: string,
): Omit<SpendInput, 'userId'> & { requestHash: string } {
  return {
    amount: input.amount,
    appId: input.appId,
    description: input.description,
    metadata: input.metadata,
    idempotencyKey: input.idempotencyKey,
    requestHash,
  };
}

/**
 * Spends personal credits: one statement, idempotent by (user, key); a keyed refusal is recorded under the
 * key (see spendPersonal), so a replay, or the late original of a retried call, answers it again.
 */
export async function spendCredits(db: Kysely<Database>, input: SpendInput): Promise<MovementResult> {
  const hash = usageRequestHash(input);
  return withIdempotency(
    ledgerKeys(db, input.userId),
    { key: input.idempotencyKey, hash },
    async (claim) => {
      const posted = await spendPersonal(db, { ...input, claim }, (executor) =>
        debitBalance(
          executor,
          { userId: input.userId, type: 'usage', ...usageFields(input, hash) },
          'spent',
          claim,
        ),
      );
      return toPostedMovementResult(posted);
    },
    toMovementResult,
  );
}

export interface GrantInput {
  userId: string;
  amount: number;
  reason: string;
  idempotencyKey: string;
  appId?: string | undefined;
  /** Stored on the ledger row (the operator console records who granted, and why); part of the fingerprint. */
  metadata?: JsonObject | undefined;
  /** When the granted credits expire (a future instant); or `expiresInDays` after the grant. Neither: never. */
  expiresAt?: Date | undefined;
  expiresInDays?: number | undefined;
  /** Default promotional. */
  category?: LotCategory | undefined;
  /** Burn priority 0..100 (lower burns first); default that of the category (promotional 10, paid 50). */
  priority?: number | undefined;
}

const DAY_MS = 86_400_000;

/** The lot a grant fills: promotional at priority 10 unless the caller says otherwise. */
function grantLot(input: GrantInput, grantedAt: Date): LotCredit {
  const category = input.category ?? 'promotional';
  const expiresAt =
    input.expiresAt ??
    (input.expiresInDays === undefined ? null : new Date(grantedAt.getTime() + input.expiresInDays * DAY_MS));
  return {
    kind: 'new',
    source: 'grant',
    category,
    priority: input.priority ?? (category === 'paid' ? LOT_DEFAULTS.purchase : LOT_DEFAULTS.grant).priority,
    expiresAt,
  };
}

/**
 * Promotional or support credits, in a lot of their own (expiry, category and priority as given); refused
 * (BALANCE_LIMIT_EXCEEDED) past MAX_CREDITS.
 */
export async function grantCredits(db: Kysely<Database>, input: GrantInput): Promise<MovementResult> {
  const hash = requestHash('credits.grant', {
    amount: input.amount,
    reason: input.reason,
    metadata: input.metadata,
    expiresAt: input.expiresAt?.toISOString(),
    expiresInDays: input.expiresInDays,
    category: input.category,
    priority: input.priority,
  });
  return withIdempotency(
    ledgerKeys(db, input.userId),
    { key: input.idempotencyKey, hash },
    (claim) =>
      db.transaction().execute(async (trx) => {
        // Checked on execution rather than in the input schema: a refusal here is looked up by the key, so a
        // retry of a grant that was made before its expiresAt passed is answered with that grant (a replay).
        if (input.expiresAt && input.expiresAt.getTime() <= Date.now()) {
          throw new InvalidRequestError('Invalid input: expiresAt: must be in the future', 'VALIDATION', {
            issues: [{ field: 'expiresAt', message: 'must be in the future' }],
          });
        }
        const posted = await creditEarned(
          trx,
          {
            userId: input.userId,
            type: 'grant',
            amount: input.amount,
            appId: input.appId,
            description: input.reason,
            metadata: input.metadata,
            idempotencyKey: input.idempotencyKey,
            requestHash: hash,
          },
          grantLot(input, new Date()),
          // The key is shared with debits: one refused for a use is not free for a grant.
          claim,
        );
        return toPostedMovementResult(posted);
      }),
    toMovementResult,
  );
}

export interface RefundInput {
  userId: string;
  transactionId: string;
  amount?: number | undefined;
  description: string;
  idempotencyKey: string;
  appId?: string | undefined;
  /** Stored on the refund's ledger row (the operator console's who and why); part of the fingerprint. */
  metadata?: JsonObject | undefined;
}

/**
 * Refunds all or part of one earlier usage entry. The usage row is locked (FOR UPDATE locks, it does not
 * modify), so concurrent refunds of one transaction are serialised and together never exceed it.
 */
export async function refundUsage(db: Kysely<Database>, input: RefundInput): Promise<MovementResult> {
  const hash = requestHash('credits.refund', {
    transactionId: input.transactionId,
    amount: input.amount,
    description: input.description,
    metadata: input.metadata,
  });
  return withIdempotency(
    ledgerKeys(db, input.userId),
    { key: input.idempotencyKey, hash },
    (claim) =>
      db.transaction().execute(async (trx) => {
        const original = await lockLedgerEntry(trx, input.userId, input.transactionId);
        if (!original) throw new NotFoundError('Transaction');
        if (original.type !== 'usage') {
          throw new InvalidRequestError('Only usage transactions can be refunded', 'NOT_REFUNDABLE', {
            field: 'transactionId',
          });
        }
        const refunded = await refundedAmountOf(trx, original.id);
        const remaining = -original.amount - refunded;
        const amount = input.amount ?? remaining;
        if (remaining <= 0 || amount > remaining) {
          throw new InvalidRequestError(
            `Refund exceeds what is left of the transaction (${remaining} refundable)`,
            'REFUND_EXCEEDS_TRANSACTION',
            { field: 'amount', requested: amount, refundable: remaining },
          );
        }
        // Back to the lots that paid for it, the part refunded before skipped; a use from before lots had
        // no lots named, so its refund is a new promotional lot.
        const paidBy = portionsOf(original);
        const lots: LotCredit =
          paidBy.length > 0
            ? { kind: 'return', portions: slicePortions(paidBy, refunded, amount) }
            : { kind: 'new', source: 'refund', ...LOT_DEFAULTS.refund, expiresAt: null };
        const posted = await creditBalance(
          trx,
          {
            userId: input.userId,
            type: 'refund',
            amount,
            appId: input.appId ?? original.app_id,
            description: input.description,
            metadata: input.metadata,
            idempotencyKey: input.idempotencyKey,
            requestHash: hash,
            referenceTransactionId: original.id,
          },
          lots,
          'unspent',
          claim,
        );
        // A refund never extends an expiry: what went back to a lapsed lot expires in this transaction (its
        // expiry rows name this refund), and the answer is what is spendable after that — a replay too.
        const expired = await expireAccountLots(trx, 'user', input.userId, posted.id);
        return toPostedMovementResult({ ...posted, available: posted.available - expired });
      }),
    async (first) => {
      const expired = await expiredBecauseOf(db, 'user', input.userId, first.id);
      const answer = toMovementResult(first);
      return { ...answer, balance: answer.balance - expired };
    },
  );
}

/**
 * A user's balance as they may spend it now, with what the lots say of it: spendable credits by category and
 * the credits that expire within `noticeDays` (EXPIRY_NOTICE_DAYS).
 */
export async function balanceOf(db: Kysely<Database>, userId: string, noticeDays: number) {
  const [balance, lots] = await Promise.all([
    getBalance(db, userId),
    summarizeLots(db, 'user', userId, noticeDays),
  ]);
  return { ...balance, byCategory: lots.byCategory, expiringSoon: lots.expiringSoon };
}

export async function initBalance(db: Kysely<Database>, userId: string) {
  const created = await ensureBalance(db, userId);
  return { created, ...(await getBalance(db, userId)) };
}

export async function transactionHistory(
  db: Kysely<Database>,
  userId: string,
  page: { limit: number; cursor?: string | undefined },
) {
  const result = await listLedgerEntries(db, userId, page);
  if (!result) throw new InvalidCursorError('a transaction of yours');
  return { items: result.items.map(toTransactionView), nextCursor: result.nextCursor };
}

export async function activePackages(db: Kysely<Database>) {
  const rows = await listActivePackages(db);
  return rows.map(toPackageView);
}
