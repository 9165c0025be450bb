import { type Kysely, sql } from 'kysely';
import type { Database, JsonObject, WebhookDeliveryRow, WebhookRow } from '../database.ts';
import { newestFirst, type Page, type PageRequest } from './pagination.ts';

// Webhook endpoints and their deliveries (issue 16). The worker (server/src/jobs/webhook-delivery.ts) claims
// due deliveries here with SKIP LOCKED and a lease, so instances never send the same attempt at once.

export interface NewWebhook {
  url: string;
  description?: string | null | undefined;
  eventTypes?: readonly string[] | null | undefined;
  secret: string;
}

export async function insertWebhook(db: Kysely<Database>, webhook: NewWebhook): Promise<WebhookRow> {
  return db
    .insertInto('credits.webhooks')
    .values({
      url: webhook.url,
      description: webhook.description ?? null,
      event_types: webhook.eventTypes ? [...webhook.eventTypes] : null,
      secret: webhook.secret,
    })
    .returningAll()
    .executeTakeFirstOrThrow();
}

export async function listWebhooks(db: Kysely<Database>): Promise<WebhookRow[]> {
  return db.selectFrom('credits.webhooks').selectAll().orderBy('created_at').orderBy('id').execute();
}

export async function findWebhook(db: Kysely<Database>, id: string): Promise<WebhookRow | undefined> {
  return db.selectFrom('credits.webhooks').selectAll().where('id', '=', id).executeTakeFirst();
}

export interface WebhookChanges {
  url?: string | undefined;
  description?: string | null | undefined;
  eventTypes?: readonly string[] | null | undefined;
  /** true re-enables an endpoint (and forgets how long it was failing); false disables it by hand. */
  enabled?: boolean | undefined;
}

export async function updateWebhook(
  db: Kysely<Database>,
  id: string,
  changes: WebhookChanges,
): Promise<WebhookRow | undefined> {
  return db
    .updateTable('credits.webhooks')
    .set({
      ...(changes.url !== undefined ? { url: changes.url } : {}),
      ...(changes.description !== undefined ? { description: changes.description } : {}),
      ...(changes.eventTypes !== undefined
        ? { event_types: changes.eventTypes ? [...changes.eventTypes] : null }
        : {}),
      ...(changes.enabled === true
        ? { enabled: true, disabled_reason: null, disabled_at: null, failing_since: null }
        : {}),
      ...(changes.enabled === false
        ? {
            enabled: false,
            disabled_reason: sql<string>`case when enabled then 'disabled by an operator' else disabled_reason end`,
            disabled_at: sql<Date>`case when enabled then now() else disabled_at end`,
          }
        : {}),
      updated_at: sql`clock_timestamp()`,
    })
    .where('id', '=', id)
    .returningAll()
    .executeTakeFirst();
}

/** Deletes an endpoint and its deliveries (pending ones are never sent). */
export async function deleteWebhook(db: Kysely<Database>, id: string): Promise<boolean> {
  const result = await db.deleteFrom('credits.webhooks').where('id', '=', id).executeTakeFirst();
  return result.numDeletedRows > 0n;
}

/**
 * A new signing secret; the current one becomes the previous secret and keeps signing (a second signature
 * in the header) for `graceSeconds`, so receivers can switch without missing a delivery.
 */
export async function rotateWebhookSecret(
  db: Kysely<Database>,
  id: string,
  secret: string,
  graceSeconds: number,
): Promise<WebhookRow | undefined> {
  return db
    .updateTable('credits.webhooks')
    .set({
      secret,
      previous_secret: sql<string>`secret`,
      previous_secret_expires_at: sql<Date>`clock_timestamp() + ${graceSeconds}::int * interval '1 second'`,
      updated_at: sql`clock_timestamp()`,
    })
    .where('id', '=', id)
    .returningAll()
    .executeTakeFirst();
}

/** One delivery claimed by this instance: what to send, where, signed with which secrets. */
export interface ClaimedDelivery {
  id: string;
  webhookId: string;
  /** The attempt this claim is (1 = first). A result is recorded only for the attempt it belongs to. */
  attempt: number;
  url: string;
  /** Secrets to sign with: the current one, and the previous one while it is still valid. */
  secrets: string[];
  event: { id: string; type: string; createdAt: Date; data: JsonObject };
}

/**
 * Claims up to `limit` due deliveries of enabled endpoints (SKIP LOCKED: rows another instance is claiming
 * are left to it) and leases them: attempts + 1 and next_attempt_at moved `leaseMs` ahead, committed at once.
 * No transaction stays open while sending; should this instance die mid-send, the lease runs out and any
 * instance retries (at least once). The lease is longer than a send may take, so nobody sends the same
 * attempt at the same time.
 */
export async function claimDueDeliveries(
  db: Kysely<Database>,
  options: { limit: number; leaseMs: number },
): Promise<ClaimedDelivery[]> {
  const { rows } = await sql<{
    id: string;
    webhook_id: string;
    attempts: number;
    url: string;
    secret: string;
    previous_secret: string | null;
    event_id: string;
    event_type: string;
    event_created_at: Date;
    event_data: JsonObject;
  }>`
    with due as (
      select d.id
        from credits.webhook_deliveries d
        join credits.webhooks w on w.id = d.webhook_id and w.enabled
       where d.status = 'pending' and d.next_attempt_at <= now()
       order by d.next_attempt_at, d.created_at
       limit ${options.limit}
         for update of d skip locked
    ), claimed as (
      update credits.webhook_deliveries d
         set attempts = d.attempts + 1, last_attempt_at = now(),
             next_attempt_at = now() + ${options.leaseMs}::int * interval '1 millisecond'
        from due
       where d.id = due.id
      returning d.id, d.webhook_id, d.event_id, d.attempts
    )
    select c.id, c.webhook_id, c.attempts, w.url, w.secret,
           case when w.previous_secret_expires_at > now() then w.previous_secret end as previous_secret,
           e.id as event_id, e.type as event_type, e.created_at as event_created_at, e.data as event_data
      from claimed c
      join credits.webhooks w on w.id = c.webhook_id
      join credits.events e on e.id = c.event_id
     order by e.position nulls last, e.seq`.execute(db);
  return rows.map((row) => ({
    id: row.id,
    webhookId: row.webhook_id,
    attempt: row.attempts,
    url: row.url,
    secrets: row.previous_secret ? [row.secret, row.previous_secret] : [row.secret],
    event: { id: row.event_id, type: row.event_type, createdAt: row.event_created_at, data: row.event_data },
  }));
}

/**
 * A 2xx: the delivery is done and the endpoint is no longer failing. The endpoint row is written before the
 * delivery row, the order of deleting an endpoint (its row, then its deliveries by cascade): in the other
 * order the two deadlock, and Postgres would abort one of them — perhaps the caller's delete, as a 500.
 */
export async function recordDeliverySuccess(
  db: Kysely<Database>,
  delivery: Pick<ClaimedDelivery, 'id' | 'webhookId' | 'attempt'>,
  status: number,
): Promise<void> {
  await db.transaction().execute(async (trx) => {
    await trx
      .updateTable('credits.webhooks')
      .set({ failing_since: null })
      .where('id', '=', delivery.webhookId)
      .where('failing_since', 'is not', null)
      .execute();
    await trx
      .updateTable('credits.webhook_deliveries')
      .set({ status: 'delivered', delivered_at: sql`now()`, last_status: status, last_error: null })
      .where('id', '=', delivery.id)
      .where('attempts', '=', delivery.attempt)
      .where('status', '=', 'pending')
      .execute();
  });
}

/**
 * Gives back a claim whose attempt was cut short by the claiming instance itself (it is stopping): the attempt
 * is not counted and the delivery is due again at once. Only for that claim (a claim taken over meanwhile is
 * left alone).
 */
export async function releaseDeliveryClaim(
  db: Kysely<Database>,
  delivery: Pick<ClaimedDelivery, 'id' | 'attempt'>,
): Promise<void> {
  await db
    .updateTable('credits.webhook_deliveries')
    .set({ attempts: delivery.attempt - 1, next_attempt_at: sql`now()` })
    .where('id', '=', delivery.id)
    .where('attempts', '=', delivery.attempt)
    .where('status', '=', 'pending')
    .execute();
}

export interface DeliveryFailure {
  /** The HTTP status, when there was an answer. */
  status: number | null;
  error: string;
  /** When to try again; null = give up (the schedule is used up). */
  retryInMs: number | null;
  /** An endpoint failing for longer than this is disabled. */
  disableAfterMs: number;
}

/**
 * A failed attempt: scheduled again (or given up), and the endpoint's failing streak starts or goes on; an
 * endpoint failing for longer than `disableAfterMs` is disabled (and says why). Returns whether this call
 * disabled it.
 */
export async function recordDeliveryFailure(
  db: Kysely<Database>,
  delivery: Pick<ClaimedDelivery, 'id' | 'webhookId' | 'attempt'>,
  failure: DeliveryFailure,
): Promise<{ gaveUp: boolean; disabled: boolean }> {
  return db.transaction().execute(async (trx) => {
    const error = failure.error.slice(0, 500);
    // the endpoint row first, as deleting an endpoint locks it (see recordDeliverySuccess)
    const { rows } = await sql<{ disabled: boolean }>`
      update credits.webhooks
         set failing_since = coalesce(failing_since, now()),
             enabled = case when failing_since < now() - ${failure.disableAfterMs}::int8 * interval '1 millisecond'
                            then false else enabled end,
             disabled_at = case when enabled and failing_since < now() - ${failure.disableAfterMs}::int8 * interval '1 millisecond'
                                then now() else disabled_at end,
             disabled_reason = case when enabled and failing_since < now() - ${failure.disableAfterMs}::int8 * interval '1 millisecond'
                                    then 'failing since ' || to_char(failing_since at time zone 'utc', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                                         || ', last error: ' || ${error}
                                    else disabled_reason end
       where id = ${delivery.webhookId}::uuid
      returning (not enabled and disabled_at = now()) as disabled`.execute(trx);
    const updated = await trx
      .updateTable('credits.webhook_deliveries')
      .set({
        status: failure.retryInMs === null ? 'failed' : 'pending',
        next_attempt_at:
          failure.retryInMs === null
            ? sql`now()`
            : sql`now() + ${Math.round(failure.retryInMs)}::int8 * interval '1 millisecond'`,
        last_status: failure.status,
        last_error: error,
      })
      .where('id', '=', delivery.id)
      .where('attempts', '=', delivery.attempt)
      .where('status', '=', 'pending')
      .executeTakeFirst();
    return {
      gaveUp: failure.retryInMs === null && updated.numUpdatedRows > 0n,
      disabled: rows[0]?.disabled === true,
    };
  });
}

/** An endpoint's deliveries, newest first; undefined when the cursor names none of them. */
export async function listDeliveries(
  db: Kysely<Database>,
  webhookId: string,
  page: PageRequest,
): Promise<Page<WebhookDeliveryRow & { event_type: string }> | undefined> {
  return newestFirst(
    db
      .selectFrom('credits.webhook_deliveries as d')
      .innerJoin('credits.events as e', 'e.id', 'd.event_id')
      .selectAll('d')
      .select('e.type as event_type')
      .where('d.webhook_id', '=', webhookId),
    { table: 'credits.webhook_deliveries', alias: 'd', idOf: (row) => row.id },
    page,
  );
}

/**
 * Queues the event again for one endpoint, or for every endpoint subscribed to its type: a new delivery
 * ('replay') due now, with a fresh schedule; the receiver sees the same event id. Returns the deliveries (none
 * for an endpoint deleted while this ran).
 */
export async function queueReplay(
  db: Kysely<Database>,
  eventId: string,
  webhookId: string | undefined,
): Promise<{ id: string; webhook_id: string }[]> {
  const { rows } = await sql<{ id: string; webhook_id: string }>`
    insert into credits.webhook_deliveries (webhook_id, event_id, kind)
    select w.id, e.id, 'replay'
      from credits.events e
      join credits.webhooks w
        on ${webhookId === undefined ? sql`w.event_types is null or e.type = any(w.event_types)` : sql`w.id = ${webhookId}::uuid`}
     where e.id = ${eventId}::uuid
       -- an endpoint deleted meanwhile is skipped, as in the relay (without the lock: a foreign key error, a 500)
       for key share of w
    returning id, webhook_id`.execute(db);
  return rows;
}
