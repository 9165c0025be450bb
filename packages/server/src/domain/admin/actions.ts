import {
  type AdminActionRow,
  claimAdminActionKey,
  type Database,
  findAdminActionByKey,
  findGift,
  findLedgerRow,
  findReservation,
  insertAdminAction,
  type JsonObject,
  releaseAdminActionKey,
  systemKeys,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { grantCredits, refundUsage } from '../credits/personal.ts';
import { releaseReservation } from '../credits/reservations.ts';
import { IdempotencyConflictError, InvalidRequestError, NotFoundError } from '../errors.ts';
import { cancelGift } from '../gifts/escrow.ts';
import { applyMemberLimits } from '../guild/limits.ts';
import type { MembershipClient } from '../guild/membership.ts';
import { isReplayed, markReplayed, requestHash } from '../idempotency.ts';
import { certainlyNotCommitted } from '../outcome.ts';

// The operator console's actions (issue 18). Each calls the same domain function as the API — grantCredits,
// refundUsage, cancelGift, releaseReservation, applyMemberLimits (the write of setMemberLimits) — and writes
// no money SQL of its own. Each needs a reason, is idempotent by a key derived from the console form's nonce,
// and is recorded in credits.admin_actions with the operator; the ledger rows it writes (grant, refund, a
// cancelled gift's returned escrow) carry the operator and the reason in their metadata.

/** The app id of the ledger rows the console writes. */
export const ADMIN_APP_ID = 'admin-console';

export type AdminActionName = 'grant' | 'refund' | 'cancel_gift' | 'release_hold' | 'set_limits';

export interface AdminActionDeps {
  db: Kysely<Database>;
  membership: MembershipClient;
}

/** Who acts, why, and the form's nonce (one per rendered form: submitting it twice acts once). */
export interface ActionCall {
  /** `jwt:<sub>` or `token:<name>`. */
  operator: string;
  reason: string;
  nonce: string;
}

export interface ActionOutcome {
  id: string;
  action: string;
  target: string;
  operator: string;
  reason: string;
  request: JsonObject;
  result: JsonObject;
  createdAt: Date;
  /** True when this nonce had been acted on before: nothing happened now, this is the first outcome. */
  replayed: boolean;
}

const NONCE = /^[A-Za-z0-9_-]{16,100}$/;
const MAX_REASON = 500;

/** The audit row's key of an action (the ledger rows it posts carry systemKeys.adminAction of the nonce). */
const adminActionKey = (nonce: string) => `admin:${nonce}`;

const toOutcome = (row: AdminActionRow, replayed: boolean): ActionOutcome => ({
  id: row.id,
  action: row.action,
  target: row.target,
  operator: row.operator,
  reason: row.reason,
  request: row.request,
  result: row.result,
  createdAt: row.created_at,
  replayed,
});

const fingerprint = (action: string, target: string, reason: string, request: JsonObject) =>
  requestHash(`admin.${action}`, { target, reason, request });

function checkCall(call: ActionCall): { reason: string; key: string; ledgerKey: string } {
  if (!NONCE.test(call.nonce)) {
    throw new InvalidRequestError('The form nonce is missing or malformed: reload the page', 'VALIDATION', {
      field: 'nonce',
    });
  }
  const reason = call.reason.trim();
  // A reason says something: at least one letter or digit (not only spaces, invisible characters or dots).
  if (!/[\p{L}\p{N}]/u.test(reason)) {
    throw new InvalidRequestError('A reason is required', 'REASON_REQUIRED', { field: 'reason' });
  }
  if (reason.length > MAX_REASON || reason.includes('\u0000') || /\p{Cs}/u.test(reason)) {
    throw new InvalidRequestError(
      `The reason must be at most ${MAX_REASON} characters of text`,
      'VALIDATION',
      {
        field: 'reason',
      },
    );
  }
  return { reason, key: adminActionKey(call.nonce), ledgerKey: systemKeys.adminAction(call.nonce) };
}

/**
 * Runs one audited action: a nonce seen before answers its first outcome (the same action on the same target
 * with the same request, else IDEMPOTENCY_CONFLICT). Otherwise the nonce is claimed for this request first —
 * claimed for another one, it is a CONFLICT before anything is done, so two submits of one nonce on two
 * targets at once act once; a refused action gives its claim up. Then `perform` runs with the ledger key (a
 * system key: no caller can have taken it) and the metadata note its ledger rows carry, and the outcome is
 * recorded. `perform` must itself be idempotent by the key or by its target (the domain functions are): after
 * a crash between it and the audit insert, the retry replays it and records it.
 */
async function audited(
  db: Kysely<Database>,
  call: ActionCall,
  spec: { action: AdminActionName; target: string; request: JsonObject },
  perform: (key: string, note: JsonObject) => Promise<JsonObject>,
): Promise<ActionOutcome> {
  const { reason, key, ledgerKey } = checkCall(call);
  const hash = fingerprint(spec.action, spec.target, reason, spec.request);
  const replay = (row: AdminActionRow) => {
    if (fingerprint(row.action, row.target, row.reason, row.request) !== hash)
      throw new IdempotencyConflictError();
    return toOutcome(row, true);
  };
  const first = await findAdminActionByKey(db, key);
  if (first) return replay(first);
  if ((await claimAdminActionKey(db, key, hash)) !== hash) throw new IdempotencyConflictError();
  const note: JsonObject = { admin: { operator: call.operator, reason, action: spec.action, key } };
  let result: JsonObject;
  try {
    result = await perform(ledgerKey, note);
  } catch (error) {
    // Refused (a domain error, rolled back): the nonce is free again for the corrected form.
    if (certainlyNotCommitted(error)) await releaseAdminActionKey(db, key, hash);
    throw error;
  }
  const row = await insertAdminAction(db, {
    operator: call.operator,
    action: spec.action,
    target: spec.target,
    reason,
    idempotencyKey: key,
    request: spec.request,
    result: { ...result, ...(isReplayed(result) ? { replayedByDomain: true } : {}) },
  });
  if (row) return toOutcome(row, false);
  // A concurrent submit of the same form recorded it first.
  const winner = await findAdminActionByKey(db, key);
  if (!winner) throw new Error(`admin action ${key} collided but is not recorded`);
  return replay(winner);
}

/** `to`, marked as a replay when the domain answered `from` as one (nothing moved this time). */
const carried = <T>(from: unknown, to: T): T => (isReplayed(from) ? markReplayed(to) : to);

export const userTarget = (userId: string) => `user:${userId}`;
export const guildTarget = (guildId: string) => `guild:${guildId}`;

/**
 * Grants credits (ledger type `grant`, app `admin-console`): a promotional lot, expiring `expiresInDays` after
 * the grant when given.
 */
export async function adminGrant(
  deps: AdminActionDeps,
  call: ActionCall,
  input: { userId: string; amount: number; expiresInDays?: number | undefined },
): Promise<ActionOutcome> {
  return audited(
    deps.db,
    call,
    { action: 'grant', target: userTarget(input.userId), request: { ...input } },
    async (key, note) => {
      const moved = await grantCredits(deps.db, {
        userId: input.userId,
        amount: input.amount,
        reason: call.reason.trim(),
        idempotencyKey: key,
        appId: ADMIN_APP_ID,
        metadata: note,
        expiresInDays: input.expiresInDays,
      });
      return carried(moved, {
        transactionId: moved.transactionId,
        balance: moved.balance,
        amount: input.amount,
      });
    },
  );
}

/** Refunds all (no amount) or part of one usage entry of the user's, like internal.credits.refund. */
export async function adminRefund(
  deps: AdminActionDeps,
  call: ActionCall,
  input: { userId: string; transactionId: string; amount?: number | undefined },
): Promise<ActionOutcome> {
  const request: JsonObject = { userId: input.userId, transactionId: input.transactionId };
  if (input.amount !== undefined) request.amount = input.amount;
  return audited(
    deps.db,
    call,
    { action: 'refund', target: userTarget(input.userId), request },
    async (key, note) => {
      const moved = await refundUsage(deps.db, {
        userId: input.userId,
        transactionId: input.transactionId,
        amount: input.amount,
        description: call.reason.trim(),
        idempotencyKey: key,
        metadata: note,
      });
      const posted = await findLedgerRow(deps.db, moved.transactionId);
      return {
        transactionId: moved.transactionId,
        balance: moved.balance,
        amount: posted?.amount ?? null,
        appId: posted?.app_id ?? null,
      };
    },
  );
}

/** Cancels a gift for its creator, as gifts.cancel does: the unclaimed escrow goes back to them. */
export async function adminCancelGift(
  deps: AdminActionDeps,
  call: ActionCall,
  input: { giftId: string },
): Promise<ActionOutcome> {
  const gift = await findGift(deps.db, input.giftId);
  if (!gift) throw new NotFoundError('Gift', 'GIFT_NOT_FOUND');
  return audited(
    deps.db,
    call,
    { action: 'cancel_gift', target: userTarget(gift.creator_id), request: { giftId: gift.id } },
    async (_key, note) => {
      const cancelled = await cancelGift(deps.db, { userId: gift.creator_id, giftId: gift.id, note });
      return carried(cancelled, { refunded: cancelled.refunded, creatorId: gift.creator_id });
    },
  );
}

/** Returns a whole open hold (personal or on a pool), as internal.credits.release does. */
export async function adminReleaseHold(
  deps: AdminActionDeps,
  call: ActionCall,
  input: { reservationId: string },
): Promise<ActionOutcome> {
  const hold = await findReservation(deps.db, input.reservationId);
  if (!hold) throw new NotFoundError('Reservation', 'RESERVATION_NOT_FOUND');
  const target = hold.organization_id === null ? userTarget(hold.user_id) : guildTarget(hold.organization_id);
  return audited(
    deps.db,
    call,
    { action: 'release_hold', target, request: { reservationId: hold.id, userId: hold.user_id } },
    async () => {
      const answer = await releaseReservation(deps.db, hold.id);
      return carried(answer, {
        released: answer.released,
        balance: answer.balance,
        guildId: hold.organization_id,
      });
    },
  );
}

/** Sets a member's caps in a guild (null = unlimited, 0 = blocked); the target must be a member. */
export async function adminSetLimits(
  deps: AdminActionDeps,
  call: ActionCall,
  input: { guildId: string; userId: string; dailyLimit: number | null; monthlyLimit: number | null },
): Promise<ActionOutcome> {
  return audited(
    deps.db,
    call,
    { action: 'set_limits', target: guildTarget(input.guildId), request: { ...input } },
    async () => {
      const spending = await applyMemberLimits(deps, input);
      return { ...spending };
    },
  );
}
