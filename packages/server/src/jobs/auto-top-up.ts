import type { AppDeps, Logger } from '../deps.ts';
import { runAutoTopUps } from '../domain/stripe/auto-top-up.ts';
import type { Job } from './scheduler.ts';

/**
 * Pays the auto top-ups the balance called for (attempts recorded by the ledger trigger): claims due ones with
 * SKIP LOCKED and leases them, so every instance may run it; a crash leaves the lease to run out and the
 * attempt is sent again with the same Stripe idempotency key. AUTO_TOP_UP_INTERVAL_MS; 0 turns it off.
 */
export function autoTopUpJob(
  deps: Pick<AppDeps, 'db' | 'config'> & Partial<Pick<AppDeps, 'stripe'>>,
  log?: Logger,
): Job {
  return {
    name: 'auto-top-up',
    intervalMs: deps.stripe ? deps.config.autoTopUpIntervalMs : 0,
    async run() {
      const results = await runAutoTopUps({ db: deps.db, stripe: deps.stripe, log });
      if (Object.keys(results).length > 0) log?.info({ results }, 'auto top-up attempts');
    },
  };
}
