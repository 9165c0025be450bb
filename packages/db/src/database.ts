import type { ColumnType, Generated, Insertable, Selectable } from 'kysely';

/**
 * Every int8 column comes back as a JS number, converted by `parseInt8` (see connect.ts), which refuses
 * anything that is not a safe integer. Writes accept number or bigint.
 */
export type Int8 = ColumnType<number, number | bigint, number | bigint>;
export type Int8Default = ColumnType<number, number | bigint | undefined, number | bigint>;
export type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;
export type NullableTimestamp = ColumnType<
  Date | null,
  Date | string | null | undefined,
  Date | string | null
>;
export type Json = ColumnType<JsonObject | null, string | null | undefined, string | null>;
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

/** Every type a personal ledger row can have (the CHECK transactions_type_known). */
export const LEDGER_TYPES = [
  'purchase',
  'usage',
  'refund',
  'gift',
  'guild_funding',
  'grant',
  'clawback',
  'expiry',
] as const;
export type LedgerType = (typeof LEDGER_TYPES)[number];
export type PurchaseStatus = 'pending' | 'completed' | 'failed' | 'cancelled';
/** Every type a guild ledger row can have (the CHECK guild_transactions_type_known). */
export const GUILD_LEDGER_TYPES = ['funding', 'usage', 'refund', 'expiry'] as const;
export type GuildLedgerType = (typeof GUILD_LEDGER_TYPES)[number];
export type GiftType = 'simple' | 'personalized' | 'split' | 'first_come' | 'riddle';
export type GiftStatus = 'active' | 'depleted' | 'expired' | 'cancelled' | 'refunded';
export type RedemptionStatus =
  | 'success'
  | 'failed_wrong_answer'
  | 'failed_wrong_user'
  | 'failed_depleted'
  | 'failed_expired'
  | 'failed_already_claimed';

export interface BalancesTable {
  user_id: string;
  /** Everything the user owns, holds included: always Σ ledger. Spendable = balance − reserved. */
  balance: Int8Default;
  /** Credits held by open reservations. */
  reserved: Int8Default;
  total_earned: Int8Default;
  total_spent: Int8Default;
  version: Generated<number>;
  created_at: Timestamp;
  updated_at: Timestamp;
  /** No later than the earliest expiry of a lot with unpinned credits; spends are refused past it (credits.covers). */
  next_lot_expiry: ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;
  total_expired: Int8Default;
}

export interface TransactionsTable {
  id: Generated<string>;
  user_id: string;
  type: LedgerType;
  status: ColumnType<
    'pending' | 'completed' | 'failed',
    'pending' | 'completed' | 'failed' | undefined,
    never
  >;
  amount: Int8;
  balance_before: Int8;
  balance_after: Int8;
  /** The spendable balance (balance − reserved) right after this entry: what the caller was told. */
  available_after: ColumnType<number | null, number | bigint | null | undefined, never>;
  app_id: string | null;
  description: ColumnType<string, string | undefined, never>;
  metadata: Json;
  idempotency_key: string | null;
  request_hash: string | null;
  reference_transaction_id: string | null;
  guild_id: string | null;
  created_at: Timestamp;
  completed_at: NullableTimestamp;
  /** The lots this entry took credits from or gave them to (`lot_amounts[i]` > 0 of `lot_ids[i]`); null before lots. */
  lot_ids: ColumnType<string[] | null, string[] | null | undefined, never>;
  lot_amounts: ColumnType<number[] | null, number[] | null | undefined, never>;
}

export interface PackagesTable {
  id: Generated<string>;
  name: string;
  description: string | null;
  credits: Int8;
  price_euro_cents: Int8;
  stripe_price_id: string | null;
  active: Generated<boolean>;
  sort_order: Generated<number>;
  metadata: Json;
  created_at: Timestamp;
  updated_at: Timestamp;
  /** Days the credits of a purchase of this package stay valid; null = they never expire. */
  validity_days: ColumnType<number | null, number | null | undefined, number | null>;
}

export interface PurchasesTable {
  id: Generated<string>;
  user_id: string;
  package_id: string | null;
  credits: Int8;
  price_euro_cents: Int8;
  currency: Generated<string>;
  stripe_payment_intent_id: string | null;
  stripe_checkout_session_id: string | null;
  stripe_customer_id: string | null;
  stripe_charge_id: string | null;
  status: ColumnType<PurchaseStatus, PurchaseStatus | undefined, PurchaseStatus>;
  metadata: Json;
  created_at: Timestamp;
  completed_at: NullableTimestamp;
  /** Credits refunds and disputes took back from the balance. */
  clawed_back_credits: Int8Default;
  /** Credits refunds and disputes should have taken back but the balance no longer had. */
  unrecovered_credits: Int8Default;
  /** Credits taken back and given back again (disputes the merchant won): clawed back + returned only grows. */
  returned_credits: Int8Default;
  /** The package's validity when the purchase was made: its credits expire this many days after payment. */
  validity_days: ColumnType<number | null, number | null | undefined, never>;
  /** The latest payment reported for it that did not match its price: received, not credited. */
  unmatched_payment: ColumnType<UnmatchedPayment | null, never, string>;
}

/** A payment of a purchase whose amount or currency was not the purchase's price (webhook.ts). */
export interface UnmatchedPayment {
  amount: number | null;
  currency: string | null;
  paymentIntentId: string | null;
  checkoutSessionId: string | null;
  /** When it was reported (ISO 8601). */
  receivedAt: string;
}

export type ReversalKind = 'refund' | 'dispute';

/** One refund or dispute of a purchase, recorded once (append-only). */
export interface PurchaseReversalsTable {
  id: Generated<string>;
  purchase_id: string;
  kind: ReversalKind;
  /** `refund:<charge>:<cumulative amount>` or `dispute:<dispute>`: unique, so each is applied once. */
  reversal_key: string;
  stripe_object_id: string;
  stripe_event_id: string;
  /** Cumulative amount refunded, or the amount disputed, in cents. */
  amount_cents: Int8;
  /** The share of the purchase's credits this reversal takes back. */
  credits_due: Int8;
  created_at: Timestamp;
}

/** A dispute the merchant won (its reversal no longer counts), recorded once per dispute (append-only). */
export interface PurchaseReinstatementsTable {
  /** The reinstated dispute's reversal key, `dispute:<dispute>` (its reversal may arrive after it). */
  reversal_key: string;
  purchase_id: string;
  stripe_object_id: string;
  stripe_event_id: string;
  created_at: Timestamp;
}

export interface StripeCustomersTable {
  user_id: string;
  stripe_customer_id: string;
  email: string | null;
  created_at: Timestamp;
}

export interface StripeEventsTable {
  id: string;
  type: string;
  processed_at: Timestamp;
}

export interface UsageStatsTable {
  user_id: string;
  app_id: string;
  /** UTC day, as 'YYYY-MM-DD'. */
  date: string;
  credits_used: Int8Default;
}

export interface GuildPoolsTable {
  organization_id: string;
  balance: Int8Default;
  reserved: Int8Default;
  total_funded: Int8Default;
  total_spent: Int8Default;
  version: Generated<number>;
  created_at: Timestamp;
  updated_at: Timestamp;
  /** No later than the earliest expiry of a lot with unpinned credits; spends are refused past it (credits.covers). */
  next_lot_expiry: ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;
  total_expired: Int8Default;
}

export interface GuildSpendingLimitsTable {
  id: Generated<string>;
  organization_id: string;
  user_id: string;
  daily_limit: ColumnType<number | null, number | bigint | null, number | bigint | null>;
  monthly_limit: ColumnType<number | null, number | bigint | null, number | bigint | null>;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export interface GuildTransactionsTable {
  id: Generated<string>;
  organization_id: string;
  user_id: string;
  type: GuildLedgerType;
  amount: Int8;
  balance_before: Int8;
  balance_after: Int8;
  app_id: string | null;
  description: ColumnType<string, string | undefined, never>;
  metadata: Json;
  idempotency_key: string | null;
  request_hash: string | null;
  created_at: Timestamp;
  /** The spendable pool balance (balance − reserved) right after this entry: what the caller was told. */
  available_after: ColumnType<number | null, number | bigint | null | undefined, never>;
  /** The lots this entry took credits from or gave them to (`lot_amounts[i]` > 0 of `lot_ids[i]`); null before lots. */
  lot_ids: ColumnType<string[] | null, string[] | null | undefined, never>;
  lot_amounts: ColumnType<number[] | null, number[] | null | undefined, never>;
}

export interface GuildMemberUsageTable {
  organization_id: string;
  user_id: string;
  /** UTC day, as 'YYYY-MM-DD'. */
  day: string;
  spent: Int8Default;
}

export type ReservationStatus = 'open' | 'committed' | 'released' | 'expired';

/** A hold on an account's credits (a personal balance, or a guild pool when organization_id is set). */
export interface ReservationsTable {
  id: Generated<string>;
  user_id: string;
  organization_id: string | null;
  amount: Int8;
  status: ColumnType<ReservationStatus, ReservationStatus | undefined, ReservationStatus>;
  app_id: string;
  description: string;
  metadata: Json;
  idempotency_key: string;
  request_hash: string;
  /** Spendable right after the hold was placed: what reserve answered (and answers on a replay). */
  available_after: Int8;
  expires_at: ColumnType<Date, Date | string, Date | string>;
  committed_amount: ColumnType<number | null, number | bigint | null | undefined, number | bigint | null>;
  released_amount: ColumnType<number | null, number | bigint | null | undefined, number | bigint | null>;
  /** The usage ledger row the commit posted. */
  transaction_id: string | null;
  /** Fingerprint of the commit request, so a repeated commit can be told from a different one. */
  commit_hash: string | null;
  /** The lot portions the hold pinned, in burn order: a commit consumes them, a release unpins them. */
  lot_ids: ColumnType<string[] | null, string[] | null | undefined, never>;
  lot_amounts: ColumnType<number[] | null, number[] | null | undefined, never>;
  created_at: Timestamp;
  updated_at: Timestamp;
  closed_at: NullableTimestamp;
}

/** Where an idempotency key lives: the unique index (ledger, guild ledger, reservations) that scopes it. */
export type KeySpace = 'personal' | 'guild' | 'hold';

/**
 * A refused keyed request, which takes its key (migration 2026_12_03_1230_refusals): the key's first result
 * when no row was posted under it. Never changed or removed.
 */
export interface RefusalsTable {
  id: Generated<string>;
  key_space: KeySpace;
  user_id: string;
  /** The guild whose member's key this is (guild key space only). */
  organization_id: string | null;
  idempotency_key: string;
  request_hash: string;
  /** The refusal's reason (INSUFFICIENT_CREDITS, INSUFFICIENT_POOL_CREDITS, DAILY_LIMIT_EXCEEDED, …). */
  reason: string;
  /** What the refusal answered: { required, available } or { limit, spent, requested }. */
  details: ColumnType<JsonObject, string, never>;
  created_at: Timestamp;
}

export interface GiftCodesTable {
  id: Generated<string>;
  code: string;
  short_url: string;
  creator_id: string;
  creator_name: string | null;
  total_credits: Int8;
  credits_per_portion: Int8;
  total_portions: Generated<number>;
  claimed_portions: Generated<number>;
  type: GiftType;
  status: ColumnType<GiftStatus, GiftStatus | undefined, GiftStatus>;
  target_email: string | null;
  riddle_question: string | null;
  riddle_answer_hash: string | null;
  message: string | null;
  expires_at: ColumnType<Date, Date | string, Date | string>;
  created_at: Timestamp;
  updated_at: Timestamp;
  /** Escrow returned to the creator by cancel or expiry (2026_11_25_0300_gifts). */
  refunded_credits: Int8Default;
  /** The ledger entry that debited the escrow. */
  funding_transaction_id: string | null;
}

export interface GiftRedemptionsTable {
  id: Generated<string>;
  gift_code_id: string;
  redeemer_user_id: string;
  status: RedemptionStatus;
  credits_received: Int8Default;
  portion_number: number | null;
  credit_transaction_id: string | null;
  source_app_id: string | null;
  created_at: Timestamp;
}

/** One sliding-window counter per bucket (e.g. a client address), shared by every server instance. */
export interface RateLimitsTable {
  bucket: string;
  window_start: Timestamp;
  hits: number;
  previous_hits: Generated<number>;
}

/** One action of an operator in the console (2026_12_03_0600_admin_actions); append-only. */
export interface AdminActionsTable {
  id: Generated<string>;
  /** `jwt:<sub>` or `token:<name>`. */
  operator: string;
  action: string;
  /** The account acted on: `user:<id>` or `guild:<id>`. */
  target: string;
  reason: string;
  idempotency_key: string;
  request: ColumnType<JsonObject, string, never>;
  result: ColumnType<JsonObject, string, never>;
  created_at: Timestamp;
}

/** An operator action's key, claimed with its request's fingerprint before it runs (2026_12_04_1100). */
export interface AdminActionClaimsTable {
  idempotency_key: string;
  request_hash: string;
  created_at: Timestamp;
}

/** A console session ended by a sign-out, refused until it would have expired (2026_12_04_1200). */
export interface AdminSessionRevocationsTable {
  sid: string;
  expires_at: Timestamp;
  revoked_at: Generated<Timestamp>;
}

/** One event of the outbox (issue 16); see migrations/2026_12_03_0500_events.ts. */
export interface EventsTable {
  id: Generated<string>;
  seq: ColumnType<number, never, never>;
  type: string;
  user_id: string | null;
  guild_id: string | null;
  data: ColumnType<JsonObject, string, string>;
  created_at: Timestamp;
  /** Commit order, assigned by the relay (credits.relay_events); null until relayed. */
  position: ColumnType<number | null, never, number | bigint | null>;
  relayed_at: NullableTimestamp;
}

/** An account's low-balance threshold ('user' = a personal balance, 'guild' = a pool); null = alerts off. */
export interface AlertSettingsTable {
  account_kind: 'user' | 'guild';
  account_id: string;
  low_balance_threshold: ColumnType<number | null, number | bigint | null, number | bigint | null>;
  updated_at: Timestamp;
}

/** One row: the default threshold (LOW_BALANCE_THRESHOLD), written by the servers for the triggers. */
export interface EventSettingsTable {
  id: ColumnType<boolean, boolean | undefined, never>;
  low_balance_threshold: ColumnType<number | null, number | bigint | null, number | bigint | null>;
  updated_at: Timestamp;
}

export interface WebhooksTable {
  id: Generated<string>;
  url: string;
  description: string | null;
  /** Event types the endpoint receives; null = all. */
  event_types: string[] | null;
  secret: string;
  /** The secret before the last rotation, still signing until previous_secret_expires_at. */
  previous_secret: string | null;
  previous_secret_expires_at: NullableTimestamp;
  enabled: Generated<boolean>;
  disabled_reason: string | null;
  disabled_at: NullableTimestamp;
  /** First failed attempt since the last success; null while the endpoint answers. */
  failing_since: NullableTimestamp;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export type DeliveryStatus = 'pending' | 'delivered' | 'failed';

export interface WebhookDeliveriesTable {
  id: Generated<string>;
  webhook_id: string;
  event_id: string;
  kind: ColumnType<'original' | 'replay', 'original' | 'replay' | undefined, never>;
  status: ColumnType<DeliveryStatus, DeliveryStatus | undefined, DeliveryStatus>;
  attempts: Generated<number>;
  next_attempt_at: Timestamp;
  last_attempt_at: NullableTimestamp;
  last_status: number | null;
  last_error: string | null;
  created_at: Timestamp;
  delivered_at: NullableTimestamp;
}

export interface Database {
  'credits.balances': BalancesTable;
  'credits.transactions': TransactionsTable;
  'credits.packages': PackagesTable;
  'credits.purchases': PurchasesTable;
  'credits.purchase_reversals': PurchaseReversalsTable;
  'credits.purchase_reinstatements': PurchaseReinstatementsTable;
  'credits.stripe_customers': StripeCustomersTable;
  'credits.stripe_events': StripeEventsTable;
  'credits.usage_stats': UsageStatsTable;
  'credits.guild_pools': GuildPoolsTable;
  'credits.guild_spending_limits': GuildSpendingLimitsTable;
  'credits.guild_transactions': GuildTransactionsTable;
  'credits.guild_member_usage': GuildMemberUsageTable;
  'credits.reservations': ReservationsTable;
  'credits.refusals': RefusalsTable;
  'gifts.gift_codes': GiftCodesTable;
  'gifts.gift_redemptions': GiftRedemptionsTable;
  'gifts.rate_limits': RateLimitsTable;
  'credits.admin_actions': AdminActionsTable;
  'credits.admin_action_claims': AdminActionClaimsTable;
  'credits.admin_session_revocations': AdminSessionRevocationsTable;
  'credits.events': EventsTable;
  'credits.alert_settings': AlertSettingsTable;
  'credits.event_settings': EventSettingsTable;
  'credits.webhooks': WebhooksTable;
  'credits.webhook_deliveries': WebhookDeliveriesTable;
  'credits.lots': LotsTable;
  'credits.auto_top_up': AutoTopUpTable;
  'credits.auto_top_up_attempts': AutoTopUpAttemptsTable;
}

/** A lot of credits in an account (migration 2026_12_03_0800_lots). */
export interface LotsTable {
  id: Generated<string>;
  account_kind: 'user' | 'guild';
  account_id: string;
  source: 'purchase' | 'grant' | 'gift' | 'refund' | 'funding';
  category: 'paid' | 'promotional';
  priority: number;
  amount: Int8;
  remaining: Int8;
  pinned: Int8Default;
  expired: Int8Default;
  expires_at: NullableTimestamp;
  /** Made by the lots migration from a balance that predates lots: no ledger row created it. */
  opening: Generated<boolean>;
  /** Its credits.expiring event was written (once per lot). */
  expiry_noticed: Generated<boolean>;
  /** remaining = 0 (generated): what the lot indexes filter on, so a debit's update stays HOT. */
  spent: ColumnType<boolean, never, never>;
  created_at: Timestamp;
}

/** A user's auto top-up setting and saved card (migration 2026_12_03_0900_auto_top_up). */
export interface AutoTopUpTable {
  user_id: string;
  /** True only while a card is saved and nothing turned it off. */
  enabled: Generated<boolean>;
  package_id: string;
  threshold: Int8;
  max_per_month: number;
  stripe_customer_id: string | null;
  /** The SetupIntent of the latest `setup`: only its success saves a card. */
  setup_intent_id: string | null;
  payment_method_id: string | null;
  card_brand: string | null;
  card_last4: string | null;
  disabled_reason: string | null;
  disabled_at: NullableTimestamp;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export type AutoTopUpAttemptStatus = 'pending' | 'processing' | 'succeeded' | 'failed' | 'skipped';

/** One top-up the balance called for, written by the ledger trigger; its id keys the Stripe payment. */
export interface AutoTopUpAttemptsTable {
  id: Generated<string>;
  user_id: string;
  package_id: string;
  status: ColumnType<AutoTopUpAttemptStatus, AutoTopUpAttemptStatus | undefined, AutoTopUpAttemptStatus>;
  /** The ledger entry that crossed below the threshold. */
  transaction_id: string;
  purchase_id: string | null;
  payment_intent_id: string | null;
  failure_code: string | null;
  failure_message: string | null;
  tries: Generated<number>;
  next_attempt_at: Timestamp;
  created_at: Timestamp;
  updated_at: Timestamp;
  completed_at: NullableTimestamp;
}

export type AutoTopUpRow = Selectable<AutoTopUpTable>;
export type AutoTopUpAttemptRow = Selectable<AutoTopUpAttemptsTable>;
export type LedgerRow = Selectable<TransactionsTable>;
export type NewLedgerRow = Insertable<TransactionsTable>;
export type PackageRow = Selectable<PackagesTable>;
export type GiftRow = Selectable<GiftCodesTable>;
export type GiftRedemptionRow = Selectable<GiftRedemptionsTable>;
export type PurchaseRow = Selectable<PurchasesTable>;
export type GuildPoolRow = Selectable<GuildPoolsTable>;
export type GuildLedgerRow = Selectable<GuildTransactionsTable>;
export type ReservationRow = Selectable<ReservationsTable>;
export type RefusalRow = Selectable<RefusalsTable>;
export type LotRow = Selectable<LotsTable>;
export type AdminActionRow = Selectable<AdminActionsTable>;
export type EventRow = Selectable<EventsTable>;
export type WebhookRow = Selectable<WebhooksTable>;
export type WebhookDeliveryRow = Selectable<WebhookDeliveriesTable>;
