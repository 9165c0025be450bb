import {
  type Database,
  ensureBalance,
  expireLots,
  getBalance,
  type LotAccountKind,
  lockBalance,
  lockGuildPool,
  releaseExpiredHolds,
  releaseExpiredPoolHolds,
} from '@mana-credits/db';
import type { Kysely, Transaction } from 'kysely';
import { effects } from './effects.ts';
import { InsufficientCreditsError, PreconditionFailedError } from './errors.ts';
import { emitEvent } from './events/emit.ts';
import { assertWithinMemberLimits, type LimitsAfter, poolNotFound } from './guild/limits.ts';
import { type KeyClaim, refusedUnderKey, spendingTransaction } from './refusals.ts';

// The refusal of a spend that finds too little, written once for every path that takes credits out of an
// account or holds them. The rule itself (never below zero, never into held credits) is the SQL function
// credits.covers, asked by each conditional statement under the account's row lock; what is decided here is
// what happens when it says no: a hold whose time is up never refuses a spend (its credits are returned on
// access, before any sweep), a lot whose time is up is expired first (so no spend counts an expired credit),
// and otherwise the caller gets INSUFFICIENT_CREDITS with what is spendable. A keyed refusal (the spend's
// `claim`) is decided under the account's row lock and recorded under its key in that transaction (see
// refusals.ts), so no late attempt with the key can charge afterwards. credits.use_batch (coalesced and batch
// debits) makes the same moves in PL/pgSQL, and credits.pool_use_batch (coalesced pool spends) those of
// spendPool.

/**
 * Spends from a personal balance: `write` is a conditional statement (debitBalance, placeHold) that writes
 * nothing and answers null when the balance does not cover it (or one of its lots has lapsed); it runs on the
 * executor it is given. Then the user's lapsed holds are returned, lapsed lots expired, and `write` is tried
 * once more; still null → InsufficientCreditsError. A keyed spend (`claim`) makes that second try under the
 * balance row lock and records its refusal there: in its own spendingTransaction, or in the caller's (pass a
 * spendingTransaction's `trx` as `db`).
 */
export async function spendPersonal<T>(
  db: Kysely<Database>,
  spend: { userId: string; amount: number; claim?: KeyClaim | undefined },
  write: (db: Kysely<Database>) => Promise<T | null>,
): Promise<T> {
  const posted = await write(db);
  if (posted) return posted;
  if (spend.claim) {
    return db.isTransaction
      ? refuseUnderLock(db, spend, write)
      : spendingTransaction(db, (trx) => refuseUnderLock(trx, spend, write));
  }
  // Once more after returning what lapsed — also when another transaction (a sweep, a concurrent spend)
  // returned it between the refusal and this call and nothing is left to return here.
  await returnLapsed(db, spend.userId);
  const again = await write(db);
  if (again) return again;
  const { balance } = await getBalance(db, spend.userId);
  throw new InsufficientCreditsError(spend.amount, balance);
}

/**
 * The refusal path of a keyed personal spend, in a spendingTransaction: locks the balance row (made, empty, if
 * the user has none, so that there is a row whose lock orders the refusal against any late debit), returns
 * lapsed holds and lots, tries `write` once more and, still short, records the refusal under the key.
 */
async function refuseUnderLock<T>(
  trx: Kysely<Database>,
  spend: { userId: string; amount: number; claim?: KeyClaim | undefined },
  write: (db: Kysely<Database>) => Promise<T | null>,
): Promise<T> {
  await lockPersonalBalance(trx as Transaction<Database>, spend.userId);
  await returnLapsed(trx, spend.userId);
  const posted = await write(trx);
  if (posted) return posted;
  const { balance } = await getBalance(trx, spend.userId);
  throw await refusedUnderKey(trx, spend.claim, new InsufficientCreditsError(spend.amount, balance));
}

/**
 * Locks the user's balance row, made (empty) first if the user has none, so that there is a row whose lock
 * orders a keyed refusal against every late use of the key. A key space that spans several accounts locks
 * its user's row first of all, in the fixed order (personal balance, then pool): a member's keyed pool hold
 * (hold keys are the user's, for personal and pool holds alike) and a keyed guild.fund (guild keys are
 * shared with guild.use, which decides under the pool's lock).
 */
export async function lockPersonalBalance(trx: Transaction<Database>, userId: string): Promise<void> {
  if (await lockBalance(trx, userId)) return;
  await ensureBalance(trx, userId);
  await lockBalance(trx, userId);
}

/** Returns a user's lapsed holds and expires their lapsed lots. */
async function returnLapsed(db: Kysely<Database>, userId: string): Promise<void> {
  await returnExpiredHolds(db, userId);
  await expireAccountLots(db, 'user', userId);
}

/**
 * Posts the expiry of an account's lapsed lots (credits.expire_lots) and reports it to the metrics; returns
 * the credits expired. Every path that returns credits to lots that may have lapsed (a refund, an unclaimed
 * gift, a hold's release) calls it in its transaction.
 */
export async function expireAccountLots(
  db: Kysely<Database>,
  kind: LotAccountKind,
  accountId: string,
  /** The ledger entry of this transaction that made credits expire (a refund, a commit): see expiredBecauseOf. */
  causedBy?: string,
): Promise<number> {
  const expired = await expireLots(db, kind, accountId, causedBy);
  effects.creditsExpired(kind === 'user' ? 'personal' : 'pool', expired);
  return expired;
}

/** Returns a user's personal holds whose time is up and reports them to the metrics; says how many. */
export async function returnExpiredHolds(db: Kysely<Database>, userId: string): Promise<number> {
  const expired = await releaseExpiredHolds(db, userId);
  effects.holdsExpired(expired);
  return expired;
}

/**
 * Spends from a guild pool for a member, in the caller's transaction (run it through spendingTransaction so
 * the expired holds are reported after the commit and a keyed refusal is kept): locks the pool first (the
 * first lock of such a transaction), returns its expired holds so they neither block the pool nor count
 * against limits any longer, expires its lapsed lots, checks that the pool covers `amount` and that the
 * member's daily and monthly limits allow it — all under the lock, where a keyed refusal is recorded under
 * its key (`claim`) — then runs `write` (debitGuildPool, placePoolHold), which cannot miss under that lock.
 */
export async function spendPool<T>(
  trx: Transaction<Database>,
  spend: { guildId: string; userId: string; amount: number; claim?: KeyClaim | undefined },
  write: () => Promise<T | null>,
): Promise<T> {
  const { guildId, userId, amount, claim } = spend;
  let pool = await lockGuildPool(trx, guildId, amount);
  if (!pool) throw poolNotFound();
  const expired = pool.reserved > 0 ? await releaseExpiredPoolHolds(trx, guildId) : 0;
  effects.holdsExpired(expired);
  if (pool.lotsLapsed) await expireAccountLots(trx, 'guild', guildId);
  // Read again after any expiry pass, even one that expired nothing: the lapsed lot may have been spent or be
  // pinned whole, and the pass moved next_lot_expiry on, which is all `covers` was refusing for.
  if (expired > 0 || pool.lotsLapsed) {
    pool = await lockGuildPool(trx, guildId, amount);
    if (!pool) throw poolNotFound();
  }
  if (!pool.covers) {
    const short = new InsufficientCreditsError(
      amount,
      pool.balance - pool.reserved,
      'INSUFFICIENT_POOL_CREDITS',
    );
    throw await refusedUnderKey(trx, claim, short);
  }
  let limits: LimitsAfter;
  try {
    limits = await assertWithinMemberLimits(trx, guildId, userId, amount);
  } catch (error) {
    // A member limit refuses like an empty pool: the same kind of decline, recorded the same way.
    if (error instanceof PreconditionFailedError) throw await refusedUnderKey(trx, claim, error);
    throw error;
  }
  const posted = await write();
  // The row is locked and was checked above; a miss here would be a bug, not a race.
  if (!posted) throw new Error('pool write found no spendable credits under its own lock');
  // A cap used up exactly by this spend or hold: the crossing into "nothing left", once (no later spend in the
  // window can pass the check until a hold returns credits, and then reaching the cap again is a new crossing).
  for (const window of ['daily', 'monthly'] as const) {
    const cap = limits[window];
    if (cap === null || cap.limit === 0 || cap.used !== cap.limit) continue;
    const hold = typeof posted === 'object' && 'expiresAt' in posted;
    const id = (posted as { id?: unknown }).id;
    await emitEvent(trx, {
      type: 'guild.member.limit_reached',
      data: {
        guildId,
        userId,
        window,
        limit: cap.limit,
        used: cap.used,
        amount,
        transactionId: !hold && typeof id === 'string' ? id : null,
        reservationId: hold && typeof id === 'string' ? id : null,
      },
    });
  }
  return posted;
}
