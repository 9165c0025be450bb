import { type BatchOutcome, type Database, postUsageBatch } from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { effects } from '../effects.ts';
import { IdempotencyConflictError, InsufficientCreditsError } from '../errors.ts';
import { markReplayed } from '../idempotency.ts';
import { type ItemOutcome, settleBatch, type Waiting as WaitingFor } from '../lane-coalescer.ts';
import type { MovementResult } from './mappers.ts';
import { type SpendInput, spendCredits, usageRequestHash } from './personal.ts';

type Waiting = WaitingFor<SpendInput, MovementResult>;

/** Most debits one grouped statement carries (what use_batch locks and writes in one transaction). */
export const MAX_COALESCED = 200;

/** Statements in flight when the caller does not say (DEBIT_STATEMENTS_IN_FLIGHT's default). */
const DEFAULT_IN_FLIGHT = 2;

/**
 * Group commit of personal debits. At most `inFlight` debit statements of this process run at once. A debit
 * goes straight to the database (one statement, no added latency) while one of them is free and its account
 * has none in flight; otherwise it queues, and the next statement to finish takes everything queued (up to
 * MAX_COALESCED, of any accounts, in arrival order) as one call of credits.use_batch (the function of every
 * batched usage debit): one round trip, one transaction, one commit for many callers, each still with its
 * own ledger row, idempotency check and answer, each refused alone when its account cannot pay. Few
 * statements make big groups, which cost Node and Postgres far less per debit than single statements.
 *
 * An account has at most one statement of this process in flight: its next debits wait and go together in
 * the following group instead of queueing on its row lock in statements of their own — this is what lifts
 * one hot account above the row-lock limit (and keeps its groups big: when they could overlap, they shrank
 * to a few debits each). It only groups: every rule is still enforced by Postgres under the row locks, taken
 * in user order, so any number of server instances may group independently.
 *
 * A batch that failed is run again item by item only when the failure proves nothing was committed (see
 * outcome.ts); when its outcome is unknown (the connection was lost, perhaps after the commit) every caller
 * of the batch, whatever its account, is answered OutcomeUnknownError — a keyless debit repeated here would
 * be charged twice.
 */
export class SpendCoalescer {
  private queue: Waiting[] = [];
  /** Accounts with a statement of this process in flight. */
  private readonly busy = new Set<string>();
  private running = 0;
  private readonly inFlight: number;

  constructor(
    private readonly db: Kysely<Database>,
    options: { inFlight?: number | undefined } = {},
  ) {
    this.inFlight = Math.max(1, options.inFlight ?? DEFAULT_IN_FLIGHT);
  }

  spend(input: SpendInput): Promise<MovementResult> {
    if (this.running >= this.inFlight || this.busy.has(input.userId)) {
      return new Promise((resolve, reject) => this.queue.push({ input, resolve, reject }));
    }
    this.start([input.userId]);
    const result = spendCredits(this.db, input);
    const finish = () => this.finish([input.userId]);
    void result.then(finish, finish);
    return result;
  }

  private start(accounts: Iterable<string>): void {
    this.running++;
    for (const account of accounts) this.busy.add(account);
  }

  private finish(accounts: Iterable<string>): void {
    this.running--;
    for (const account of accounts) this.busy.delete(account);
    this.pump();
  }

  /** Sends what waits, one batch per free statement, until statements or eligible debits run out. */
  private pump(): void {
    while (this.running < this.inFlight && this.queue.length > 0) {
      const batch = this.takeBatch();
      if (batch.length === 0) return;
      const accounts = new Set(batch.map(({ input }) => input.userId));
      this.start(accounts);
      const finish = () => this.finish(accounts);
      void this.applyTogether(batch).then(finish, finish);
    }
  }

  /**
   * The queued debits of accounts without a statement in flight, in arrival order, up to MAX_COALESCED; the
   * rest stay queued in order (an account's later debits are never sent before its earlier ones).
   */
  private takeBatch(): Waiting[] {
    const batch: Waiting[] = [];
    const left: Waiting[] = [];
    for (const waiting of this.queue) {
      if (batch.length < MAX_COALESCED && !this.busy.has(waiting.input.userId)) batch.push(waiting);
      else left.push(waiting);
    }
    this.queue = left;
    return batch;
  }

  private async applyTogether(batch: Waiting[]): Promise<void> {
    if (batch.length === 1) {
      const [only] = batch as [Waiting];
      await spendCredits(this.db, only.input).then(only.resolve, only.reject);
      return;
    }
    await settleBatch(
      batch,
      (inputs) => spendTogether(this.db, inputs),
      // each debit alone, an account's debits in arrival order
      async (failed) => {
        const byAccount = new Map<string, Waiting[]>();
        for (const waiting of failed) {
          const debits = byAccount.get(waiting.input.userId);
          if (debits) debits.push(waiting);
          else byAccount.set(waiting.input.userId, [waiting]);
        }
        await Promise.all(
          [...byAccount.values()].map(async (debits) => {
            for (const { input, resolve, reject } of debits) {
              await spendCredits(this.db, input).then(resolve, reject);
            }
          }),
        );
      },
    );
  }
}

/** Many debits in one call of credits.use_batch, each answered as spendCredits would have answered it alone. */
async function spendTogether(
  db: Kysely<Database>,
  inputs: SpendInput[],
): Promise<ItemOutcome<MovementResult>[]> {
  const { outcomes, holdsExpired } = await postUsageBatch(
    db,
    inputs.map((input) => ({
      userId: input.userId,
      amount: input.amount,
      appId: input.appId,
      description: input.description,
      metadata: input.metadata,
      idempotencyKey: input.idempotencyKey,
      requestHash: usageRequestHash(input),
    })),
  );
  effects.holdsExpired(holdsExpired);
  return outcomes.map((outcome, index) => answerOf(outcome, inputs[index]!));
}

/** What the single path would have answered; a refusal is final (use_batch returned lapsed holds first). */
function answerOf(outcome: BatchOutcome, input: SpendInput): ItemOutcome<MovementResult> {
  switch (outcome.outcome) {
    case 'conflict':
      return { ok: false, error: new IdempotencyConflictError() };
    case 'insufficient': {
      const refused = new InsufficientCreditsError(input.amount, outcome.available);
      // The key's recorded refusal answered again (as withIdempotency does on the single path): a replay.
      return { ok: false, error: outcome.replayed ? markReplayed(refused) : refused };
    }
    case 'ok':
    case 'replay': {
      const result = { transactionId: outcome.transactionId, balance: outcome.available };
      return { ok: true, value: outcome.outcome === 'replay' ? markReplayed(result) : result };
    }
  }
}
