import {
  type ClaimedDelivery,
  claimDueDeliveries,
  type Database,
  type RelayedEvent,
  recordDeliveryFailure,
  recordDeliverySuccess,
  relayEvents,
  releaseDeliveryClaim,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import type { EventsConfig } from '../../config.ts';
import { type AttemptOutcome, type AttemptResult, retryDelayMs, sendDelivery } from './delivery.ts';
import { envelopeBody, signatureHeaders } from './signing.ts';

// The delivery worker's two steps, run by the webhook-delivery job on every instance (jobs/webhook-delivery.ts).

const RELAY_BATCH = 500;
const MAX_RELAY_PASSES = 20;
const DELIVERY_BATCH = 25;
const MAX_DELIVERY_ROUNDS = 40;
/**
 * How long a claim is this instance's alone: twice the longest send plus a margin for recording its result, so
 * it never runs out while the attempt may still be in flight; after it, any instance may take the delivery over
 * (this one died, or lost the database before recording the result).
 */
const leaseMs = (timeoutMs: number) => 2 * timeoutMs + 5000;

/** Numbers newly committed events and queues their deliveries, until none is left (bounded per run). */
export async function relayPending(
  db: Kysely<Database>,
  onRelayed: (events: RelayedEvent[]) => void = () => {},
): Promise<number> {
  let total = 0;
  for (let pass = 0; pass < MAX_RELAY_PASSES; pass++) {
    const relayed = await relayEvents(db, RELAY_BATCH);
    onRelayed(relayed);
    total += relayed.length;
    if (relayed.length < RELAY_BATCH) break;
  }
  return total;
}

export interface AttemptReport {
  delivery: ClaimedDelivery;
  result: AttemptResult;
  /** The retries are used up: the delivery is now 'failed'. */
  gaveUp: boolean;
  /** This failure disabled the endpoint (failing longer than WEBHOOK_DISABLE_AFTER_HOURS). */
  disabled: boolean;
}

/**
 * Sends due deliveries in rounds of DELIVERY_BATCH, each round in parallel, until none is due or the signal
 * aborts. Every attempt is signed when it is sent, and its result recorded only for that attempt (a claim
 * that outlived its lease and was taken over records nothing). A result that cannot be recorded (the
 * database is gone) leaves the lease to run out: the delivery is sent again, with the same event id.
 */
export async function deliverDue(
  db: Kysely<Database>,
  config: EventsConfig,
  options: { signal?: AbortSignal | undefined; onAttempt?: (report: AttemptReport) => void } = {},
): Promise<number> {
  let sent = 0;
  for (let round = 0; round < MAX_DELIVERY_ROUNDS && !options.signal?.aborted; round++) {
    const claimed = await claimDueDeliveries(db, {
      limit: DELIVERY_BATCH,
      leaseMs: leaseMs(config.webhookTimeoutMs),
    });
    if (claimed.length === 0) break;
    const reports = await Promise.allSettled(
      claimed.map((delivery) => attempt(db, config, delivery, options.signal)),
    );
    for (const report of reports) {
      if (report.status === 'fulfilled') options.onAttempt?.(report.value);
    }
    sent += claimed.length;
    const failed = reports.find((report) => report.status === 'rejected');
    if (failed) throw failed.reason;
    if (claimed.length < DELIVERY_BATCH) break;
  }
  return sent;
}

async function attempt(
  db: Kysely<Database>,
  config: EventsConfig,
  delivery: ClaimedDelivery,
  signal: AbortSignal | undefined,
): Promise<AttemptReport> {
  const body = envelopeBody(delivery.event);
  const result = await sendDelivery(
    delivery.url,
    body,
    signatureHeaders(delivery.event.id, body, delivery.secrets),
    {
      timeoutMs: config.webhookTimeoutMs,
      allowPrivate: config.webhookAllowPrivate,
      signal,
    },
  );
  if (result.outcome === 'delivered') {
    await recordDeliverySuccess(db, delivery, result.status ?? 200);
    return { delivery, result, gaveUp: false, disabled: false };
  }
  if (result.outcome === 'aborted') {
    // Our own shutdown, not the endpoint's failure: neither a spent retry (the last one would give the event
    // up unsent) nor a failing streak. The claim is given back, due at once for the next instance; the request
    // may have reached the endpoint, which then sees it again under the same id, as after any lost answer.
    await releaseDeliveryClaim(db, delivery);
    return { delivery, result, gaveUp: false, disabled: false };
  }
  const recorded = await recordDeliveryFailure(db, delivery, {
    status: result.status,
    error: result.error ?? result.outcome,
    retryInMs: retryDelayMs(delivery.attempt, config.webhookRetryScheduleMs),
    disableAfterMs: config.webhookDisableAfterMs,
  });
  return { delivery, result, ...recorded };
}

export type { AttemptOutcome };
