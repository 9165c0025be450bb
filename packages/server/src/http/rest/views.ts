import { GUILD_LEDGER_TYPES, LEDGER_TYPES } from '@mana-credits/db';
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
  type: z.enum(LEDGER_TYPES),
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
  validityDays: z
    .int()
    .nullable()
    .describe('Days the purchased credits stay valid; null = they never expire'),
});

/** A credit lot (issue 15). */
export const lotView = z.object({
  id: z.uuid(),
  source: z.enum(['purchase', 'grant', 'gift', 'refund', 'funding']),
  category: z.enum(['paid', 'promotional']),
  priority: z.int().describe('0..100: lower burns first'),
  amount: credits.describe('Credits the lot received'),
  remaining: credits.describe('Left in the lot, held credits included; 0 once spent or expired'),
  held: credits.describe('Part of remaining held by open reservations'),
  expired: credits.describe('Credits that left the lot by expiry'),
  expiresAt: timestamp.nullable(),
  createdAt: timestamp,
});

export const lotList = z.object({
  items: z.array(lotView).describe('In burn order: priority, then soonest expiry (never last), then oldest'),
});

export const lotPortion = z.object({ lotId: z.uuid(), amount: credits });

/** A ledger entry with the lots that paid for it or that it filled. */
export const transactionWithLots = transactionView.extend({
  lots: z.array(lotPortion).describe('Lot portions, in burn order; empty for entries from before lots'),
});

/** credits.balance: the balance with what its lots say. */
export const accountBalanceView = balanceView.extend({
  byCategory: z
    .object({ paid: credits, promotional: credits })
    .describe('Spendable credits by category (they add up to balance, lapsed holds aside)'),
  expiringSoon: z
    .object({ amount: credits, expiresAt: timestamp })
    .nullable()
    .describe('Credits expiring within EXPIRY_NOTICE_DAYS, and when the first of them does'),
});

const page = <T extends z.ZodType>(item: T) =>
  z.object({
    items: z.array(item),
    nextCursor: z.string().nullable().describe('Pass as `cursor` for the next page; null on the last page'),
  });

export const purchaseStarted = z.object({
  purchaseId: z.uuid(),
  amount: z.int().describe('Price in the smallest unit of `currency`'),
  currency: z.string(),
  credits,
  clientSecret: z.string().optional().describe('payment_intent mode: confirm with Stripe.js'),
  checkoutUrl: z.string().optional().describe('checkout mode: send the buyer here'),
});

const purchaseStatus = z.enum(['pending', 'completed', 'failed', 'cancelled']);

export const purchaseState = z.object({
  id: z.uuid(),
  status: purchaseStatus,
  credits,
  priceEuroCents: z.int(),
  createdAt: timestamp,
  completedAt: timestamp.nullable(),
});

export const purchaseView = purchaseState.extend({
  packageId: z.uuid().nullable(),
  currency: z.string(),
  clawedBackCredits: credits,
  unrecoveredCredits: credits,
  returnedCredits: credits.describe('Credits taken back and given back again (disputes the merchant won)'),
  unmatchedPayment: z
    .object({
      amount: z.int().nullable().describe('What was paid, in the smallest unit of `currency`'),
      currency: z.string().nullable(),
      paymentIntentId: z.string().nullable(),
      checkoutSessionId: z.string().nullable(),
      receivedAt: timestamp,
    })
    .nullable()
    .describe(
      'The latest payment Stripe reported for this purchase whose amount or currency was not its price: received and not credited (an operator refunds it or grants the credits)',
    ),
});

export const purchasePage = page(purchaseView);

export const autoTopUpView = z.object({
  enabled: z.boolean(),
  packageId: z.uuid().nullable(),
  threshold: credits.nullable().describe('Buy when available credits fall below this'),
  maxPerMonth: z.int().nullable().describe('At most this many automatic purchases per UTC month'),
  paymentMethod: z.object({ brand: z.string(), last4: z.string() }).nullable(),
  disabledReason: z
    .string()
    .nullable()
    .describe('Why it is off: a failed payment, disable, the card removed'),
  lastAttempt: z
    .object({
      id: z.uuid(),
      status: z.enum(['pending', 'processing', 'succeeded', 'failed', 'skipped']),
      purchaseId: z.uuid().nullable(),
      failureCode: z.string().nullable().describe('e.g. card_declined, authentication_required'),
      failureMessage: z.string().nullable(),
      createdAt: timestamp,
      completedAt: timestamp.nullable(),
    })
    .nullable(),
});

export const autoTopUpSetupStarted = z.object({
  setupIntentId: z.string(),
  clientSecret: z
    .string()
    .describe('Confirm the SetupIntent with Stripe.js; its success turns auto top-up on'),
  enabled: z.boolean().describe('Whether a card saved before still pays until the new one is saved'),
});

export const poolBalance = z.object({
  guildId: z.string(),
  balance: credits,
  totalFunded: credits,
  totalSpent: credits,
});
export const poolInitialized = poolBalance.extend({ created: z.boolean() });
export const poolFunded = z.object({ poolBalance: credits, personalBalance: credits });
export const poolSpent = z.object({ transactionId: z.uuid(), poolBalance: credits });

export const guildTransactionView = z.object({
  id: z.uuid(),
  userId: z.string(),
  type: z.enum(GUILD_LEDGER_TYPES),
  amount: credits.describe('Signed: negative for spending from the pool'),
  balanceBefore: credits,
  balanceAfter: credits,
  appId: z.string().nullable(),
  description: z.string(),
  createdAt: timestamp,
});
export const guildTransactionPage = page(guildTransactionView);

export const memberLimits = z.object({
  dailyLimit: credits.nullable().describe('null: unlimited'),
  monthlyLimit: credits.nullable().describe('null: unlimited'),
  spentToday: credits.describe('UTC day'),
  spentThisMonth: credits.describe('UTC calendar month'),
  heldToday: credits.describe(
    "The member's open pool holds, whenever placed: they count against today's limit (not spent yet, but they may be)",
  ),
  heldThisMonth: credits.describe("The same open holds, counted against this month's limit"),
});

const giftType = z.enum(['simple', 'personalized', 'split', 'first_come', 'riddle']);
const giftStatus = z.enum(['active', 'depleted', 'expired', 'cancelled', 'refunded']);

export const giftInfo = z.object({
  code: z.string(),
  type: giftType,
  status: giftStatus,
  creditsPerPortion: credits,
  totalPortions: z.int(),
  claimedPortions: z.int(),
  riddleQuestion: z.string().nullable(),
  message: z.string().nullable(),
  creatorName: z.string().nullable(),
  expiresAt: timestamp,
});

export const createdGift = z.object({
  id: z.uuid(),
  code: z.string(),
  shortUrl: z.string(),
  type: giftType,
  creditsPerPortion: credits,
  totalPortions: z.int(),
  expiresAt: timestamp,
});

export const createdGiftView = createdGift.extend({
  status: giftStatus,
  claimedPortions: z.int(),
  escrowCredits: credits,
  refundedCredits: credits,
  targetEmail: z.string().nullable(),
  riddleQuestion: z.string().nullable(),
  message: z.string().nullable(),
  createdAt: timestamp,
});
export const createdGiftPage = page(createdGiftView);

export const receivedGiftView = z.object({
  code: z.string(),
  message: z.string().nullable(),
  type: giftType,
  redemptionId: z.uuid(),
  giftId: z.uuid(),
  creditsReceived: credits,
  creatorName: z.string().nullable(),
  redeemedAt: timestamp,
});
export const receivedGiftPage = page(receivedGiftView);

export const redeemed = z.object({ giftId: z.uuid(), creditsReceived: credits, balance: credits });
export const giftCancelled = z.object({ refunded: credits });
export const pendingGiftsRedeemed = z.object({ redeemed: z.int(), totalCredits: credits });

export const reserved = z.object({
  reservationId: z.uuid(),
  expiresAt: timestamp,
  balance: credits.describe('Spendable right after the hold'),
});
export const committed = z.object({
  transactionId: z.uuid(),
  committed: credits,
  released: credits,
  balance: credits,
});
export const released = z.object({
  released: credits,
  balance: credits.describe(
    'Spendable after the release; a repeated release (or one of a hold that expired) answers what is spendable now',
  ),
});

/** internal.credits.useBatch: one result per item, in input order. */
export const batchResults = z.object({
  results: z.array(
    z.union([
      z.object({
        idempotencyKey: z.string().nullable(),
        ok: z.literal(true),
        transactionId: z.uuid(),
        balance: credits.describe("The user's balance after the item (the pool's for an item with guildId)"),
      }),
      z.object({
        idempotencyKey: z.string().nullable(),
        ok: z.literal(false),
        error: z.object({ reason: z.string(), message: z.string() }),
      }),
    ]),
  ),
});

/** A package as operators manage it (internal.packages.upsert). */
export const storedPackageView = packageView.extend({
  stripePriceId: z.string().nullable(),
  active: z.boolean(),
  sortOrder: z.int(),
  createdAt: timestamp,
  updatedAt: timestamp,
});

/** internal.audit.reconcile. */
export const reconcileReport = z.object({
  ok: z.boolean().describe('true when no check found a violation'),
  checkedAt: timestamp,
  durationMs: z.int(),
  totals: z.record(z.string(), z.number()),
  checks: z.array(
    z.object({
      name: z.string(),
      description: z.string(),
      ok: z.boolean(),
      violations: z.int(),
      samples: z.array(z.record(z.string(), z.unknown())).describe('Up to 20 offending rows, with their ids'),
    }),
  ),
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
  StoredPackage: storedPackageView,
  BatchResults: batchResults,
  ReconcileReport: reconcileReport,
  PurchaseStarted: purchaseStarted,
  PurchaseState: purchaseState,
  Purchase: purchaseView,
  PurchasePage: purchasePage,
  AutoTopUp: autoTopUpView,
  PoolBalance: poolBalance,
  GuildTransactionPage: guildTransactionPage,
  MemberLimits: memberLimits,
  GiftInfo: giftInfo,
  CreatedGift: createdGift,
  CreatedGiftPage: createdGiftPage,
  ReceivedGiftPage: receivedGiftPage,
  Reservation: reserved,
  Error: errorBody,
};
