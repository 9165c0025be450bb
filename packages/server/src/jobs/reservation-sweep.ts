import type { AppDeps, Logger } from '../deps.ts';
import { sweepExpiredHolds } from '../domain/credits/reservations.ts';
import { drain, drainBudgetMs, type Job } from './scheduler.ts';

/**
 * Returns expired holds (personal and pool) that nobody touched, so their credits are spendable again (every
 * call that meets an expired hold returns it first anyway). Safe on every instance at once (SKIP LOCKED).
 * RESERVATION_SWEEP_SECONDS.
 */
export function reservationSweepJob(deps: Pick<AppDeps, 'db' | 'config'>, log?: Logger): Job {
  const intervalMs = deps.config.reservationSweepSeconds * 1000;
  return {
    name: 'reservation-sweep',
    intervalMs,
    async run(signal) {
      const expired = await drain(signal, drainBudgetMs(intervalMs), () => sweepExpiredHolds(deps.db));
      if (expired > 0) log?.debug({ expired }, 'expired holds returned');
    },
  };
}
