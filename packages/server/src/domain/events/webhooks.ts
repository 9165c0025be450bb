import {
  type Database,
  deleteWebhook,
  findEvent,
  findWebhook,
  insertWebhook,
  listDeliveries,
  listWebhooks,
  queueReplay,
  rotateWebhookSecret,
  updateWebhook,
  type WebhookDeliveryRow,
  type WebhookRow,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { InvalidCursorError, InvalidRequestError, NotFoundError } from '../errors.ts';
import { assertPublicHost, BlockedAddressError } from './address-policy.ts';
import { newWebhookSecret } from './signing.ts';

// Webhook endpoints (internal.webhooks.*): operated by services with the service key.

/** After a rotation the previous secret keeps signing this long (a second signature). */
export const SECRET_GRACE_SECONDS = 24 * 3600;

export interface WebhookPolicy {
  allowPrivate: boolean;
}

export interface WebhookView {
  id: string;
  url: string;
  description: string | null;
  /** Event types it receives; null = all. */
  events: string[] | null;
  enabled: boolean;
  /** Why it is disabled (failing too long, or by an operator); null while enabled. */
  disabledReason: string | null;
  disabledAt: Date | null;
  /** Failing since (no 2xx since then); null while it answers. */
  failingSince: Date | null;
  /** Until when the previous secret still signs (after a rotation); null when there is none. */
  previousSecretExpiresAt: Date | null;
  createdAt: Date;
  updatedAt: Date;
}

export const toWebhookView = (row: WebhookRow): WebhookView => ({
  id: row.id,
  url: row.url,
  description: row.description,
  events: row.event_types,
  enabled: row.enabled,
  disabledReason: row.disabled_reason,
  disabledAt: row.disabled_at,
  failingSince: row.failing_since,
  previousSecretExpiresAt:
    row.previous_secret_expires_at && row.previous_secret_expires_at > new Date()
      ? row.previous_secret_expires_at
      : null,
  createdAt: row.created_at,
  updatedAt: row.updated_at,
});

const webhookNotFound = () => new NotFoundError('Webhook', 'WEBHOOK_NOT_FOUND');

/**
 * The checks of an endpoint URL that need the network: its host must not be (or resolve to) a loopback,
 * private, link-local or reserved address unless WEBHOOK_ALLOW_PRIVATE. (Scheme, credentials and length are
 * checked by the input schema.) The same check runs again on every delivery.
 */
async function assertDeliverable(url: string, policy: WebhookPolicy): Promise<void> {
  try {
    await assertPublicHost(new URL(url), policy.allowPrivate);
  } catch (error) {
    const why =
      error instanceof BlockedAddressError
        ? `${error.message}; webhooks go to public addresses only`
        : `its host could not be resolved (${(error as { code?: string }).code ?? 'lookup failed'})`;
    throw new InvalidRequestError(`url: ${why}`, 'WEBHOOK_URL_REFUSED', { field: 'url' });
  }
}

export interface CreateWebhookInput {
  url: string;
  events?: string[] | undefined;
  description?: string | undefined;
}

/** A new endpoint; its secret is in this answer only (list never shows it). */
export async function createWebhook(
  db: Kysely<Database>,
  policy: WebhookPolicy,
  input: CreateWebhookInput,
): Promise<WebhookView & { secret: string }> {
  await assertDeliverable(input.url, policy);
  const secret = newWebhookSecret();
  const row = await insertWebhook(db, {
    url: input.url,
    description: input.description ?? null,
    eventTypes: input.events ? [...new Set(input.events)] : null,
    secret,
  });
  return { ...toWebhookView(row), secret };
}

export async function webhookList(db: Kysely<Database>): Promise<{ items: WebhookView[] }> {
  return { items: (await listWebhooks(db)).map(toWebhookView) };
}

export interface UpdateWebhookInput {
  id: string;
  url?: string | undefined;
  /** null = every event type. */
  events?: string[] | null | undefined;
  description?: string | null | undefined;
  /** true enables a disabled endpoint again (its failing streak starts over); false disables it. */
  enabled?: boolean | undefined;
}

export async function changeWebhook(
  db: Kysely<Database>,
  policy: WebhookPolicy,
  input: UpdateWebhookInput,
): Promise<WebhookView> {
  if (input.url !== undefined) await assertDeliverable(input.url, policy);
  const row = await updateWebhook(db, input.id, {
    url: input.url,
    description: input.description,
    eventTypes: input.events === undefined ? undefined : input.events && [...new Set(input.events)],
    enabled: input.enabled,
  });
  if (!row) throw webhookNotFound();
  return toWebhookView(row);
}

export async function removeWebhook(db: Kysely<Database>, id: string): Promise<{ deleted: true }> {
  if (!(await deleteWebhook(db, id))) throw webhookNotFound();
  return { deleted: true };
}

/** A new secret (shown once); the old one keeps signing for SECRET_GRACE_SECONDS. */
export async function rotateSecret(
  db: Kysely<Database>,
  id: string,
): Promise<WebhookView & { secret: string }> {
  const secret = newWebhookSecret();
  const row = await rotateWebhookSecret(db, id, secret, SECRET_GRACE_SECONDS);
  if (!row) throw webhookNotFound();
  return { ...toWebhookView(row), secret };
}

export interface DeliveryView {
  id: string;
  eventId: string;
  eventType: string;
  /** 'original' (sent because the endpoint subscribes) or 'replay'. */
  kind: 'original' | 'replay';
  /** 'pending' (waiting or being retried), 'delivered' (a 2xx), 'failed' (retries used up). */
  status: 'pending' | 'delivered' | 'failed';
  attempts: number;
  /** When the next attempt is due (pending only). */
  nextAttemptAt: Date | null;
  lastAttemptAt: Date | null;
  /** The HTTP status of the last attempt, when it got an answer. */
  lastStatus: number | null;
  lastError: string | null;
  createdAt: Date;
  deliveredAt: Date | null;
}

const toDeliveryView = (row: WebhookDeliveryRow & { event_type: string }): DeliveryView => ({
  id: row.id,
  eventId: row.event_id,
  eventType: row.event_type,
  kind: row.kind,
  status: row.status,
  attempts: row.attempts,
  nextAttemptAt: row.status === 'pending' ? row.next_attempt_at : null,
  lastAttemptAt: row.last_attempt_at,
  lastStatus: row.last_status,
  lastError: row.last_error,
  createdAt: row.created_at,
  deliveredAt: row.delivered_at,
});

export async function webhookDeliveries(
  db: Kysely<Database>,
  input: { webhookId: string; cursor?: string | undefined; limit: number },
): Promise<{ items: DeliveryView[]; nextCursor: string | null }> {
  if (!(await findWebhook(db, input.webhookId))) throw webhookNotFound();
  const page = await listDeliveries(db, input.webhookId, input);
  if (!page) throw new InvalidCursorError('a delivery of this webhook');
  return { items: page.items.map(toDeliveryView), nextCursor: page.nextCursor };
}

/**
 * Sends an event again: to one endpoint, or to every endpoint subscribed to its type. Each gets a new delivery
 * with a fresh retry schedule; the receiver sees the same event id (webhook-id) as before.
 */
export async function replayEvent(
  db: Kysely<Database>,
  input: { eventId: string; webhookId?: string | undefined },
): Promise<{ deliveries: { id: string; webhookId: string }[] }> {
  if (!(await findEvent(db, input.eventId))) throw new NotFoundError('Event', 'EVENT_NOT_FOUND');
  const queued = await queueReplay(db, input.eventId, input.webhookId);
  // a named endpoint gets one delivery unless it does not exist (or was deleted while this ran)
  if (input.webhookId !== undefined && queued.length === 0) throw webhookNotFound();
  return { deliveries: queued.map((row) => ({ id: row.id, webhookId: row.webhook_id })) };
}
