import { randomBytes } from 'node:crypto';
import { Webhook } from 'standardwebhooks';
import type { EventEnvelope } from './types.ts';

// Signatures per the Standard Webhooks spec (https://www.standardwebhooks.com): HMAC-SHA256 over
// `${webhook-id}.${webhook-timestamp}.${body}` with the endpoint's secret, sent as `v1,<base64>`. The
// `standardwebhooks` package is the spec's reference implementation: we sign with it, and the tests verify
// every delivery with it, as a receiver would.

/** A new endpoint secret: `whsec_` + 32 random bytes in base64 (the spec's format: 24 to 64 bytes). */
export const newWebhookSecret = () => `whsec_${randomBytes(32).toString('base64')}`;

/** The JSON body of a delivery: the envelope, nothing else. */
export function envelopeBody(event: {
  id: string;
  type: string;
  createdAt: Date;
  data: Record<string, unknown>;
}) {
  const envelope: EventEnvelope = {
    id: event.id,
    type: event.type,
    createdAt: event.createdAt.toISOString(),
    data: event.data,
  };
  return JSON.stringify(envelope);
}

/**
 * The three headers of a delivery. `secrets`: the current secret first, then (for 24 h after a rotation) the
 * previous one; each signs, and the signatures go space-separated in one header, so a receiver holding either
 * secret verifies. Signed at send time: every attempt has a fresh timestamp (receivers refuse old ones).
 */
export function signatureHeaders(
  eventId: string,
  body: string,
  secrets: readonly string[],
  now = new Date(),
): Record<'webhook-id' | 'webhook-timestamp' | 'webhook-signature', string> {
  return {
    'webhook-id': eventId,
    'webhook-timestamp': String(Math.floor(now.getTime() / 1000)),
    'webhook-signature': secrets.map((secret) => new Webhook(secret).sign(eventId, now, body)).join(' '),
  };
}
