import type { DbHandle } from '@mana-credits/db';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { EffectSink } from './domain/effects.ts';

/**
 * Prometheus metrics of one app. Each app owns its registry (tests build many apps in one process; nothing
 * goes to prom-client's global registry). Labels only ever take values from small bounded sets: procedure
 * paths, routes and job names known to the code, status classes, movement types, and caller-chosen strings
 * (app ids, webhook event types) only through a BoundedLabel. Never a user id, a key or an amount as a label.
 *
 * Counting money: every movement is counted once, through `moved`, labelled with how its call was answered
 * (MoneyOutcome). tRPC procedures are counted by one table in trpc/metrics.ts (add a row for a new money
 * procedure), from their input and answer; the webhook counts the purchases and clawbacks it applied; what
 * work moves besides what it was asked (expiries found on the way, sweeps) is reported by the domain code
 * through domain/effects.ts into `effects`.
 */
export interface Metrics {
  readonly registry: Registry;
  readonly httpRequestDuration: Histogram<'method' | 'route' | 'status_class'>;
  readonly procedureDuration: Histogram<'procedure' | 'type' | 'outcome'>;
  readonly creditsDebited: Counter<'app' | 'account' | 'type' | 'outcome'>;
  readonly creditsCredited: Counter<'app' | 'account' | 'type' | 'outcome'>;
  readonly creditsRefunded: Counter<'app' | 'type' | 'outcome'>;
  readonly creditsClawedBack: Counter<'app' | 'outcome'>;
  readonly insufficientCredits: Counter<'procedure' | 'app'>;
  readonly idempotentReplays: Counter<'procedure'>;
  readonly webhookEvents: Counter<'type' | 'outcome'>;
  readonly reservations: Counter<'event'>;
  readonly jobRuns: Counter<'job' | 'outcome'>;
  readonly jobDuration: Histogram<'job'>;
  /** Events written to the outbox, counted once each when the relay numbers them (issue 16). */
  readonly eventsWritten: Counter<'type'>;
  /** Webhook delivery attempts by outcome: delivered, rejected, timeout, unreachable, blocked, aborted (shutdown). */
  readonly webhookDeliveries: Counter<'outcome'>;
  readonly webhookDeliveriesAbandoned: Counter;
  readonly webhookEndpointsDisabled: Counter;
  /** An event type as a label value (the types are a fixed set; bounded all the same). */
  eventTypeLabel(type: string): string;
  /** Counts one movement of credits (nothing when the amount is not a positive whole number); `ok` by default. */
  moved(movement: Movement, outcome?: MoneyOutcome): void;
  /** Side effects reported by the domain code (see domain/effects.ts), counted into this app's metrics. */
  readonly effects: EffectSink;
  /** An app id as a label value: the first MAX_APP_LABELS distinct ids keep their name, later ones are 'other'. */
  appLabel(appId: string | undefined): string;
  /** A webhook event type as a label value, bounded the same way. */
  webhookTypeLabel(type: string | undefined): string;
  /** The exposition text: this app's metrics, then the process's. */
  render(): Promise<{ contentType: string; body: string }>;
}

/** Whose credits moved: a user's personal balance or a guild's pool. */
export type Account = 'personal' | 'pool';

/**
 * One movement of credits, as the metrics count it. `type` says what kind of movement it was (the ledger's
 * types); `app` is the app id the movement names, if any ('unknown' when it names none).
 *  - debited: credits left an account — `usage` (spends, committed holds), `gift` (escrow of a new gift),
 *    `guild_funding` (the personal side of funding a pool), `expiry` (lots whose time ran out).
 *  - credited: credits arrived — `purchase`, `grant`, `gift` (a redeemed portion), `guild_funding` (the pool
 *    side of funding it).
 *  - refunded: credits given back for earlier spending — `usage` (internal refunds), `gift` (the unclaimed escrow
 *    of a cancelled or expired gift).
 *  - clawed_back: credits taken back after a payment was refunded or disputed.
 * Holds move no credits (only what is spendable): they are counted by reservations_total, and a commit debits.
 */
export type Movement = { amount: number | undefined; app?: string | undefined } & (
  | { kind: 'debited'; account: Account; type: 'usage' | 'gift' | 'guild_funding' | 'expiry' }
  | {
      kind: 'credited';
      account: Account;
      type: 'purchase' | 'grant' | 'gift' | 'guild_funding' | 'reinstated';
    }
  | { kind: 'refunded'; type: 'usage' | 'gift' }
  | { kind: 'clawed_back' }
);

/**
 * How the call that moved credits was answered, the `outcome` label of the money counters:
 *  - ok: its first answer (or work no caller waits for: webhooks, expiries, sweeps).
 *  - replay: the stored first answer of a repeated idempotency key (a movement counted before, as `ok`, or as
 *    `unknown` when the first answer was lost).
 *  - unknown: OUTCOME_UNKNOWN, what the call asked to move (it may or may not have happened; a retry with its
 *    key then shows as `replay`).
 */
export type MoneyOutcome = 'ok' | 'replay' | 'unknown';

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

export interface MetricsSources {
  /** Seconds since the oldest event that is not yet relayed or still waits for a delivery (read at scrape). */
  oldestUndeliveredEventSeconds?: () => Promise<number>;
}

export function createMetrics(dbHandle: Pick<DbHandle, 'poolStats'>, sources: MetricsSources = {}): Metrics {
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

  const creditsDebited = counter(
    'credits_debited_total',
    'Credits that left an account: spent, put in gift escrow, or moved into a guild pool',
    ['app', 'account', 'type', 'outcome'],
  );
  const creditsCredited = counter(
    'credits_credited_total',
    'Credits that arrived in an account: purchases, grants, redeemed gifts, pool funding',
    ['app', 'account', 'type', 'outcome'],
  );
  const creditsRefunded = counter(
    'credits_refunded_total',
    'Credits given back: refunded usage, the unclaimed escrow of cancelled or expired gifts',
    ['app', 'type', 'outcome'],
  );
  const creditsClawedBack = counter(
    'credits_clawed_back_total',
    'Credits taken back after a payment was refunded or disputed',
    ['app', 'outcome'],
  );
  const eventTypes = new BoundedLabel(MAX_WEBHOOK_TYPE_LABELS);
  const readOldest = sources.oldestUndeliveredEventSeconds;
  if (readOldest) {
    new Gauge({
      name: `${PREFIX}events_oldest_undelivered_seconds`,
      help: 'Age of the oldest event not yet relayed or still waiting for a webhook delivery (0 when none)',
      registers,
      async collect() {
        try {
          this.set(await readOldest());
        } catch {
          // The database is away: the scrape still answers, this gauge keeps its last value.
        }
      },
    });
  }
  const reservations = counter('reservations_total', 'Holds opened, committed, released and expired', [
    'event',
  ]);

  const moved = (movement: Movement, outcome: MoneyOutcome = 'ok') => {
    const { amount } = movement;
    if (amount === undefined || !Number.isSafeInteger(amount) || amount <= 0) return;
    const app = apps.of(movement.app);
    switch (movement.kind) {
      case 'debited':
        creditsDebited.inc({ app, account: movement.account, type: movement.type, outcome }, amount);
        return;
      case 'credited':
        creditsCredited.inc({ app, account: movement.account, type: movement.type, outcome }, amount);
        return;
      case 'refunded':
        creditsRefunded.inc({ app, type: movement.type, outcome }, amount);
        return;
      case 'clawed_back':
        creditsClawedBack.inc({ app, outcome }, amount);
        return;
    }
  };

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
    creditsDebited,
    creditsCredited,
    creditsRefunded,
    creditsClawedBack,
    insufficientCredits: counter(
      'insufficient_credits_total',
      'Calls (and batch items) refused because the spendable balance was too small',
      ['procedure', 'app'],
    ),
    idempotentReplays: counter(
      'idempotent_replays_total',
      'Money calls (and batch items) answered with the stored first result of their idempotency key',
      ['procedure'],
    ),
    webhookEvents: counter('webhook_events_total', 'Webhook events received, by type and outcome', [
      'type',
      'outcome',
    ]),
    reservations,
    jobRuns: counter('job_runs_total', "Runs of periodic jobs, by job and outcome ('ok' or 'error')", [
      'job',
      'outcome',
    ]),
    jobDuration: new Histogram({
      name: `${PREFIX}job_duration_seconds`,
      help: 'How long the runs of periodic jobs took',
      labelNames: ['job'],
      buckets: [0.005, 0.025, 0.1, 0.5, 1, 2.5, 10, 30, 120],
      registers,
    }),
    eventsWritten: counter(
      'events_written_total',
      'Events written to the outbox (counted when relayed), by type',
      ['type'],
    ),
    webhookDeliveries: counter(
      'webhook_deliveries_total',
      'Webhook delivery attempts by outcome (delivered, rejected, timeout, unreachable, blocked; aborted: cut short by shutdown, not counted as an attempt)',
      ['outcome'],
    ),
    webhookDeliveriesAbandoned: counter(
      'webhook_deliveries_abandoned_total',
      'Webhook deliveries given up after the last retry',
      [],
    ),
    webhookEndpointsDisabled: counter(
      'webhook_endpoints_disabled_total',
      'Webhook endpoints disabled for failing longer than WEBHOOK_DISABLE_AFTER_HOURS',
      [],
    ),
    eventTypeLabel: (type) => eventTypes.of(type),
    moved,
    effects: {
      holdsExpired: (count) => {
        if (count > 0) reservations.inc({ event: 'expired' }, count);
      },
      giftExpired: (refunded) => moved({ kind: 'refunded', type: 'gift', amount: refunded }),
      creditsExpired: (account, amount) => moved({ kind: 'debited', account, type: 'expiry', amount }),
      purchaseCredited: (amount) =>
        moved({ kind: 'credited', account: 'personal', type: 'purchase', amount, app: 'stripe' }),
    },
    appLabel: (appId) => apps.of(appId),
    webhookTypeLabel: (type) => webhookTypes.of(type),
    async render() {
      const [own, process] = await Promise.all([registry.metrics(), processMetrics().metrics()]);
      return { contentType: registry.contentType, body: `${own}\n${process}` };
    },
  };
}
