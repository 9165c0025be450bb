import { z } from 'zod';
import { jsonValue } from '../../schemas.ts';

/**
 * Response bodies of the REST routes as zod schemas, for the OpenAPI document. Each route checks at compile
 * time that its schema describes exactly what its procedure returns (see `route` in routes.ts); dates travel
 * as ISO 8601 strings.
 */
const credits = z.int();
const timestamp = z.date();

export const balanceView = z.object({
  balance: credits.describe('Spendable now: balance minus reserved'),
  reserved: credits.describe('Held by open reservations'),
  totalEarned: credits,
  totalSpent: credits,
  updatedAt: timestamp.nullable(),
});

/** The ledger entry a money-moving call wrote. */
export const movementResult = z.object({
  transactionId: z.uuid(),
  balance: credits.describe('Spendable right after this entry (a replay answers the first result)'),
});

export const initResult = balanceView.extend({ created: z.boolean() });

export const transactionView = z.object({
  id: z.uuid(),
  type: z.enum(['purchase', 'usage', 'refund', 'gift', 'guild_funding', 'grant', 'clawback']),
  status: z.enum(['pending', 'completed', 'failed']),
  amount: credits.describe('Signed: negative for debits'),
  balanceBefore: credits,
  balanceAfter: credits,
  appId: z.string().nullable(),
  description: z.string(),
  metadata: z.record(z.string(), jsonValue).nullable(),
  guildId: z.string().nullable(),
  referenceTransactionId: z.uuid().nullable(),
  createdAt: timestamp,
});

export const transactionPage = z.object({
  items: z.array(transactionView),
  nextCursor: z.uuid().nullable().describe('Pass as `cursor` for the next page; null on the last page'),
});

export const packageView = z.object({
  id: z.uuid(),
  name: z.string(),
  description: z.string().nullable(),
  credits,
  priceEuroCents: z.int(),
});

export const errorBody = z.object({
  error: z.object({
    message: z.string(),
    reason: z.string().describe('Stable machine-readable reason, e.g. INSUFFICIENT_CREDITS or VALIDATION'),
    details: z
      .record(z.string(), z.unknown())
      .optional()
      .describe('e.g. { required, available } for INSUFFICIENT_CREDITS, { issues } for VALIDATION'),
    requestId: z.string(),
  }),
});

/** Schemas the document names under components/schemas (the rest are inlined where used). */
export const namedSchemas: Readonly<Record<string, z.ZodType>> = {
  JsonValue: jsonValue,
  Balance: balanceView,
  Movement: movementResult,
  InitializedBalance: initResult,
  Transaction: transactionView,
  TransactionPage: transactionPage,
  Package: packageView,
  Error: errorBody,
};
