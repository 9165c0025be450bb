import { type Kysely, sql, type Transaction } from 'kysely';
import type { Database, EventRow, JsonObject } from '../database.ts';

// The outbox (issue 16). Balance crossings and reservation expiry are written by triggers
// (functions/balance_alerts.sql, reservation_events.sql); every other event by the domain code through
// writeEvent, inside the transaction of the change it reports. The relay (functions/relay_events.sql)
// numbers committed events in commit order and fans them out to the webhook endpoints.

export interface NewEvent {
  type: string;
  /** The account the event is about: a user's balance … */
  userId?: string | null | undefined;
  /** … or a guild's pool. */
  guildId?: string | null | undefined;
  /** The event's `data`: names the account, the amounts and the ledger entry that caused it. */
  data: JsonObject;
}

/**
 * Writes one event in the caller's transaction: it commits with the change it reports, or not at all.
 * Returns its id (the envelope id receivers dedupe on).
 */
export async function writeEvent(trx: Transaction<Database>, event: NewEvent): Promise<string> {
  const row = await trx
    .insertInto('credits.events')
    .values({
      type: event.type,
      user_id: event.userId ?? null,
      guild_id: event.guildId ?? null,
      data: JSON.stringify(event.data),
    })
    .returning('id')
    .executeTakeFirstOrThrow();
  return row.id;
}

export interface RelayedEvent {
  id: string;
  type: string;
  position: number;
}

/**
 * One pass of the relay (credits.relay_events): numbers up to `limit` committed events in commit order and
 * queues their deliveries. Answers nothing when another instance's relay is running (it does the work).
 */
export async function relayEvents(db: Kysely<Database>, limit = 500): Promise<RelayedEvent[]> {
  const { rows } = await sql<{ event_id: string; event_type: string; event_position: number }>`
    select * from credits.relay_events(${limit}::int)`.execute(db);
  return rows.map((row) => ({ id: row.event_id, type: row.event_type, position: row.event_position }));
}

export interface EventListRequest {
  /** The position of the last event already seen (a cursor); absent = from the first event. */
  after?: number | undefined;
  types?: readonly string[] | undefined;
  limit: number;
}

/**
 * Relayed events after `after`, in commit order (position). `cursor` is where the next call continues: the
 * last event returned, or — when fewer than `limit` matched — the last position this call looked at, so a
 * filter that matches rarely does not make the next call scan the same events again.
 */
export async function listEvents(
  db: Kysely<Database>,
  request: EventListRequest,
): Promise<{ items: EventRow[]; cursor: number }> {
  const after = request.after ?? 0;
  return db.transaction().execute(async (trx) => {
    // One snapshot for the page and the high-water mark.
    await sql`set transaction isolation level repeatable read, read only`.execute(trx);
    let query = trx
      .selectFrom('credits.events')
      .selectAll()
      .where('position', 'is not', null)
      .where('position', '>', after);
    if (request.types && request.types.length > 0) query = query.where('type', 'in', [...request.types]);
    const items = await query.orderBy('position').limit(request.limit).execute();
    const last = items[items.length - 1];
    if (items.length === request.limit && last?.position != null) return { items, cursor: last.position };
    const { top } = await trx
      .selectFrom('credits.events')
      .select(sql<number | null>`max(position)`.as('top'))
      .where('position', 'is not', null)
      .executeTakeFirstOrThrow();
    return { items, cursor: Math.max(after, top ?? 0) };
  });
}

export async function findEvent(db: Kysely<Database>, eventId: string): Promise<EventRow | undefined> {
  return db.selectFrom('credits.events').selectAll().where('id', '=', eventId).executeTakeFirst();
}

/** The age in seconds of the oldest event not yet relayed or still waiting for a delivery; 0 when none. */
export async function oldestUndeliveredEventAge(db: Kysely<Database>): Promise<number> {
  const { rows } = await sql<{ age: number | string | null }>`
    select extract(epoch from now() - least(
      (select min(e.created_at) from credits.events e where e.position is null),
      (select min(e.created_at)
         from credits.webhook_deliveries d
         join credits.events e on e.id = d.event_id
         join credits.webhooks w on w.id = d.webhook_id and w.enabled
        where d.status = 'pending')))::float8 as age`.execute(db);
  const age = Number(rows[0]?.age ?? 0);
  return Number.isFinite(age) && age > 0 ? age : 0;
}

export type AlertAccountKind = 'user' | 'guild';

export interface AlertSetting {
  /** The threshold in force for the account: its own, else the default; null = no balance events. */
  lowBalanceThreshold: number | null;
  /** True when the account has no setting of its own and follows the default. */
  usesDefault: boolean;
}

/** The default threshold (LOW_BALANCE_THRESHOLD) the triggers use for accounts without a setting. */
export async function writeDefaultLowBalanceThreshold(
  db: Kysely<Database>,
  threshold: number | null,
): Promise<void> {
  await db
    .updateTable('credits.event_settings')
    .set({ low_balance_threshold: threshold, updated_at: sql`now()` })
    .where('id', '=', true)
    .where(sql<boolean>`low_balance_threshold is distinct from ${threshold}::int8`)
    .execute();
}

/** The threshold in force for one account, and whether it is the default. */
export async function alertSettingOf(
  db: Kysely<Database>,
  kind: AlertAccountKind,
  accountId: string,
): Promise<AlertSetting> {
  const { rows } = await sql<{ own: boolean; threshold: number | null }>`
    select (a.account_id is not null) as own,
           case when a.account_id is null then s.low_balance_threshold else a.low_balance_threshold end as threshold
      from credits.event_settings s
      left join credits.alert_settings a on a.account_kind = ${kind} and a.account_id = ${accountId}
     where s.id`.execute(db);
  const row = rows[0];
  return { lowBalanceThreshold: row?.threshold ?? null, usesDefault: !row?.own };
}

/**
 * Sets an account's threshold: a number (0 = only `depleted`), null (no balance events for it) or
 * 'default' (forget its own setting, follow LOW_BALANCE_THRESHOLD). Takes effect for the next ledger entry.
 */
export async function setAlertSetting(
  db: Kysely<Database>,
  kind: AlertAccountKind,
  accountId: string,
  threshold: number | null | 'default',
): Promise<AlertSetting> {
  if (threshold === 'default') {
    await db
      .deleteFrom('credits.alert_settings')
      .where('account_kind', '=', kind)
      .where('account_id', '=', accountId)
      .execute();
  } else {
    await db
      .insertInto('credits.alert_settings')
      .values({ account_kind: kind, account_id: accountId, low_balance_threshold: threshold })
      .onConflict((conflict) =>
        conflict
          .columns(['account_kind', 'account_id'])
          .doUpdateSet({ low_balance_threshold: threshold, updated_at: sql`now()` }),
      )
      .execute();
  }
  return alertSettingOf(db, kind, accountId);
}
