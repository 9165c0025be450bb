import { pruneRateLimits } from '@mana-credits/db';
import type { AppDeps } from '../deps.ts';
import type { Job } from './scheduler.ts';

/** Rate-limit counters older than this are dropped (the longest window is a minute). */
export const RATE_LIMIT_RETENTION_SECONDS = 3600;
/** How often: old counters only take space, so rarely is enough. */
export const RATE_LIMIT_PRUNE_SECONDS = 300;

/** Drops the per-address rate-limit counters of windows long past. Idempotent, safe on every instance. */
export function rateLimitPruneJob(deps: Pick<AppDeps, 'db'>): Job {
  return {
    name: 'rate-limit-prune',
    intervalMs: RATE_LIMIT_PRUNE_SECONDS * 1000,
    run: () => pruneRateLimits(deps.db, RATE_LIMIT_RETENTION_SECONDS),
  };
}
