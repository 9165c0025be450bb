import type { FastifyInstance } from 'fastify';

export const ADMIN_TOKEN = 'admin-token-for-tests-0123456789abcdef';
export const ADMIN_SESSION_SECRET = 'admin-session-secret-for-tests-0123456789';

/** The console's settings for a test server. */
export const ADMIN_ENV = { ADMIN_TOKEN, ADMIN_SESSION_SECRET } as const;

export interface AdminRoute {
  /** Fastify syntax, e.g. /admin/users/:userId */
  url: string;
  methods: string[];
}

/**
 * Every route of the console, read from the app's own route tree (printRoutes, as cors.test.ts does), so a
 * route added tomorrow is covered by the "nothing without credentials" test without touching it.
 */
export function adminRoutesOf(app: FastifyInstance): AdminRoute[] {
  const routes: AdminRoute[] = [];
  const stack: string[] = [];
  for (const line of app.printRoutes({ commonPrefix: false }).split('\n')) {
    const node = /^((?:│ {3}| {4})*)[├└]── (\S+)(?: \(([^)]*)\))?$/.exec(line);
    if (!node) continue;
    const depth = node[1]!.length / 4;
    const url = (stack[depth - 1] ?? '') + node[2]!.split('|')[0];
    stack[depth] = url;
    stack.length = depth + 1;
    if (node[3] && /^\/admin(\/|$)/.test(url)) routes.push({ url, methods: node[3].split(', ') });
  }
  return routes;
}

/** A concrete path for a route: each parameter filled in. */
export const adminPathOf = (url: string) => url.replace(/:[A-Za-z]+/g, (name) => `${name.slice(1)}-1`);

/** The value of one cookie from a response's set-cookie header(s). */
export function cookieFrom(setCookie: string | string[] | undefined, name: string): string | undefined {
  for (const line of [setCookie ?? []].flat()) {
    const [pair] = line.split(';');
    const index = pair?.indexOf('=') ?? -1;
    if (pair && index > 0 && pair.slice(0, index) === name) return pair.slice(index + 1);
  }
  return undefined;
}

/** The value of a hidden form field named `name` in a page (the first one). */
export function hiddenField(page: string, name: string): string {
  const match = new RegExp(`name="${name}" value="([^"]*)"`).exec(page);
  if (!match) throw new Error(`no hidden field ${name} in the page`);
  return match[1]!.replaceAll('&amp;', '&').replaceAll('&quot;', '"');
}

export const form = (fields: Record<string, string | number | undefined>) =>
  new URLSearchParams(
    Object.entries(fields)
      .filter(([, value]) => value !== undefined)
      .map(([name, value]): [string, string] => [name, String(value)]),
  ).toString();
