import { type Database, type PoolBatchOutcome, postPoolUseBatch } from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { effects } from '../effects.ts';
import { IdempotencyConflictError, InsufficientCreditsError } from '../errors.ts';
import { markReplayed } from '../idempotency.ts';
import { type ItemOutcome, LaneCoalescer } from '../lane-coalescer.ts';
import { refusalOf } from '../refusals.ts';
import { memberLimitExceeded, poolNotFound } from './limits.ts';
import type { PoolUseResult } from './mappers.ts';
import { type PoolSpender, type PoolUseInput, poolUseRequestHash, spendFromPool } from './pools.ts';

/**
 * Members' spends from a pool, coalesced per pool (the pool row lock is what serialises them): the first
 * spend of an idle pool goes at once, alone; spends that arrive while it is in flight go together. Both go
 * through credits.pool_use_batch (a lone spend as a batch of one: one statement, where spendFromPool takes a
 * transaction of five), which decides each as spendFromPool would (replay or conflict, credits.covers, the
 * member's caps, the limit_reached event) under one lock and one commit; spendFromPool is the fallback when
 * Postgres refuses a batch as a whole. Membership is checked before (useGuildCredits).
 */
export function coalescedPoolSpender(db: Kysely<Database>): PoolSpender {
  const coalescer = new LaneCoalescer<PoolUseInput, PoolUseResult>({
    laneOf: (input) => input.guildId,
    alone: (input) => spendFromPool(db, input),
    together: (inputs) => spendFromPoolTogether(db, inputs),
    // spendFromPool is a transaction of five statements; a batch of one is one statement with the same rules
    loneItemsTogether: true,
  });
  return (input) => coalescer.submit(input);
}

/**
 * Many pool spends in one call of credits.pool_use_batch, each answered as spendFromPool would have answered
 * it alone (its result, or the error it would have thrown). Throws when the call as a whole failed.
 */
export async function spendFromPoolTogether(
  db: Kysely<Database>,
  inputs: PoolUseInput[],
): Promise<ItemOutcome<PoolUseResult>[]> {
  const { outcomes, holdsExpired, creditsExpired } = await postPoolUseBatch(
    db,
    inputs.map((input) => ({
      guildId: input.guildId,
      userId: input.userId,
      amount: input.amount,
      appId: input.appId,
      description: input.description,
      metadata: input.metadata,
      idempotencyKey: input.idempotencyKey,
      requestHash: poolUseRequestHash(input),
    })),
  );
  effects.holdsExpired(holdsExpired);
  effects.creditsExpired('pool', creditsExpired);
  return outcomes.map((outcome, index) => answerOf(outcome, inputs[index]!));
}

/**
 * What the single path would have answered: every refusal is final (the batch returned lapsed holds first),
 * and a keyed one was recorded under its key by the batch.
 */
function answerOf(outcome: PoolBatchOutcome, input: PoolUseInput): ItemOutcome<PoolUseResult> {
  switch (outcome.outcome) {
    case 'ok':
      return { ok: true, value: { transactionId: outcome.transactionId, poolBalance: outcome.available } };
    case 'replay':
      return {
        ok: true,
        value: markReplayed({ transactionId: outcome.transactionId, poolBalance: outcome.available }),
      };
    case 'conflict':
      return { ok: false, error: new IdempotencyConflictError() };
    case 'insufficient':
      return {
        ok: false,
        error: new InsufficientCreditsError(input.amount, outcome.available, 'INSUFFICIENT_POOL_CREDITS'),
      };
    case 'daily_limit':
    case 'monthly_limit':
      return {
        ok: false,
        error: memberLimitExceeded(
          outcome.outcome === 'daily_limit' ? 'daily' : 'monthly',
          outcome.limit,
          outcome.used,
          input.amount,
        ),
      };
    case 'no_pool':
      return { ok: false, error: poolNotFound() };
    case 'refused':
      // the key's recorded refusal, answered again (withIdempotency answers it so on the single path)
      return { ok: false, error: markReplayed(refusalOf(outcome)) };
  }
}
