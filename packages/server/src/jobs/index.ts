import type { AppDeps, Logger } from '../deps.ts';
import { autoTopUpJob } from './auto-top-up.ts';
import { giftExpiryJob } from './gift-expiry.ts';
import { lotExpiryJob } from './lot-expiry.ts';
import { rateLimitPruneJob } from './rate-limit-prune.ts';
import { reservationSweepJob } from './reservation-sweep.ts';
import type { Job } from './scheduler.ts';
import { webhookDeliveryJob } from './webhook-delivery.ts';

/** All periodic work of the server, run by the app's scheduler (see scheduler.ts). Add new jobs here. */
export function periodicJobs(
  deps: Pick<AppDeps, 'db' | 'config'> & Partial<Pick<AppDeps, 'metrics' | 'stripe'>>,
  log?: Logger,
): Job[] {
  return [
    giftExpiryJob(deps, log),
    reservationSweepJob(deps, log),
    lotExpiryJob(deps, log),
    rateLimitPruneJob(deps),
    webhookDeliveryJob(deps, log),
    autoTopUpJob(deps, log),
  ];
}
