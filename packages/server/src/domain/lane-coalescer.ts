import { certainlyNotCommitted, OutcomeUnknownError } from './outcome.ts';

/** What a batch says of one of its items: the answer its caller gets, or the error. */
export type ItemOutcome<Result> = { ok: true; value: Result } | { ok: false; error: unknown };

/** The work a LaneCoalescer batches: which lane an item is in, and the two ways of running items. */
export interface LaneWork<Input, Result> {
  /** Items of one lane (one account, one pool: one row lock) wait for each other and go together. */
  laneOf(input: Input): string;
  /**
   * One item on its own (the single path): the first item of an idle lane, a batch of one, and each item of a
   * batch that Postgres refused as a whole.
   */
  alone(input: Input): Promise<Result>;
  /**
   * Many items of one lane in one statement (one transaction): one outcome per item, in input order. A throw
   * means the batch as a whole failed; whether it may be run again item by item is decided here.
   */
  together(inputs: Input[]): Promise<ItemOutcome<Result>[]>;
  /**
   * Run a lone item (the first of an idle lane, a batch of one) as a batch of one rather than through
   * `alone`: for work whose single path takes several round trips where `together` takes one. `alone` is
   * then only the fallback of a batch that Postgres refused as a whole.
   */
  loneItemsTogether?: boolean;
}

/** A caller waiting for its item's answer. */
export interface Waiting<Input, Result> {
  input: Input;
  resolve: (result: Result) => void;
  reject: (error: unknown) => void;
}

/**
 * Runs a batch of waiting callers `together` and answers each with its outcome — the rule every coalescer
 * follows when a batch fails: only a failure that proves nothing was committed (see outcome.ts) lets the
 * items run again on their own (`rerunAlone`); when the outcome is unknown (the connection was lost, perhaps
 * after the commit) every caller of the batch is answered OutcomeUnknownError — a keyless call repeated here
 * would be applied twice. A batch that committed but returned no outcome for an item leaves that item unknown.
 */
export async function settleBatch<Input, Result>(
  batch: readonly Waiting<Input, Result>[],
  together: (inputs: Input[]) => Promise<ItemOutcome<Result>[]>,
  rerunAlone: (batch: readonly Waiting<Input, Result>[]) => Promise<unknown>,
): Promise<void> {
  let outcomes: ItemOutcome<Result>[];
  try {
    outcomes = await together(batch.map(({ input }) => input));
  } catch (error) {
    if (!certainlyNotCommitted(error)) {
      // Perhaps committed, perhaps not: nobody may run these calls again as if nothing was written.
      for (const { reject } of batch) reject(new OutcomeUnknownError(error));
      return;
    }
    // Postgres refused the batch as a whole (rolled back, nothing written): each call takes the single path
    // on its own, where a refusal fails only that call.
    await rerunAlone(batch);
    return;
  }
  batch.forEach(({ resolve, reject }, index) => {
    const outcome = outcomes[index];
    // The batch committed but says nothing of this call: it may have been applied.
    if (!outcome) reject(new OutcomeUnknownError(new Error('the batch returned no outcome for this call')));
    else if (outcome.ok) resolve(outcome.value);
    else reject(outcome.error);
  });
}

const MAX_COALESCED = 200;

/**
 * Coalesces concurrent money calls of one lane. The first call of an idle lane goes straight to the database
 * on its own (no added latency; through `alone`, or as a batch of one); calls that arrive for the lane while it is in flight wait and then go
 * together (at most MAX_COALESCED at a time): one lock, one commit, each caller still with its own answer.
 * This only batches: every rule is enforced by Postgres in `alone` and `together`, so any number of server
 * instances may coalesce independently.
 *
 * A failed batch is settled by settleBatch (rerun item by item only when nothing was committed).
 */
export class LaneCoalescer<Input, Result> {
  private readonly lanes = new Map<string, Waiting<Input, Result>[]>();

  constructor(private readonly work: LaneWork<Input, Result>) {}

  submit(input: Input): Promise<Result> {
    const lane = this.work.laneOf(input);
    const waiting = this.lanes.get(lane);
    if (waiting) {
      return new Promise((resolve, reject) => waiting.push({ input, resolve, reject }));
    }
    this.lanes.set(lane, []);
    const result = this.runLone(input);
    void result.then(
      () => this.drain(lane),
      () => this.drain(lane),
    );
    return result;
  }

  private async drain(lane: string): Promise<void> {
    const waiting = this.lanes.get(lane);
    while (waiting && waiting.length > 0) {
      const batch = waiting.splice(0, MAX_COALESCED);
      await this.applyTogether(batch);
    }
    this.lanes.delete(lane);
  }

  /** One item that has its lane to itself: `alone`, or a batch of one (loneItemsTogether), with its rules. */
  private runLone(input: Input): Promise<Result> {
    if (!this.work.loneItemsTogether) return this.work.alone(input);
    return new Promise((resolve, reject) => {
      void this.applyTogether([{ input, resolve, reject }]);
    });
  }

  private async applyTogether(batch: Waiting<Input, Result>[]): Promise<void> {
    if (batch.length === 1 && !this.work.loneItemsTogether) {
      const [only] = batch as [Waiting<Input, Result>];
      await this.work.alone(only.input).then(only.resolve, only.reject);
      return;
    }
    await settleBatch(
      batch,
      (inputs) => this.work.together(inputs),
      (failed) =>
        Promise.all(failed.map(({ input, resolve, reject }) => this.work.alone(input).then(resolve, reject))),
    );
  }
}
