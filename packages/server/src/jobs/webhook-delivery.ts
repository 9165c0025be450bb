import type { AppDeps, Logger } from '../deps.ts';
import { deliverDue, relayPending } from '../domain/events/worker.ts';
import type { Job } from './scheduler.ts';

/**
 * Events out (issue 16), on every instance: relays newly committed events (numbers them in commit order and
 * queues one delivery per subscribed endpoint; one relay at a time across instances, by an advisory lock),
 * then sends the due deliveries, claimed with SKIP LOCKED and a lease so no two instances send the same
 * attempt. WEBHOOK_DELIVERY_INTERVAL_MS; 0 turns it off (events are then neither listed nor sent).
 */
export function webhookDeliveryJob(
  deps: Pick<AppDeps, 'db' | 'config'> & Partial<Pick<AppDeps, 'metrics'>>,
  log?: Logger,
): Job {
  const { db, config, metrics } = deps;
  return {
    name: 'webhook-delivery',
    intervalMs: config.events.deliveryIntervalMs,
    async run(signal) {
      await relayPending(db, (events) => {
        for (const event of events) metrics?.eventsWritten.inc({ type: metrics.eventTypeLabel(event.type) });
      });
      await deliverDue(db, config.events, {
        signal,
        onAttempt({ delivery, result, gaveUp, disabled }) {
          metrics?.webhookDeliveries.inc({ outcome: result.outcome });
          if (gaveUp) {
            metrics?.webhookDeliveriesAbandoned.inc();
            log?.warn(
              { deliveryId: delivery.id, webhookId: delivery.webhookId, eventId: delivery.event.id },
              'webhook delivery abandoned: retries used up',
            );
          }
          if (disabled) {
            metrics?.webhookEndpointsDisabled.inc();
            log?.warn(
              { webhookId: delivery.webhookId, error: result.error },
              'webhook endpoint disabled: failing too long',
            );
          }
        },
      });
    },
  };
}
