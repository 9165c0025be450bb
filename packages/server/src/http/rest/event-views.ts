import { z } from 'zod';

/** Response bodies of the events and webhooks routes (issue 16); see views.ts for the rules. */
const timestamp = z.date();

export const alertSetting = z.object({
  lowBalanceThreshold: z
    .int()
    .nullable()
    .describe(
      'The threshold in force: the account’s own, else LOW_BALANCE_THRESHOLD; null = no balance events',
    ),
  usesDefault: z.boolean().describe('True when the account has no threshold of its own'),
});

export const eventEnvelope = z.object({
  id: z.string().describe('Stable across retries and replays (the webhook-id header): dedupe on it'),
  type: z.string(),
  createdAt: z.string().describe('ISO 8601'),
  data: z.record(z.string(), z.unknown()),
});

export const eventPage = z.object({
  items: z.array(eventEnvelope),
  cursor: z.string().describe('Pass as `after` to continue'),
});

export const webhookView = z.object({
  id: z.string(),
  url: z.string(),
  description: z.string().nullable(),
  events: z.array(z.string()).nullable().describe('Event types it receives; null = all'),
  enabled: z.boolean(),
  disabledReason: z.string().nullable(),
  disabledAt: timestamp.nullable(),
  failingSince: timestamp.nullable(),
  previousSecretExpiresAt: timestamp.nullable(),
  createdAt: timestamp,
  updatedAt: timestamp,
});

export const webhookWithSecret = webhookView.extend({
  secret: z.string().describe('The signing secret (whsec_…): shown only in this answer'),
});

export const webhookList = z.object({ items: z.array(webhookView) });

export const webhookDeleted = z.object({ deleted: z.literal(true) });

export const deliveryView = z.object({
  id: z.string(),
  eventId: z.string(),
  eventType: z.string(),
  kind: z.enum(['original', 'replay']),
  status: z.enum(['pending', 'delivered', 'failed']),
  attempts: z.int(),
  nextAttemptAt: timestamp.nullable(),
  lastAttemptAt: timestamp.nullable(),
  lastStatus: z.int().nullable(),
  lastError: z.string().nullable(),
  createdAt: timestamp,
  deliveredAt: timestamp.nullable(),
});

export const deliveryPage = z.object({
  items: z.array(deliveryView),
  nextCursor: z.string().nullable().describe('Pass as `cursor` for the next page; null on the last page'),
});

export const replayQueued = z.object({
  deliveries: z.array(z.object({ id: z.string(), webhookId: z.string() })),
});
