/**
 * The event types (issue 16). Their names are a contract with every receiver: never rename one, only add.
 *
 * Who writes them, always in the transaction of the change they report:
 *  - balance.* and guild.pool.*: the statement triggers on the two ledgers (db functions/balance_alerts.sql);
 *  - reservation.expired: the row trigger on credits.reservations (db functions/reservation_events.sql);
 *  - credits.expiring and credits.expired: the lot functions (db functions/lots.sql notice_expiring_lots,
 *    expire_lots), run by the lot expiry sweep and by every spend that finds a lapsed lot;
 *  - the others: the domain code, through emitEvent (emit.ts).
 */
export const EMITTED_EVENT_TYPES = [
  'balance.low',
  'balance.depleted',
  'balance.recovered',
  'purchase.completed',
  'purchase.reversed',
  'purchase.reinstated',
  'gift.redeemed',
  'gift.expired',
  'guild.pool.low',
  'guild.pool.depleted',
  'guild.pool.recovered',
  'guild.member.limit_reached',
  'reservation.expired',
  'credits.expiring',
  'credits.expired',
  'autotopup.failed',
] as const;

export const EVENT_TYPES = EMITTED_EVENT_TYPES;

export type EventType = (typeof EVENT_TYPES)[number];

const KNOWN = new Set<string>(EVENT_TYPES);

export const isEventType = (value: string): value is EventType => KNOWN.has(value);

/** What a receiver gets: the JSON body of every delivery, and each item of internal.events.list. */
export interface EventEnvelope {
  /** Stable across retries and replays (also the `webhook-id` header): receivers dedupe on it. */
  id: string;
  type: string;
  /** When the change it reports was made (ISO 8601). */
  createdAt: string;
  data: Record<string, unknown>;
}
