import type { DbHandle } from '@mana-credits/db';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

/**
 * Prometheus metrics of one app. Each app owns its registry (tests build many apps in one process; nothing
 * goes to prom-client's global registry). Labels only ever take values from small bounded sets: procedure
 * paths and routes known to the code, status classes, and caller-chosen strings (app ids, webhook event
 * types) only through a BoundedLabel. Never a user id, a key or an amount as a label.
 *
 * Counting money: tRPC procedures are counted by one table in trpc/metrics.ts (add a row for a new money
 * procedure). Code outside tRPC (webhooks, sweepers) calls these counters through `deps.metrics`:
 *   deps.metrics.creditsClawedBack.inc({ app: deps.metrics.appLabel(appId) }, amount)
 *   deps.metrics.webhookEvents.inc({ type: deps.metrics.webhookTypeLabel(event.type), outcome: 'processed' })
 *   deps.metrics.reservations.inc({ event: 'expired' }, count)
 */
export interface Metrics {
  readonly registry: Registry;
  readonly httpRequestDuration: Histogram<'method' | 'route' | 'status_class'>;
  readonly procedureDuration: Histogram<'procedure' | 'type' | 'outcome'>;
  readonly creditsDebited: Counter<'app'>;
  readonly creditsCredited: Counter<'app'>;
  readonly creditsRefunded: Counter<'app'>;
  readonly creditsClawedBack: Counter<'app'>;
  readonly insufficientCredits: Counter<'procedure' | 'app'>;
  readonly idempotentReplays: Counter<'procedure'>;
  readonly webhookEvents: Counter<'type' | 'outcome'>;
  readonly reservations: Counter<'event'>;
  /** An app id as a label value: the first MAX_APP_LABELS distinct ids keep their name, later ones are 'other'. */
  appLabel(appId: string | undefined): string;
  /** A webhook event type as a label value, bounded the same way. */
  webhookTypeLabel(type: string | undefined): string;
  /** The exposition text: this app's metrics, then the process's. */
  render(): Promise<{ contentType: string; body: string }>;
}

export type MoneyCounter = 'creditsDebited' | 'creditsCredited' | 'creditsRefunded' | 'creditsClawedBack';
export type ReservationEvent = 'opened' | 'committed' | 'released' | 'expired';

const PREFIX = 'mana_credits_';
export const MAX_APP_LABELS = 100;
const MAX_WEBHOOK_TYPE_LABELS = 50;
const MAX_LABEL_LENGTH = 100;

/**
 * Caps the distinct values one label can take, so a caller choosing strings cannot grow a metric without
 * bound: the first `max` values keep their name, every later one is counted as 'other'.
 */
export class BoundedLabel {
  private readonly seen = new Set<string>();

  constructor(private readonly max: number) {}

  of(value: string | undefined): string {
    if (!value) return 'unknown';
    if (this.seen.has(value)) return value;
    if (this.seen.size >= this.max || value.length > MAX_LABEL_LENGTH) return 'other';
    this.seen.add(value);
    return value;
  }
}

let processRegistry: Registry | undefined;

/**
 * CPU, memory, event loop, GC and handles describe the process, not one app, and collecting them installs
 * process-wide observers: registered once per process in their own registry.
 */
function processMetrics(): Registry {
  if (!processRegistry) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry, prefix: PREFIX });
  }
  return processRegistry;
}

export function createMetrics(dbHandle: Pick<DbHandle, 'poolStats'>): Metrics {
  const registry = new Registry();
  const registers = [registry];
  const apps = new BoundedLabel(MAX_APP_LABELS);
  const webhookTypes = new BoundedLabel(MAX_WEBHOOK_TYPE_LABELS);
  const counter = <T extends string>(name: string, help: string, labelNames: readonly T[]) =>
    new Counter<T>({ name: `${PREFIX}${name}`, help, labelNames, registers });
  const poolGauge = (
    name: string,
    help: string,
    read: (stats: ReturnType<DbHandle['poolStats']>) => number,
  ) =>
    new Gauge({
      name: `${PREFIX}${name}`,
      help,
      registers,
      collect() {
        this.set(read(dbHandle.poolStats()));
      },
    });

  poolGauge('db_pool_connections_in_use', 'Database connections running a query', (s) => s.total - s.idle);
  poolGauge('db_pool_connections_idle', 'Open database connections waiting for work', (s) => s.idle);
  poolGauge('db_pool_waiting_requests', 'Queries waiting for a free database connection', (s) => s.waiting);

  return {
    registry,
    httpRequestDuration: new Histogram({
      name: `${PREFIX}http_request_duration_seconds`,
      help: 'HTTP requests by method, route (tRPC: procedure) and status class',
      labelNames: ['method', 'route', 'status_class'],
      registers,
    }),
    procedureDuration: new Histogram({
      name: `${PREFIX}procedure_duration_seconds`,
      help: "tRPC procedure calls by path, type and outcome ('ok' or the tRPC error code)",
      labelNames: ['procedure', 'type', 'outcome'],
      registers,
    }),
    creditsDebited: counter('credits_debited_total', 'Credits spent from personal balances', ['app']),
    creditsCredited: counter(
      'credits_credited_total',
      'Credits added to personal balances (purchases, grants)',
      ['app'],
    ),
    creditsRefunded: counter('credits_refunded_total', 'Credits given back for earlier spending', ['app']),
    creditsClawedBack: counter(
      'credits_clawed_back_total',
      'Credits taken back after a payment was refunded or disputed',
      ['app'],
    ),
    insufficientCredits: counter(
      'insufficient_credits_total',
      'Calls refused because the spendable balance was too small',
      ['procedure', 'app'],
    ),
    idempotentReplays: counter(
      'idempotent_replays_total',
      'Money calls answered with the stored first result of their idempotency key',
      ['procedure'],
    ),
    webhookEvents: counter('webhook_events_total', 'Webhook events received, by type and outcome', [
      'type',
      'outcome',
    ]),
    reservations: counter('reservations_total', 'Reservation lifecycle events', ['event']),
    appLabel: (appId) => apps.of(appId),
    webhookTypeLabel: (type) => webhookTypes.of(type),
    async render() {
      const [own, process] = await Promise.all([registry.metrics(), processMetrics().metrics()]);
      return { contentType: registry.contentType, body: `${own}\n${process}` };
    },
  };
}
