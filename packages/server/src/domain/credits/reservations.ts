import {
  commitHold,
  commitPoolHold,
  type Database,
  expiredBecauseOf,
  findGuildEntry,
  findGuildPool,
  findLedgerEntry,
  getBalance,
  type HoldInput,
  type JsonObject,
  type LockedReservation,
  lockReservation,
  type PlacedHold,
  placeHold,
  placePoolHold,
  type ReservationRow,
  type ReservationStatus,
  releaseExpiredHolds,
  releaseHold,
} from '@mana-credits/db';
import type { Kysely, Transaction } from 'kysely';
import { effects } from '../effects.ts';
import { ConflictError, IdempotencyConflictError, InvalidRequestError, NotFoundError } from '../errors.ts';
import { poolNotFound } from '../guild/limits.ts';
import { requireRole } from '../guild/membership.ts';
import type { GuildDeps } from '../guild/pools.ts';
import { markReplayed, requestHash, reservationKeys, withIdempotency } from '../idempotency.ts';
import { type KeyClaim, spendingTransaction } from '../refusals.ts';
import { expireAccountLots, lockPersonalBalance, spendPersonal, spendPool } from '../spending.ts';
import {
  type CommitResult,
  type ReserveResult,
  toCommitResult,
  toPlacedHoldResult,
  toReserveResult,
} from './mappers.ts';

export type { CommitResult, ReserveResult } from './mappers.ts';

import { usageFields } from './personal.ts';

export interface ReserveInput {
  userId: string;
  amount: number;
  appId: string;
  description: string;
  ttlSeconds: number;
  idempotencyKey: string;
  guildId?: string | undefined;
  metadata?: JsonObject | undefined;
}

/**
 * Holds credits for a call whose price is known only afterwards. One statement places the hold (see
 * placeHold); a replayed key answers with the first hold, another request under the same key is a CONFLICT.
 * When the spendable balance is short, the user's expired holds are returned first (check on access).
 * With a guildId the hold is on the pool (see holdPoolCredits). Keys share the user's reservation key space;
 * the guild is part of the fingerprint, so the same key for another pool (or for a personal hold) is a
 * CONFLICT. A replay is answered from the first hold even when the account or a limit would refuse it now;
 * a refusal (too few credits, a member limit) is recorded under the key and answered again the same way.
 */
export async function reserveCredits(deps: GuildDeps, input: ReserveInput): Promise<ReserveResult> {
  const { db } = deps;
  const { guildId } = input;
  if (guildId !== undefined) await requireRole(deps.membership, guildId, input.userId);
  const hash = requestHash('credits.reserve', {
    guildId,
    amount: input.amount,
    appId: input.appId,
    description: input.description,
    ttlSeconds: input.ttlSeconds,
    metadata: input.metadata,
  });
  const hold: HoldInput = {
    userId: input.userId,
    ...usageFields(input, hash),
    idempotencyKey: input.idempotencyKey,
    ttlSeconds: input.ttlSeconds,
  };
  return withIdempotency(
    reservationKeys(db, input.userId),
    { key: input.idempotencyKey, hash },
    async (claim) => {
      const placed =
        guildId === undefined
          ? await holdPersonalCredits(db, hold, claim)
          : await holdPoolCredits(db, { ...hold, guildId }, claim);
      return toPlacedHoldResult(placed);
    },
    toReserveResult,
  );
}

async function holdPersonalCredits(
  db: Kysely<Database>,
  hold: HoldInput,
  claim: KeyClaim | undefined,
): Promise<PlacedHold> {
  return spendPersonal(db, { ...hold, claim }, (executor) => placeHold(executor, hold));
}

/**
 * Holds pool credits for a member (who must be one: checked before, fail closed). In one transaction, like
 * guild.use: the pool row is locked first (its expired holds returned), then the spendable pool and the
 * member's daily and monthly limits (open holds counted) are checked and the hold is placed — so no
 * interleaving of holds and spends can exceed the pool or a limit.
 */
async function holdPoolCredits(
  db: Kysely<Database>,
  hold: HoldInput & { guildId: string },
  claim: KeyClaim | undefined,
): Promise<PlacedHold> {
  return spendingTransaction(db, async (trx) => {
    // Hold keys are the user's, for personal and pool holds alike: a keyed pool hold takes the user's balance
    // row lock first (see lockPersonalBalance), where a personal hold's key is decided, so a refusal in one
    // account and a hold in another cannot both take the key.
    if (claim) await lockPersonalBalance(trx, hold.userId);
    return spendPool(trx, { ...hold, claim }, () => placePoolHold(trx, hold));
  });
}

export interface CommitInput {
  reservationId: string;
  amount?: number | undefined;
  description?: string | undefined;
  metadata?: JsonObject | undefined;
}

/**
 * What a locking transaction decided: an answer, or a refusal raised only after it has committed (`expired`:
 * the hold was found past its time and closed on the way).
 */
type Settled<T> =
  | { result: T; refused?: undefined; expired?: undefined }
  | { refused: ReservationStatus; expired?: true };

function notOpen(status: ReservationStatus): ConflictError {
  return new ConflictError(`The reservation is ${status}, not open`, 'RESERVATION_NOT_OPEN', { status });
}

/** The answer a commit gave, rebuilt from the reservation and the ledger row it posted. */
async function committedResult(
  trx: Transaction<Database>,
  reservation: LockedReservation,
): Promise<CommitResult> {
  const entry =
    reservation.organization_id === null
      ? await findLedgerEntry(trx, reservation.user_id, reservation.transaction_id!)
      : await findGuildEntry(trx, reservation.organization_id, reservation.transaction_id!);
  if (!entry) throw new Error(`the ledger row of reservation ${reservation.id} is missing`);
  // What the commit's own transaction expired (the freed part of a lapsed lot) counts, as it did in the answer.
  const [kind, account] = accountOf(reservation);
  const expired = await expiredBecauseOf(trx, kind, account, entry.id);
  const result = toCommitResult(reservation, entry);
  return { ...result, balance: result.balance - expired };
}

/** The account a reservation holds credits on, as lots name it. */
const accountOf = (reservation: ReservationRow) =>
  reservation.organization_id === null
    ? (['user', reservation.user_id] as const)
    : (['guild', reservation.organization_id] as const);

/**
 * Charges what the call really cost and returns the rest of the hold. The reservation row is locked first,
 * so commits, releases and the sweep of one reservation serialise; a hold whose time is up is returned
 * right here (and the commit refused) rather than waiting for the sweep. Committing again with the same
 * request answers as the first commit did.
 */
export async function commitReservation(db: Kysely<Database>, input: CommitInput): Promise<CommitResult> {
  const commitHash = requestHash('credits.commit', {
    amount: input.amount,
    description: input.description,
    metadata: input.metadata,
  });
  const outcome = await db.transaction().execute(async (trx): Promise<Settled<CommitResult>> => {
    const reservation = await lockReservation(trx, input.reservationId);
    if (!reservation) throw new NotFoundError('Reservation', 'RESERVATION_NOT_FOUND');
    if (reservation.status === 'committed') {
      if (reservation.commit_hash !== commitHash) throw new IdempotencyConflictError();
      return { result: markReplayed(await committedResult(trx, reservation)) };
    }
    if (reservation.status !== 'open') return { refused: reservation.status };
    if (reservation.lapsed) {
      await settleHold(trx, reservation, () => releaseHold(trx, reservation, 'expired'));
      return { refused: 'expired', expired: true };
    }
    const amount = input.amount ?? reservation.amount;
    if (amount > reservation.amount) {
      throw new InvalidRequestError(
        `amount: ${amount} is more than the ${reservation.amount} credits held`,
        'AMOUNT_EXCEEDS_RESERVATION',
        { field: 'amount', requested: amount, reserved: reservation.amount },
      );
    }
    const commit = {
      amount,
      description: input.description ?? reservation.description,
      metadata: input.metadata ?? reservation.metadata,
      commitHash,
    };
    // The hold already counted against the member's limits, so a pool commit checks none again.
    const { organization_id: guildId } = reservation;
    const posted = await settleHold(trx, reservation, () =>
      guildId === null
        ? commitHold(trx, reservation, commit)
        : commitPoolHold(trx, { ...reservation, organization_id: guildId }, commit),
    );
    return {
      result: {
        transactionId: posted.transactionId,
        committed: amount,
        released: reservation.amount - amount,
        balance: posted.available,
      },
    };
  });
  // Refusals are raised after the transaction, so an expiry noticed here is kept (and counted).
  if (outcome.expired) effects.holdsExpired(1);
  if (outcome.refused) throw notOpen(outcome.refused);
  return outcome.result;
}

/**
 * Commits or releases `reservation` (`settle`) between two expiries of the account's lapsed lots, in the same
 * transaction: the lots that lapsed elsewhere in the account first, so the balance the settlement writes on
 * its ledger row and answers never counts them; then, if a lot the hold had pinned has lapsed meanwhile, what
 * the settlement freed of it (the pinned part outlived the lot only while the hold was open).
 */
async function settleHold<T extends { lotsLapsed: boolean; available: number; transactionId?: string }>(
  trx: Transaction<Database>,
  reservation: ReservationRow,
  settle: () => Promise<T>,
): Promise<T> {
  const [kind, account] = accountOf(reservation);
  await expireAccountLots(trx, kind, account);
  const settled = await settle();
  if (!settled.lotsLapsed) return settled;
  const expired = await expireAccountLots(trx, kind, account, settled.transactionId);
  return { ...settled, available: settled.available - expired };
}

/** What the account a reservation was held on (personal balance or pool) can spend now. */
async function spendableNow(trx: Transaction<Database>, reservation: ReservationRow): Promise<number> {
  if (reservation.organization_id === null) return (await getBalance(trx, reservation.user_id)).balance;
  const pool = await findGuildPool(trx, reservation.organization_id);
  if (!pool) throw poolNotFound();
  return pool.balance - pool.reserved;
}

export interface ReleaseResult {
  released: number;
  /** Spendable now. */
  balance: number;
}

/**
 * Returns a whole hold. Idempotent: releasing a released or expired reservation answers the same amount
 * (marked as a replay) with the balance spendable now — the balance after the first release is not kept, and
 * an expired hold had no first answer; a committed one is a CONFLICT (its rest was already returned by the
 * commit).
 */
export async function releaseReservation(
  db: Kysely<Database>,
  reservationId: string,
): Promise<ReleaseResult> {
  const outcome = await db.transaction().execute(async (trx): Promise<Settled<ReleaseResult>> => {
    const reservation = await lockReservation(trx, reservationId);
    if (!reservation) throw new NotFoundError('Reservation', 'RESERVATION_NOT_FOUND');
    if (reservation.status === 'committed') return { refused: reservation.status };
    if (reservation.status === 'open') {
      const { available } = await settleHold(trx, reservation, () =>
        releaseHold(trx, reservation, reservation.lapsed ? 'expired' : 'released'),
      );
      return { result: { released: reservation.amount, balance: available } };
    }
    // Released or expired before: the same answer again, a replay.
    return {
      result: markReplayed({ released: reservation.amount, balance: await spendableNow(trx, reservation) }),
    };
  });
  if (outcome.refused) throw notOpen(outcome.refused);
  return outcome.result;
}

/**
 * Returns up to `chunk` expired holds (personal and pool holds) in one transaction, so no transaction grows
 * large; the sweep job runs it again while it finds holds (jobs/scheduler.ts drain). Safe to run on every
 * instance at once: the holds are claimed with SKIP LOCKED. Returns how many holds were returned.
 */
export async function sweepExpiredHolds(db: Kysely<Database>, chunk = 1000): Promise<number> {
  const released = await releaseExpiredHolds(db, null, chunk);
  effects.holdsExpired(released);
  return released;
}
