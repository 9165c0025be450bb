import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { sendError } from '../error-reply.ts';
import { registerAssets } from './assets.ts';
import {
  type AdminAuth,
  authenticate,
  checkCredential,
  endSession,
  operatorNameOf,
  sameOrigin,
  startSession,
} from './auth.ts';
import { html, layout, messagePage, sendPage } from './html.ts';
import { registerConsoleRoutes } from './routes.ts';
import { SessionSigner } from './session.ts';

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by the console's guard on every route but the public ones. */
    adminAuth: AdminAuth | null;
  }
}

/** What the console answers without credentials: the sign-in page and the stylesheet it uses. */
export const PUBLIC_ADMIN_ROUTES: ReadonlySet<string> = new Set([
  '/admin/login',
  '/admin/assets/console.css',
]);

/** Form posts are small: a reason, an amount, a few ids. */
const FORM_BODY_LIMIT = 64 * 1024;

type FormBody = Record<string, string | undefined>;

/** A console path to return to after signing in: only paths of the console itself. */
export function safeNext(value: unknown): string {
  return typeof value === 'string' &&
    /^\/admin(?:[/?]|$)/.test(value) &&
    // Printable ASCII only: it goes into a Location header, which cannot carry anything else.
    /^[\x21-\x7e]*$/.test(value) &&
    !value.includes('\\')
    ? value
    : '/admin';
}

const wantsHtml = (request: FastifyRequest) =>
  (request.method === 'GET' || request.method === 'HEAD') &&
  !request.headers.authorization &&
  String(request.headers.accept ?? '').includes('text/html');

/** What the layout shows of the operator (and the CSRF token its sign-out form carries). */
export function operatorView(request: FastifyRequest, signer: SessionSigner | undefined) {
  const auth = request.adminAuth;
  if (!auth) return undefined;
  const csrf = auth.session && signer ? signer.csrfToken(auth.session) : '';
  return { label: auth.operator.label, csrf };
}

function loginPage(options: { next: string; error?: string; disabled?: boolean }): string {
  return layout(
    { title: 'Sign in' },
    html`<h1>Operator console</h1>
${options.error ? html`<p class="error" data-field="error">${options.error}</p>` : ''}
${
  options.disabled
    ? html`<p class="error">Browser sign-in is off: set ADMIN_SESSION_SECRET (production). Scripts may still call
the console with <code>Authorization: Bearer</code>.</p>`
    : html`<form method="post" action="/admin/login" class="stack">
<label>Admin token or a user JWT with the admin role
<input type="password" name="credential" required autocomplete="off" autofocus></label>
<label>Your name (recorded with admin-token actions)
<input type="text" name="name" maxlength="64" pattern="[A-Za-z0-9._@+\\-]{1,64}" autocomplete="username"></label>
<input type="hidden" name="next" value="${options.next}">
<button type="submit">Sign in</button>
</form>`
}`,
  );
}

async function refuse(request: FastifyRequest, reply: FastifyReply, reason: string | undefined) {
  if (reason === 'unavailable') {
    reply.header('retry-after', '5');
    return sendError(request, reply, 503, {
      message: 'The key set of the auth service is unreachable',
      reason: 'KEY_SET_UNAVAILABLE',
    });
  }
  if (reason === 'not_admin') {
    return sendError(request, reply, 403, {
      message: 'This token does not carry the admin role',
      reason: 'ADMIN_ROLE_REQUIRED',
    });
  }
  if (reason === undefined && wantsHtml(request)) {
    return reply.redirect(`/admin/login?next=${encodeURIComponent(safeNext(request.url))}`, 303);
  }
  reply.header('www-authenticate', 'Bearer realm="mana-credits admin"');
  return sendError(request, reply, 401, {
    message: 'The operator console needs an admin token, an admin JWT or a console session',
    reason: 'ADMIN_AUTH_REQUIRED',
  });
}

/**
 * The operator console under /admin (register with that prefix). Every route but PUBLIC_ADMIN_ROUTES is
 * behind the guard: `Authorization: Bearer <ADMIN_TOKEN or admin JWT>`, or the signed session cookie a
 * sign-in sets; a cookie-authenticated POST must also carry its session's CSRF token.
 */
export async function adminConsole(admin: FastifyInstance): Promise<void> {
  const { deps } = admin;
  const { config } = deps;
  const secret = config.admin.sessionSecret;
  const signer = secret
    ? new SessionSigner(secret)
    : config.nodeEnv === 'production'
      ? undefined
      : SessionSigner.ephemeral();
  if (!signer) admin.log.warn('ADMIN_SESSION_SECRET is unset: browser sign-in to /admin is off');

  admin.addContentTypeParser(
    'application/x-www-form-urlencoded',
    { parseAs: 'string', bodyLimit: FORM_BODY_LIMIT },
    (_request, body, done) => {
      const form: FormBody = Object.create(null);
      for (const [name, value] of new URLSearchParams(String(body))) {
        // A field given twice (two amounts, two CSRF tokens) is refused, not guessed.
        if (name in form) {
          const error = Object.assign(new Error(`${name}: given more than once`), {
            statusCode: 400,
            code: 'VALIDATION',
          });
          done(error, undefined);
          return;
        }
        form[name] = value;
      }
      done(null, form);
    },
  );
  admin.decorateRequest('adminAuth', null);

  admin.addHook('onRequest', async (request, reply) => {
    if (PUBLIC_ADMIN_ROUTES.has(request.routeOptions.url ?? '')) return;
    const auth = await authenticate(request, deps, signer);
    if (auth && 'operator' in auth) {
      request.adminAuth = auth;
      return;
    }
    return refuse(request, reply, auth?.reason);
  });

  admin.addHook('preHandler', async (request, reply) => {
    const auth = request.adminAuth;
    if (request.method !== 'POST' || auth?.via !== 'session' || !auth.session || !signer) return;
    const body = (request.body ?? {}) as FormBody;
    if (!sameOrigin(request, config.baseUrl) || !signer.checkCsrf(auth.session, body._csrf)) {
      return sendPage(
        reply,
        403,
        messagePage(
          'Refused',
          'This form is stale or did not come from the console: reload the page and try again.',
          {
            back: '/admin',
            operator: operatorView(request, signer),
          },
        ),
      );
    }
  });

  registerAssets(admin);

  admin.get<{ Querystring: { next?: string } }>('/login', async (request, reply) =>
    sendPage(reply, 200, loginPage({ next: safeNext(request.query.next), disabled: !signer })),
  );

  admin.post<{ Body: FormBody }>('/login', async (request, reply) => {
    const body = (request.body ?? {}) as FormBody;
    const next = safeNext(body.next);
    if (!signer) return sendPage(reply, 503, loginPage({ next, disabled: true }));
    // Login CSRF: a page elsewhere must not sign the browser into someone else's session.
    if (!sameOrigin(request, config.baseUrl)) {
      return sendPage(reply, 403, loginPage({ next, error: 'Sign in from the console itself.' }));
    }
    const credential = typeof body.credential === 'string' ? body.credential.trim() : '';
    const check = credential
      ? await checkCredential(deps, credential, operatorNameOf(body.name))
      : ({ ok: false, reason: 'refused' } as const);
    if (!check.ok) {
      request.log.warn({ reason: check.reason }, 'admin sign-in refused');
      const message =
        check.reason === 'unavailable'
          ? 'The auth service cannot be reached; try again.'
          : check.reason === 'not_admin'
            ? 'This token does not carry the admin role.'
            : 'Not accepted.';
      return sendPage(reply, check.reason === 'unavailable' ? 503 : 401, loginPage({ next, error: message }));
    }
    startSession(request, reply, deps, signer, check);
    request.log.info({ operator: `${check.operator.kind}:${check.operator.id}` }, 'admin signed in');
    return reply.redirect(next, 303);
  });

  admin.post('/logout', async (request, reply) => {
    await endSession(request, reply, deps, request.adminAuth?.session);
    return reply.redirect('/admin/login', 303);
  });

  registerConsoleRoutes(admin, signer);
}
