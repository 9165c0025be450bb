import type { AppDeps, Logger } from '../deps.ts';
import { expireDueGifts } from '../domain/gifts/escrow.ts';
import { drain, drainBudgetMs, type Job } from './scheduler.ts';

/**
 * Expires and refunds active gifts past their expiry that nobody touched (a gift is also expired when it is
 * looked at). Safe on every instance at once: each gift is claimed with SKIP LOCKED and closed by a
 * conditional update, so it is refunded once. GIFT_EXPIRY_SWEEP_SECONDS; 0 turns it off.
 */
export function giftExpiryJob(deps: Pick<AppDeps, 'db' | 'config'>, log?: Logger): Job {
  const intervalMs = deps.config.giftExpirySweepSeconds * 1000;
  return {
    name: 'gift-expiry',
    intervalMs,
    async run(signal) {
      const expired = await drain(signal, drainBudgetMs(intervalMs), () => expireDueGifts(deps.db));
      if (expired > 0) log?.info({ expired }, 'expired gifts refunded');
    },
  };
}
