import { type BatchOutcome, type Database, postUsageBatch } from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { effects } from '../effects.ts';
import { IdempotencyConflictError, InsufficientCreditsError } from '../errors.ts';
import { markReplayed } from '../idempotency.ts';
import { certainlyNotCommitted, OutcomeUnknownError } from '../outcome.ts';
import type { MovementResult } from './mappers.ts';
import { type SpendInput, spendCredits, usageRequestHash } from './personal.ts';

interface Waiting {
  input: SpendInput;
  resolve: (result: MovementResult) => void;
  reject: (error: unknown) => void;
}

const MAX_COALESCED = 200;

/**
 * Coalesces concurrent debits of one account. The first debit of an account goes straight to the database
 * (one statement, no added latency); debits that arrive for the same account while it is in flight wait and
 * then go together through credits.use_batch (the function of every batched usage debit): one lock, one
 * commit, each caller still with its own ledger row, idempotency and answer. This only batches: every rule
 * is still enforced by Postgres, so any number of server instances may coalesce independently.
 *
 * A batch that failed is run again item by item only when the failure proves nothing was committed (see
 * outcome.ts); when its outcome is unknown (the connection was lost, perhaps after the commit) every caller
 * of the batch is answered OutcomeUnknownError — a keyless debit repeated here would be charged twice.
 */
export class SpendCoalescer {
  private readonly lanes = new Map<string, Waiting[]>();

  constructor(private readonly db: Kysely<Database>) {}

  spend(input: SpendInput): Promise<MovementResult> {
    const waiting = this.lanes.get(input.userId);
    if (waiting) {
      return new Promise((resolve, reject) => waiting.push({ input, resolve, reject }));
    }
    this.lanes.set(input.userId, []);
    const result = spendCredits(this.db, input);
    void result.then(
      () => this.drain(input.userId),
      () => this.drain(input.userId),
    );
    return result;
  }

  private async drain(userId: string): Promise<void> {
    const waiting = this.lanes.get(userId);
    while (waiting && waiting.length > 0) {
      const batch = waiting.splice(0, MAX_COALESCED);
      await this.applyTogether(userId, batch);
    }
    this.lanes.delete(userId);
  }

  private async applyTogether(userId: string, batch: Waiting[]): Promise<void> {
    if (batch.length === 1) {
      const [only] = batch as [Waiting];
      await spendCredits(this.db, only.input).then(only.resolve, only.reject);
      return;
    }
    let outcomes: BatchOutcome[];
    try {
      let holdsExpired: number;
      ({ outcomes, holdsExpired } = await postUsageBatch(
        this.db,
        batch.map(({ input }) => ({
          userId,
          amount: input.amount,
          appId: input.appId,
          description: input.description,
          metadata: input.metadata,
          idempotencyKey: input.idempotencyKey,
          requestHash: usageRequestHash(input),
        })),
      ));
      effects.holdsExpired(holdsExpired);
    } catch (error) {
      if (!certainlyNotCommitted(error)) {
        // Perhaps committed, perhaps not: nobody may run these debits again as if nothing was written.
        for (const { reject } of batch) reject(new OutcomeUnknownError(error));
        return;
      }
      // Postgres refused the batch as a whole (rolled back, nothing written): each debit takes the single
      // path on its own, where a refusal fails only that debit.
      await Promise.all(
        batch.map(({ input, resolve, reject }) => spendCredits(this.db, input).then(resolve, reject)),
      );
      return;
    }
    batch.forEach(({ input, resolve, reject }, index) => {
      const outcome = outcomes[index];
      // The batch committed but says nothing of this debit: it may have been applied.
      if (!outcome) reject(new OutcomeUnknownError(new Error('use_batch returned no outcome')));
      else if (outcome.outcome === 'conflict') reject(new IdempotencyConflictError());
      // Final: use_batch already returned the user's lapsed holds before refusing (check on access).
      else if (outcome.outcome === 'insufficient') {
        reject(new InsufficientCreditsError(input.amount, outcome.available));
      } else {
        const result = { transactionId: outcome.transactionId, balance: outcome.available };
        resolve(outcome.outcome === 'replay' ? markReplayed(result) : result);
      }
    });
  }
}
