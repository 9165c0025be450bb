import { z } from 'zod';
import { eventList } from '../../domain/events/list.ts';
import { EVENT_TYPES } from '../../domain/events/types.ts';
import {
  changeWebhook,
  createWebhook,
  removeWebhook,
  replayEvent,
  rotateSecret,
  webhookDeliveries,
  webhookList,
} from '../../domain/events/webhooks.ts';
import { text, uuid } from '../../schemas.ts';
import { internalProcedure, router } from '../init.ts';

// Events out (issue 16): webhook endpoints and the pull listing, for services (internal.webhooks.*,
// internal.events.list); the alert thresholds are beside the balances they watch (credits, guild, internal.credits).

/** A low-balance threshold: credits (0 = only `depleted`), null = no balance events, 'default' = LOW_BALANCE_THRESHOLD. */
export const lowBalanceThreshold = z.union([
  z
    .int({ error: "must be a whole number of credits, null or 'default'" })
    .min(0)
    .max(Number.MAX_SAFE_INTEGER),
  z.null(),
  z.literal('default'),
]);

/** An endpoint URL: absolute http(s), no credentials in it. Where it points is checked in the domain. */
const webhookUrl = text(2048)
  .check((ctx) => {
    let url: URL;
    try {
      url = new URL(ctx.value);
    } catch {
      ctx.issues.push({ code: 'custom', message: 'must be an absolute http(s) URL', input: ctx.value });
      return;
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      ctx.issues.push({ code: 'custom', message: 'must use http or https', input: ctx.value });
    } else if (url.username || url.password) {
      ctx.issues.push({
        code: 'custom',
        message: 'must not carry a user name or password',
        input: ctx.value,
      });
    } else if (url.port === '0') {
      ctx.issues.push({ code: 'custom', message: 'must not use port 0', input: ctx.value });
    }
  })
  // Stored as it is read and connected to ("HTTP://x" → "http://x/"), still within the limit.
  .transform((value) => new URL(value).href)
  .pipe(z.string().max(2048, { error: 'must be at most 2048 characters once normalised' }));

const eventTypes = z
  .array(z.enum(EVENT_TYPES))
  .min(1, { error: 'must name at least one event type (omit it for all)' })
  .max(EVENT_TYPES.length * 2);

const policyOf = (deps: { config: { events: { webhookAllowPrivate: boolean } } }) => ({
  allowPrivate: deps.config.events.webhookAllowPrivate,
});

export const internalWebhooksRouter = router({
  create: internalProcedure
    .input(
      z.strictObject({ url: webhookUrl, events: eventTypes.optional(), description: text(500).optional() }),
    )
    .mutation(({ ctx, input }) => createWebhook(ctx.deps.db, policyOf(ctx.deps), input)),

  list: internalProcedure.query(({ ctx }) => webhookList(ctx.deps.db)),

  update: internalProcedure
    .input(
      z.strictObject({
        id: uuid,
        url: webhookUrl.optional(),
        events: eventTypes.nullable().optional(),
        description: text(500).nullable().optional(),
        enabled: z.boolean().optional(),
      }),
    )
    .mutation(({ ctx, input }) => changeWebhook(ctx.deps.db, policyOf(ctx.deps), input)),

  delete: internalProcedure
    .input(z.strictObject({ id: uuid }))
    .mutation(({ ctx, input }) => removeWebhook(ctx.deps.db, input.id)),

  rotateSecret: internalProcedure
    .input(z.strictObject({ id: uuid }))
    .mutation(({ ctx, input }) => rotateSecret(ctx.deps.db, input.id)),

  deliveries: internalProcedure
    .input(
      z.strictObject({
        webhookId: uuid,
        cursor: uuid.optional(),
        limit: z.int().min(1).max(100).default(20),
      }),
    )
    .query(({ ctx, input }) => webhookDeliveries(ctx.deps.db, input)),

  replay: internalProcedure
    .input(z.strictObject({ eventId: uuid, webhookId: uuid.optional() }))
    .mutation(({ ctx, input }) => replayEvent(ctx.deps.db, input)),
});

export const internalEventsRouter = router({
  list: internalProcedure
    .input(
      z
        .strictObject({
          after: z
            .string()
            .regex(/^\d{1,15}$/, { error: 'must be a cursor returned by internal.events.list' })
            .optional(),
          // A list; also comma-separated text, as a REST query string carries one value.
          types: z
            .union([
              z.array(z.enum(EVENT_TYPES)),
              z
                .string()
                .max(1000)
                .transform((value) => value.split(',').map((type) => type.trim()))
                .pipe(z.array(z.enum(EVENT_TYPES))),
            ])
            .pipe(
              z
                .array(z.enum(EVENT_TYPES))
                .min(1)
                .max(EVENT_TYPES.length * 2),
            )
            .optional(),
          limit: z.int().min(1).max(1000).default(100),
        })
        .optional(),
    )
    .query(({ ctx, input }) => eventList(ctx.deps.db, input ?? { limit: 100 })),
});
