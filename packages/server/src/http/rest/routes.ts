import type { AnyTRPCProcedure, AnyTRPCRouter, inferProcedureOutput, TRPCRouterRecord } from '@trpc/server';
import { z } from 'zod';
import type { AppRouter } from '../../trpc/routers/_app.ts';
import {
  alertSetting,
  deliveryPage,
  eventPage,
  replayQueued,
  webhookDeleted,
  webhookList,
  webhookView,
  webhookWithSecret,
} from './event-views.ts';
import { balanceAtView, groupedUsageSeries, statementPageView, usageSeries } from './history-views.ts';
import {
  accountBalanceView,
  autoTopUpSetupStarted,
  autoTopUpView,
  batchResults,
  committed,
  createdGift,
  createdGiftPage,
  giftCancelled,
  giftInfo,
  guildTransactionPage,
  initResult,
  lotList,
  memberLimits,
  movementResult,
  packageView,
  pendingGiftsRedeemed,
  poolBalance,
  poolFunded,
  poolInitialized,
  poolSpent,
  purchasePage,
  purchaseStarted,
  purchaseState,
  receivedGiftPage,
  reconcileReport,
  redeemed,
  released,
  reserved,
  storedPackageView,
  transactionPage,
  transactionWithLots,
} from './views.ts';

/** Dotted paths of every procedure in a router record, e.g. 'internal.credits.use'. */
type ProcedurePaths<TRecord, TPrefix extends string = ''> = {
  [K in keyof TRecord & string]: TRecord[K] extends AnyTRPCProcedure
    ? `${TPrefix}${K}`
    : TRecord[K] extends AnyTRPCRouter
      ? ProcedurePaths<TRecord[K]['_def']['record'], `${TPrefix}${K}.`>
      : TRecord[K] extends TRPCRouterRecord
        ? ProcedurePaths<TRecord[K], `${TPrefix}${K}.`>
        : never;
}[keyof TRecord & string];

type Member<TNode, K extends string> = TNode extends AnyTRPCRouter
  ? TNode['_def']['record'][K]
  : K extends keyof TNode
    ? TNode[K]
    : never;

type ProcedureAt<TNode, TPath extends string> = TPath extends `${infer Head}.${infer Rest}`
  ? ProcedureAt<Member<TNode, Head>, Rest>
  : Member<TNode, TPath>;

export type ProcedurePath = ProcedurePaths<AppRouter['_def']['record']>;

type SameType<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;

export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'DELETE';

export interface RestRoute {
  method: HttpMethod;
  /** Fastify syntax; a path parameter is named after the input field it fills (`:userId` → input.userId). */
  path: `/api/v1/${string}`;
  /** The procedure that answers: its input schema validates the request, its logic is the behaviour. */
  procedure: ProcedurePath;
  auth: 'user' | 'service' | 'public';
  summary: string;
  /** The response body; checked against the procedure's output type at compile time. */
  output: z.ZodType;
  /** Statuses this route answers besides 200, 400 (invalid input) and 401 (auth). */
  errors?: readonly (402 | 403 | 404 | 409 | 412 | 429 | 503)[];
}

/** One REST route; refuses to compile when `output` does not describe what the procedure returns. */
function route<P extends ProcedurePath, S extends z.ZodType>(
  spec: RestRoute & { procedure: P; output: S } & (SameType<
      z.output<S>,
      inferProcedureOutput<ProcedureAt<AppRouter, P>>
    > extends true
      ? unknown
      : { output: 'does not describe the procedure output' }),
): RestRoute {
  return spec;
}

/**
 * The REST surface: the seed's paths and methods, each answered by the procedure named here. Adding a
 * route is one entry (and, for a new response shape, one schema in views.ts).
 */
export const restRoutes: readonly RestRoute[] = [
  route({
    method: 'GET',
    path: '/api/v1/credits/balance',
    procedure: 'credits.balance',
    auth: 'user',
    summary: 'Your balance',
    output: accountBalanceView,
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/lots',
    procedure: 'credits.lots',
    auth: 'user',
    summary: 'Your credit lots in burn order (includeSpent=true adds spent and expired ones)',
    output: lotList,
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/transactions/:transactionId',
    procedure: 'credits.transaction',
    auth: 'user',
    summary: 'One of your ledger entries, with the lots that paid for it or that it filled',
    output: transactionWithLots,
    errors: [404],
  }),
  route({
    method: 'POST',
    path: '/api/v1/credits/use',
    procedure: 'credits.use',
    auth: 'user',
    summary: 'Spend your credits (idempotent with idempotencyKey)',
    output: movementResult,
    errors: [402, 409],
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/transactions',
    procedure: 'credits.transactions',
    auth: 'user',
    summary: 'Your ledger entries, newest first',
    output: transactionPage,
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/packages',
    procedure: 'credits.packages',
    auth: 'public',
    summary: 'Credit packages on sale',
    output: z.array(packageView),
  }),
  route({
    method: 'GET',
    path: '/api/v1/internal/credits/balance/:userId',
    procedure: 'internal.credits.balance',
    auth: 'service',
    summary: "A user's balance",
    output: accountBalanceView,
  }),
  route({
    method: 'GET',
    path: '/api/v1/internal/credits/lots/:userId',
    procedure: 'internal.credits.lots',
    auth: 'service',
    summary: "A user's credit lots in burn order",
    output: lotList,
  }),
  route({
    method: 'GET',
    path: '/api/v1/internal/credits/transactions/:userId/:transactionId',
    procedure: 'internal.credits.transaction',
    auth: 'service',
    summary: "One of a user's ledger entries, with its lots",
    output: transactionWithLots,
    errors: [404],
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/credits/use',
    procedure: 'internal.credits.use',
    auth: 'service',
    summary: "Spend a user's credits (idempotent with idempotencyKey)",
    output: movementResult,
    errors: [402, 409],
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/credits/use-batch',
    procedure: 'internal.credits.useBatch',
    auth: 'service',
    summary:
      'Spend for up to 1,000 items in one call (each with its own idempotencyKey; an item that cannot be paid or is malformed fails alone)',
    output: batchResults,
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/credits/refund',
    procedure: 'internal.credits.refund',
    auth: 'service',
    summary: 'Refund all or part of a usage entry',
    output: movementResult,
    errors: [404, 409],
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/credits/init',
    procedure: 'internal.credits.init',
    auth: 'service',
    summary: "Create a user's balance if missing",
    output: initResult,
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/credits/grant',
    procedure: 'internal.credits.grant',
    auth: 'service',
    summary: 'Grant promotional or support credits',
    output: movementResult,
    errors: [409, 412],
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/credits/reserve',
    procedure: 'internal.credits.reserve',
    auth: 'service',
    summary: "Hold a user's credits until commit, release or expiry (idempotent with idempotencyKey)",
    output: reserved,
    errors: [402, 409],
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/credits/commit',
    procedure: 'internal.credits.commit',
    auth: 'service',
    summary: 'Spend all or part of a hold; the rest is returned',
    output: committed,
    errors: [404, 409, 412],
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/credits/release',
    procedure: 'internal.credits.release',
    auth: 'service',
    summary: 'Return a whole hold',
    output: released,
    errors: [404, 409],
  }),
  route({
    method: 'POST',
    path: '/api/v1/credits/purchase',
    procedure: 'credits.purchase',
    auth: 'user',
    summary: 'Start buying a package with Stripe',
    output: purchaseStarted,
    errors: [404, 412, 503],
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/purchases',
    procedure: 'credits.purchases',
    auth: 'user',
    summary: 'Your purchases, newest first',
    output: purchasePage,
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/purchase/:purchaseId',
    procedure: 'credits.purchaseStatus',
    auth: 'user',
    summary: 'The state of one of your purchases',
    output: purchaseState,
    errors: [404],
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/guild/:guildId/balance',
    procedure: 'guild.balance',
    auth: 'user',
    summary: "A guild pool's balance (members)",
    output: poolBalance,
    errors: [403, 404, 503],
  }),
  route({
    method: 'POST',
    path: '/api/v1/credits/guild/:guildId/fund',
    procedure: 'guild.fund',
    auth: 'user',
    summary: 'Move your credits into the pool (members; idempotent with idempotencyKey)',
    output: poolFunded,
    errors: [402, 403, 404, 409, 412, 503],
  }),
  route({
    method: 'POST',
    path: '/api/v1/credits/guild/:guildId/use',
    procedure: 'guild.use',
    auth: 'user',
    summary: 'Spend pool credits within your limits (members; idempotent with idempotencyKey)',
    output: poolSpent,
    errors: [402, 403, 404, 409, 412, 503],
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/guild/:guildId/lots',
    procedure: 'guild.lots',
    auth: 'user',
    summary: "The pool's credit lots in burn order (owners and admins)",
    output: lotList,
    errors: [403, 404],
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/guild/:guildId/transactions',
    procedure: 'guild.transactions',
    auth: 'user',
    summary: "The pool's ledger, newest first (members see their own entries, owners and admins all)",
    output: guildTransactionPage,
    errors: [403, 404, 503],
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/guild/:guildId/members/:userId/limits',
    procedure: 'guild.memberLimits',
    auth: 'user',
    summary: "A member's limits and spending (the member, owners and admins)",
    output: memberLimits,
    errors: [403, 404, 503],
  }),
  route({
    method: 'PUT',
    path: '/api/v1/credits/guild/:guildId/members/:userId/limits',
    procedure: 'guild.setMemberLimits',
    auth: 'user',
    summary:
      "Set a member's daily and monthly limits (owners; admins for plain members only; null = unlimited)",
    output: memberLimits,
    errors: [403, 404, 503],
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/guild-pool/init',
    procedure: 'internal.guildPool.init',
    auth: 'service',
    summary: "Create a guild's pool if missing",
    output: poolInitialized,
  }),
  route({
    method: 'GET',
    path: '/api/v1/gifts/:code',
    procedure: 'gifts.info',
    auth: 'public',
    summary: 'What a gift code holds (rate limited per client)',
    output: giftInfo,
    errors: [404, 429],
  }),
  route({
    method: 'POST',
    path: '/api/v1/gifts',
    procedure: 'gifts.create',
    auth: 'user',
    summary: 'Create a gift from your credits (held in escrow; idempotent with idempotencyKey)',
    output: createdGift,
    errors: [402, 409],
  }),
  route({
    method: 'GET',
    path: '/api/v1/gifts/me/created',
    procedure: 'gifts.myCreated',
    auth: 'user',
    summary: 'Gifts you created, newest first',
    output: createdGiftPage,
  }),
  route({
    method: 'GET',
    path: '/api/v1/gifts/me/received',
    procedure: 'gifts.myReceived',
    auth: 'user',
    summary: 'Gifts you redeemed, newest first',
    output: receivedGiftPage,
  }),
  route({
    method: 'POST',
    path: '/api/v1/gifts/:code/redeem',
    procedure: 'gifts.redeem',
    auth: 'user',
    summary: 'Redeem a gift code',
    output: redeemed,
    errors: [403, 404, 409, 412, 429],
  }),
  route({
    method: 'DELETE',
    path: '/api/v1/gifts/:id',
    procedure: 'gifts.cancel',
    auth: 'user',
    summary: 'Cancel your gift; unclaimed credits come back',
    output: giftCancelled,
    errors: [403, 404, 412],
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/gifts/redeem-pending',
    procedure: 'internal.gifts.redeemPending',
    auth: 'service',
    summary: 'Redeem the personalized gifts waiting for a new user’s email',
    output: pendingGiftsRedeemed,
  }),
  // History reads (issue 18). The statement is also served as CSV (statement-csv.ts).
  route({
    method: 'GET',
    path: '/api/v1/credits/balance-at',
    procedure: 'credits.balanceAt',
    auth: 'user',
    summary: 'Your balance at an instant (after the last entry at or before `at`)',
    output: balanceAtView,
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/usage',
    procedure: 'credits.usage',
    auth: 'user',
    summary: 'Your usage per UTC hour, day or month (at most 1000 buckets), optionally per app',
    output: usageSeries,
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/statement',
    procedure: 'credits.statement',
    auth: 'user',
    summary: 'Your statement of [from, to): opening balance, entries oldest first (paged), closing balance',
    output: statementPageView,
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/guild/:guildId/usage',
    procedure: 'guild.usage',
    auth: 'user',
    summary: "A pool's usage per UTC hour, day or month, optionally per member or app (owners and admins)",
    output: groupedUsageSeries,
    errors: [403, 404, 503],
  }),
  route({
    method: 'GET',
    path: '/api/v1/internal/credits/balance-at/:userId',
    procedure: 'internal.credits.balanceAt',
    auth: 'service',
    summary: "A user's balance at an instant",
    output: balanceAtView,
  }),
  route({
    method: 'GET',
    path: '/api/v1/internal/credits/statement',
    procedure: 'internal.credits.statement',
    auth: 'service',
    summary: "A user's statement of [from, to), paged",
    output: statementPageView,
  }),
  route({
    method: 'GET',
    path: '/api/v1/internal/usage',
    procedure: 'internal.usage',
    auth: 'service',
    summary: 'Usage of every user (or one app) per UTC bucket; per app or per user (top spenders)',
    output: groupedUsageSeries,
  }),
  // Auto top-up (issue 19).
  route({
    method: 'POST',
    path: '/api/v1/credits/auto-top-up/setup',
    procedure: 'credits.autoTopUp.setup',
    auth: 'user',
    summary: 'Set auto top-up (package, threshold, maxPerMonth) and start saving a card (a SetupIntent)',
    output: autoTopUpSetupStarted,
    errors: [404, 412, 503],
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/auto-top-up',
    procedure: 'credits.autoTopUp.get',
    auth: 'user',
    summary: 'Your auto top-up: on or off (and why), package, threshold, card, last attempt',
    output: autoTopUpView,
  }),
  route({
    method: 'DELETE',
    path: '/api/v1/credits/auto-top-up',
    procedure: 'credits.autoTopUp.disable',
    auth: 'user',
    summary: 'Turn auto top-up off (an attempt already sent ends on its own)',
    output: autoTopUpView,
  }),
  route({
    method: 'GET',
    path: '/api/v1/internal/credits/auto-top-up/:userId',
    procedure: 'internal.credits.autoTopUp.get',
    auth: 'service',
    summary: "A user's auto top-up",
    output: autoTopUpView,
  }),
  route({
    method: 'DELETE',
    path: '/api/v1/internal/credits/auto-top-up/:userId',
    procedure: 'internal.credits.autoTopUp.disable',
    auth: 'service',
    summary: "Turn a user's auto top-up off",
    output: autoTopUpView,
  }),
  // Events out (issue 16): alert thresholds, the pull listing and webhook endpoints.
  route({
    method: 'GET',
    path: '/api/v1/credits/alerts',
    procedure: 'credits.alerts',
    auth: 'user',
    summary: 'The low-balance threshold of your balance',
    output: alertSetting,
  }),
  route({
    method: 'PUT',
    path: '/api/v1/credits/alerts',
    procedure: 'credits.setAlerts',
    auth: 'user',
    summary: "Set it: credits, null (no balance events) or 'default'",
    output: alertSetting,
  }),
  route({
    method: 'GET',
    path: '/api/v1/credits/guild/:guildId/alerts',
    procedure: 'guild.alerts',
    auth: 'user',
    summary: "The pool's low-balance threshold (members)",
    output: alertSetting,
    errors: [403, 404, 503],
  }),
  route({
    method: 'PUT',
    path: '/api/v1/credits/guild/:guildId/alerts',
    procedure: 'guild.setAlerts',
    auth: 'user',
    summary: "Set the pool's low-balance threshold (owners and admins)",
    output: alertSetting,
    errors: [403, 404, 503],
  }),
  route({
    method: 'GET',
    path: '/api/v1/internal/credits/alerts/:userId',
    procedure: 'internal.credits.alerts',
    auth: 'service',
    summary: "A user's low-balance threshold",
    output: alertSetting,
  }),
  route({
    method: 'PUT',
    path: '/api/v1/internal/credits/alerts/:userId',
    procedure: 'internal.credits.setAlerts',
    auth: 'service',
    summary: "Set a user's low-balance threshold",
    output: alertSetting,
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/packages',
    procedure: 'internal.packages.upsert',
    auth: 'service',
    summary: 'Create a credit package, or change the one named by `id`',
    output: storedPackageView,
  }),
  route({
    method: 'GET',
    path: '/api/v1/internal/audit/reconcile',
    procedure: 'internal.audit.reconcile',
    auth: 'service',
    summary:
      'Check in one read-only snapshot that no credit was created, lost or spent twice (every check, with offending ids)',
    output: reconcileReport,
  }),
  route({
    method: 'GET',
    path: '/api/v1/internal/events',
    procedure: 'internal.events.list',
    auth: 'service',
    summary: 'Events in commit order after the cursor `after` (repeat `types` to filter)',
    output: eventPage,
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/events/:eventId/replay',
    procedure: 'internal.webhooks.replay',
    auth: 'service',
    summary: 'Send an event again (to `webhookId`, or every subscribed endpoint), same id',
    output: replayQueued,
    errors: [404],
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/webhooks',
    procedure: 'internal.webhooks.create',
    auth: 'service',
    summary: 'Create a webhook endpoint; its secret is shown in this answer only',
    output: webhookWithSecret,
  }),
  route({
    method: 'GET',
    path: '/api/v1/internal/webhooks',
    procedure: 'internal.webhooks.list',
    auth: 'service',
    summary: 'Webhook endpoints, with whether they are enabled and why not',
    output: webhookList,
  }),
  route({
    method: 'PUT',
    path: '/api/v1/internal/webhooks/:id',
    procedure: 'internal.webhooks.update',
    auth: 'service',
    summary: 'Change an endpoint (url, events, description, enabled)',
    output: webhookView,
    errors: [404],
  }),
  route({
    method: 'DELETE',
    path: '/api/v1/internal/webhooks/:id',
    procedure: 'internal.webhooks.delete',
    auth: 'service',
    summary: 'Delete an endpoint and its pending deliveries',
    output: webhookDeleted,
    errors: [404],
  }),
  route({
    method: 'POST',
    path: '/api/v1/internal/webhooks/:id/rotate-secret',
    procedure: 'internal.webhooks.rotateSecret',
    auth: 'service',
    summary: 'A new signing secret (shown once); the old one keeps signing for 24 h',
    output: webhookWithSecret,
    errors: [404],
  }),
  route({
    method: 'GET',
    path: '/api/v1/internal/webhooks/:webhookId/deliveries',
    procedure: 'internal.webhooks.deliveries',
    auth: 'service',
    summary: "An endpoint's deliveries, newest first",
    output: deliveryPage,
    errors: [404],
  }),
];
