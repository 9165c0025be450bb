import type { FastifyReply } from 'fastify';
import { escapeHtml } from '../gift-page.ts';

/**
 * Markup that is already safe. Everything else interpolated into `html` is escaped, so a page is built
 * without a single call to remember: user text (descriptions, gift messages, metadata, ids) can only ever
 * end up as text.
 */
export class SafeHtml {
  constructor(readonly value: string) {}
  toString(): string {
    return this.value;
  }
}

export type Html = SafeHtml | string | number | boolean | null | undefined | Html[];

function render(value: unknown): string {
  if (value instanceof SafeHtml) return value.value;
  if (Array.isArray(value)) return value.map(render).join('');
  if (value === null || value === undefined || value === false) return '';
  if (value instanceof Date) return escapeHtml(value.toISOString());
  return escapeHtml(String(value));
}

/** The one way console markup is written: interpolations are escaped unless they are SafeHtml themselves. */
export function html(strings: TemplateStringsArray, ...values: Html[] | unknown[]): SafeHtml {
  let out = strings[0] ?? '';
  for (let index = 0; index < values.length; index++) {
    out += render(values[index]) + (strings[index + 1] ?? '');
  }
  return new SafeHtml(out);
}

/** A console path with each segment encoded and an optional query (entries with undefined/'' left out). */
export function adminPath(
  segments: string[],
  query: Record<string, string | number | undefined | null> = {},
): string {
  const path = `/admin${segments.map((segment) => `/${encodeURIComponent(segment)}`).join('')}`;
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== '') search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `${path}?${text}` : path;
}

/**
 * Scripts only from this server (the chart library and console.js), styles only from its stylesheets, forms
 * only to itself, no frames, no plugins. Even if escaping failed somewhere, injected markup could run nothing.
 */
export const CONSOLE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "form-action 'self'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join('; ');

export const PAGE_HEADERS = {
  'content-type': 'text/html; charset=utf-8',
  'content-security-policy': CONSOLE_CSP,
  'x-content-type-options': 'nosniff',
  // Not no-referrer: under it a browser sends `Origin: null` with form posts, and the console checks Origin.
  'referrer-policy': 'same-origin',
  'x-frame-options': 'DENY',
  'cache-control': 'no-store',
} as const;

export interface LayoutOptions {
  title: string;
  /** The signed-in operator and their CSRF token (for the sign-out form); absent on the login page. */
  operator?: { label: string; csrf: string } | undefined;
  /** Load the chart library and console.js. */
  charts?: boolean;
}

export function layout(options: LayoutOptions, body: Html): string {
  const scripts = options.charts
    ? html`<script src="/admin/assets/uplot.js" defer></script>
<script src="/admin/assets/console.js" defer></script>`
    : '';
  const nav = options.operator
    ? html`<nav>
<a href="/admin">Search</a>
<a href="/admin/audit">Audit log</a>
<span class="operator" data-field="operator">${options.operator.label}</span>
<form method="post" action="/admin/logout" class="inline">
<input type="hidden" name="_csrf" value="${options.operator.csrf}">
<button type="submit">Sign out</button>
</form>
</nav>`
    : '';
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<link rel="icon" href="data:,">
<title>${options.title} · mana-credits console</title>
<link rel="stylesheet" href="/admin/assets/console.css">
${options.charts ? html`<link rel="stylesheet" href="/admin/assets/uplot.css">` : ''}
${scripts}
</head>
<body>
<header><a class="brand" href="/admin">mana-credits console</a>${nav}</header>
<main>
${body}
</main>
</body>
</html>
`.value;
}

export function sendPage(reply: FastifyReply, status: number, page: string) {
  return reply.status(status).headers(PAGE_HEADERS).send(page);
}

/** A small page saying what went wrong, with a way back. */
export function messagePage(
  title: string,
  message: string,
  options: { back?: string; operator?: LayoutOptions['operator'] } = {},
): string {
  return layout(
    { title, operator: options.operator },
    html`<h1>${title}</h1>
<p class="error" data-field="error">${message}</p>
${options.back ? html`<p><a href="${options.back}">Back</a></p>` : ''}`,
  );
}
