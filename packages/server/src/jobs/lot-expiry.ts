import { noticeExpiringLots } from '@mana-credits/db';
import type { AppDeps, Logger } from '../deps.ts';
import { expireDueAccountLots } from '../domain/credits/lots.ts';
import { drain, drainBudgetMs, type Job } from './scheduler.ts';

/**
 * Writes the credits.expiring event of lots expiring within EXPIRY_NOTICE_DAYS (once per lot), and expires
 * lots whose time is up on accounts nobody touched (every spend and read already treats them as expired: this
 * posts their `expiry` ledger rows). Safe on every instance at once: accounts are claimed
 * with SKIP LOCKED and expired under their row lock. LOT_EXPIRY_SWEEP_SECONDS; 0 turns it off.
 */
export function lotExpiryJob(deps: Pick<AppDeps, 'db' | 'config'>, log?: Logger): Job {
  const intervalMs = deps.config.lotExpirySweepSeconds * 1000;
  return {
    name: 'lot-expiry',
    intervalMs,
    async run(signal) {
      const budget = drainBudgetMs(intervalMs);
      const noticed = await drain(signal, budget, () =>
        noticeExpiringLots(deps.db, deps.config.expiryNoticeDays),
      );
      let expired = 0;
      // Drained by accounts gone through, not credits expired (see expireDueAccountLots).
      const accounts = await drain(signal, budget, async () => {
        const pass = await expireDueAccountLots(deps.db);
        expired += pass.expired;
        return pass.accounts;
      });
      if (noticed > 0 || expired > 0) log?.info({ noticed, expired, accounts }, 'lot expiry sweep');
    },
  };
}
