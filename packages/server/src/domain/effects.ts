import { AsyncLocalStorage } from 'node:async_hooks';
import type { Database } from '@mana-credits/db';
import type { Kysely, Transaction } from 'kysely';

/**
 * Movements a piece of work makes besides the one its caller asked for, so the metrics count them: holds and
 * gifts found past their expiry and closed on the way (by a sweep, or by a call that came across them). What a
 * call itself moves is counted from its input and answer (trpc/metrics.ts); only these side effects are
 * reported from the domain code, and only after the transaction that made them has committed.
 */
export interface EffectSink {
  /** `count` holds (personal or pool) were closed as expired, their credits spendable again. */
  holdsExpired(count: number): void;
  /** A gift was closed as expired and `refunded` unclaimed credits went back to its creator. */
  giftExpired(refunded: number): void;
  /** `amount` credits of lots whose time ran out left an account (a user's balance or a pool). */
  creditsExpired(account: 'personal' | 'pool', amount: number): void;
  /** A purchase paid by auto top-up was credited by the worker (the webhook route counts its own). */
  purchaseCredited(amount: number): void;
}

const current = new AsyncLocalStorage<EffectSink>();

/**
 * Runs `work` (and everything it starts) reporting into `sink`: each app reports into its own metrics, so
 * every request and every periodic job runs inside this. Outside it (a test calling the domain directly),
 * effects are not reported anywhere.
 */
export function reportingEffectsTo<T>(sink: EffectSink, work: () => T): T {
  return current.run(sink, work);
}

/** Report side effects here, after their transaction committed; a no-op outside reportingEffectsTo. */
export const effects: EffectSink = {
  holdsExpired(count) {
    if (count > 0) current.getStore()?.holdsExpired(count);
  },
  giftExpired(refunded) {
    current.getStore()?.giftExpired(refunded);
  },
  creditsExpired(account, amount) {
    if (amount > 0) current.getStore()?.creditsExpired(account, amount);
  },
  purchaseCredited(amount) {
    if (amount > 0) current.getStore()?.purchaseCredited(amount);
  },
};

/**
 * Runs one transaction of the domain (`db.transaction().execute(work)`, which resolves once it has committed)
 * and holds back the side effects reported inside it: they reach the sink after the commit, and are dropped
 * if the transaction rolls back — so a refused or failed call never counts a movement it did not make.
 */
export async function inTransaction<T>(
  db: Kysely<Database>,
  work: (trx: Transaction<Database>) => Promise<T>,
): Promise<T> {
  const outer = current.getStore();
  if (!outer) return db.transaction().execute(work);
  const held: Array<(sink: EffectSink) => void> = [];
  const holding: EffectSink = {
    holdsExpired: (count) => held.push((sink) => sink.holdsExpired(count)),
    giftExpired: (refunded) => held.push((sink) => sink.giftExpired(refunded)),
    creditsExpired: (account, amount) => held.push((sink) => sink.creditsExpired(account, amount)),
    purchaseCredited: (amount) => held.push((sink) => sink.purchaseCredited(amount)),
  };
  const result = await current.run(holding, () => db.transaction().execute(work));
  for (const report of held) report(outer);
  return result;
}
