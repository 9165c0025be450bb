import type { FastifyInstance, FastifyReply } from 'fastify';
import { DomainError } from '../domain/errors.ts';
import type { GiftInfo } from '../domain/gifts/mappers.ts';
import { giftInfo } from '../domain/gifts/views.ts';
import { clientAddressOf, clientNetworkOf } from './client-address.ts';

const ENTITIES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
  '`': '&#96;',
};

/** Escapes text for HTML element content and quoted attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"'`]/g, (char) => ENTITIES[char]!);
}

/** The redeem link from the GIFT_REDEEM_URL template (validated by config), or null when unset. */
export function redeemUrlOf(template: string | undefined, code: string): string | null {
  return template ? template.replaceAll('{code}', encodeURIComponent(code)) : null;
}

const STATUS_TEXT: Record<GiftInfo['status'], string> = {
  active: 'Ready to redeem',
  depleted: 'Every portion has been claimed',
  expired: 'This gift has expired',
  cancelled: 'This gift was cancelled',
  refunded: 'This gift was cancelled',
};

// No scripts at all: even if escaping failed somewhere, the browser would run nothing.
const SECURITY_HEADERS = {
  'content-type': 'text/html; charset=utf-8',
  'content-security-policy':
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cache-control': 'no-store',
} as const;

function page(title: string, body: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>${escapeHtml(title)}</title>
<style>
body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#1d1d1f}
.amount{font-size:2.5rem;font-weight:700;margin:.5rem 0}
.message{white-space:pre-wrap;border-left:3px solid #ccc;padding-left:1rem}
.redeem{display:inline-block;padding:.75rem 1.5rem;background:#4b3fd9;color:#fff;border-radius:.5rem;text-decoration:none}
dt{font-weight:600}dd{margin:0 0 .5rem}
</style>
</head>
<body>
${body}
</body>
</html>
`;
}

export function renderGiftPage(gift: GiftInfo, redeemUrl: string | null): string {
  const left = gift.totalPortions - gift.claimedPortions;
  const from = gift.creatorName ? ` from ${escapeHtml(gift.creatorName)}` : '';
  const parts = [
    `<h1>A gift${from}</h1>`,
    `<p class="amount" data-field="amount">${gift.creditsPerPortion} credits</p>`,
    `<p data-field="status">${escapeHtml(STATUS_TEXT[gift.status])}</p>`,
  ];
  if (gift.message) parts.push(`<p class="message" data-field="message">${escapeHtml(gift.message)}</p>`);
  if (gift.riddleQuestion) {
    parts.push(`<p>Answer this to redeem:</p><p data-field="riddle">${escapeHtml(gift.riddleQuestion)}</p>`);
  }
  parts.push(
    '<dl>',
    `<dt>Code</dt><dd data-field="code">${escapeHtml(gift.code)}</dd>`,
    `<dt>Portions left</dt><dd data-field="portions-left">${left} of ${gift.totalPortions}</dd>`,
    `<dt>Expires</dt><dd data-field="expires"><time datetime="${gift.expiresAt.toISOString()}">${gift.expiresAt.toUTCString()}</time></dd>`,
    '</dl>',
  );
  if (gift.status === 'active') {
    parts.push(
      redeemUrl
        ? `<p><a class="redeem" href="${escapeHtml(redeemUrl)}" rel="noopener noreferrer">Redeem</a></p>`
        : '<p>Redeem this code in the app.</p>',
    );
  }
  return page(`Gift: ${gift.creditsPerPortion} credits`, parts.join('\n'));
}

function sendPage(reply: FastifyReply, status: number, html: string) {
  return reply.status(status).headers(SECURITY_HEADERS).send(html);
}

/** GET /g/:code — the landing page a short link opens. Same lookup and rate limit as gifts.info. */
export function registerGiftPage(app: FastifyInstance): void {
  app.get<{ Params: { code: string } }>('/g/:code', async (request, reply) => {
    const { config, db } = app.deps;
    const code = request.params.code.slice(0, 64);
    try {
      const gift = await giftInfo(db, {
        code,
        client: clientNetworkOf(clientAddressOf(request)),
        limitPerMinute: config.giftInfoRateLimitPerMinute,
      });
      return sendPage(reply, 200, renderGiftPage(gift, redeemUrlOf(config.giftRedeemUrl, gift.code)));
    } catch (error) {
      if (!(error instanceof DomainError)) throw error;
      if (error.kind === 'too_many_requests') {
        reply.header('retry-after', '60');
        return sendPage(
          reply,
          429,
          page('Slow down', '<h1>Too many requests</h1><p>Try again in a minute.</p>'),
        );
      }
      if (error.kind === 'not_found') {
        return sendPage(
          reply,
          404,
          page('Gift not found', '<h1>Gift not found</h1><p>Check the code and try again.</p>'),
        );
      }
      throw error;
    }
  });
}
