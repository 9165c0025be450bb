import { isAdminSessionRevoked, revokeAdminSession } from '@mana-credits/db';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { InvalidTokenError, KeySetUnavailableError } from '../../auth/jwt.ts';
import type { AppDeps } from '../../deps.ts';
import { bearerTokenOf } from '../../trpc/context.ts';
import { newSid, type Operator, type Session, type SessionSigner, tokenMatches } from './session.ts';

export const SESSION_COOKIE = 'mana_admin';

/** How a request to the console is authenticated. */
export interface AdminAuth {
  operator: Operator;
  /** `bearer`: an Authorization header (scripts; no CSRF token needed, browsers never add it by themselves). */
  via: 'bearer' | 'session';
  session?: Session | undefined;
}

export type CredentialCheck =
  | { ok: true; operator: Operator; expiresAt?: number | undefined }
  | { ok: false; reason: 'refused' | 'not_admin' | 'unavailable' };

/** Names an operator may give at a token login (or in X-Admin-Operator): recorded in the audit. */
const OPERATOR_NAME = /^[A-Za-z0-9._@+-]{1,64}$/;

export function operatorNameOf(value: unknown): string | undefined {
  return typeof value === 'string' && OPERATOR_NAME.test(value.trim()) ? value.trim() : undefined;
}

/** True when the token's claims carry the configured admin role (a string claim, or one entry of an array). */
export function hasAdminRole(
  claims: Readonly<Record<string, unknown>> | undefined,
  claim: string,
  value: string,
) {
  const held = claims?.[claim];
  return held === value || (Array.isArray(held) && held.includes(value));
}

/**
 * Checks one credential: the ADMIN_TOKEN (constant-time), else a user JWT verified by the server's own JWKS
 * verifier, which must carry the admin role claim. `name` names a token operator (default `admin`).
 */
export async function checkCredential(
  deps: Pick<AppDeps, 'config' | 'verifyUserToken'>,
  credential: string,
  name?: string,
): Promise<CredentialCheck> {
  const { admin } = deps.config;
  if (tokenMatches(admin.token, credential)) {
    const id = name ?? 'admin';
    return { ok: true, operator: { kind: 'token', id, label: `${id} (admin token)` } };
  }
  try {
    const user = await deps.verifyUserToken(credential);
    if (!hasAdminRole(user.claims, admin.roleClaim, admin.roleValue))
      return { ok: false, reason: 'not_admin' };
    const exp = user.claims?.exp;
    return {
      ok: true,
      operator: { kind: 'jwt', id: user.id, label: user.name ?? user.email ?? user.id },
      expiresAt: typeof exp === 'number' ? exp : undefined,
    };
  } catch (error) {
    if (error instanceof KeySetUnavailableError) return { ok: false, reason: 'unavailable' };
    if (error instanceof InvalidTokenError) return { ok: false, reason: 'refused' };
    throw error;
  }
}

export function cookieOf(request: FastifyRequest, name: string): string | undefined {
  const header = request.headers.cookie;
  if (typeof header !== 'string') return undefined;
  for (const part of header.split(';')) {
    const index = part.indexOf('=');
    if (index > 0 && part.slice(0, index).trim() === name) return part.slice(index + 1).trim();
  }
  return undefined;
}

/** Secure cookies whenever the console is reached over https (directly, or as BASE_URL says). */
export const isHttps = (request: FastifyRequest, baseUrl: string) =>
  request.protocol === 'https' || baseUrl.startsWith('https://');

function cookieHeader(request: FastifyRequest, baseUrl: string, value: string, maxAgeSeconds: number) {
  const attributes = [`${SESSION_COOKIE}=${value}`, 'Path=/admin', 'HttpOnly', 'SameSite=Strict'];
  attributes.push(`Max-Age=${Math.max(0, Math.floor(maxAgeSeconds))}`);
  if (isHttps(request, baseUrl)) attributes.push('Secure');
  return attributes.join('; ');
}

/** Starts a session for an operator whose credential was accepted: sets the signed cookie. */
export function startSession(
  request: FastifyRequest,
  reply: FastifyReply,
  deps: Pick<AppDeps, 'config'>,
  signer: SessionSigner,
  check: Extract<CredentialCheck, { ok: true }>,
): Session {
  const now = Math.floor(Date.now() / 1000);
  const { admin, baseUrl } = deps.config;
  let expiresAt = now + admin.sessionMinutes * 60;
  if (check.expiresAt !== undefined) expiresAt = Math.min(expiresAt, check.expiresAt);
  const session: Session = {
    operator: check.operator,
    expiresAt,
    sid: newSid(),
    tokenFingerprint:
      check.operator.kind === 'token' && admin.token ? signer.tokenFingerprint(admin.token) : undefined,
  };
  reply.header('set-cookie', cookieHeader(request, baseUrl, signer.seal(session), expiresAt - now));
  return session;
}

/** Signs out: the session is revoked in the database (a copy of its cookie no longer works) and the cookie cleared. */
export async function endSession(
  request: FastifyRequest,
  reply: FastifyReply,
  deps: Pick<AppDeps, 'config' | 'db'>,
  session: Session | undefined,
) {
  if (session) await revokeAdminSession(deps.db, session.sid, new Date(session.expiresAt * 1000));
  reply.header('set-cookie', cookieHeader(request, deps.config.baseUrl, '', 0));
}

/** The session of the request's cookie, when it is genuine, current, and (token logins) of today's token. */
export function sessionOf(
  request: FastifyRequest,
  deps: Pick<AppDeps, 'config'>,
  signer: SessionSigner | undefined,
): Session | undefined {
  if (!signer) return undefined;
  const session = signer.open(cookieOf(request, SESSION_COOKIE));
  if (!session) return undefined;
  if (session.operator.kind === 'token') {
    const token = deps.config.admin.token;
    if (!token || session.tokenFingerprint !== signer.tokenFingerprint(token)) return undefined;
  }
  return session;
}

/**
 * Who is calling: an `Authorization: Bearer` credential (checked on every request, never falling back to the
 * cookie when present), else the session cookie. Undefined when neither is there.
 */
export async function authenticate(
  request: FastifyRequest,
  deps: Pick<AppDeps, 'config' | 'db' | 'verifyUserToken'>,
  signer: SessionSigner | undefined,
): Promise<AdminAuth | Extract<CredentialCheck, { ok: false }> | undefined> {
  const authorization = request.headers.authorization;
  if (typeof authorization === 'string') {
    const bearer = bearerTokenOf(authorization);
    if (!bearer) return { ok: false, reason: 'refused' };
    const name = operatorNameOf(request.headers['x-admin-operator']);
    const check = await checkCredential(deps, bearer, name);
    return check.ok ? { operator: check.operator, via: 'bearer' } : check;
  }
  if (!sessionMayBeUsed(request, deps.config.baseUrl)) return undefined;
  const session = sessionOf(request, deps, signer);
  // A session its operator signed out of is over, on every instance, even for a copy of its cookie.
  if (!session || (await isAdminSessionRevoked(deps.db, session.sid))) return undefined;
  return { operator: session.operator, via: 'session', session };
}

/**
 * The cookie only counts for the console's own pages and a person's navigations. SameSite=Strict keeps it off
 * cross-site requests, but a sibling origin of the same site (an app on CORS_ORIGINS, perhaps with
 * CORS_CREDENTIALS) could otherwise fetch a console page with it and read the page, CSRF token included.
 * So a request from another origin (`Origin`), or a non-navigation from anywhere but this origin
 * (`Sec-Fetch-Site`/`Sec-Fetch-Mode`), is treated as carrying no session.
 */
export function sessionMayBeUsed(request: FastifyRequest, baseUrl: string): boolean {
  const site = request.headers['sec-fetch-site'];
  const mode = request.headers['sec-fetch-mode'];
  if (typeof site === 'string' && site !== 'same-origin' && site !== 'none' && mode !== 'navigate')
    return false;
  const origin = request.headers.origin;
  return typeof origin !== 'string' || isOwnOrigin(request, baseUrl, origin);
}

const isOwnOrigin = (request: FastifyRequest, baseUrl: string, origin: string) =>
  origin === `${request.protocol}://${request.host}` || origin === new URL(baseUrl).origin;

/**
 * A cookie-authenticated POST must come from a console page: the CSRF token of its session in the form, and
 * (where the browser says) this origin. SameSite=Strict already keeps the cookie off cross-site requests.
 */
export function sameOrigin(request: FastifyRequest, baseUrl: string): boolean {
  const site = request.headers['sec-fetch-site'];
  if (typeof site === 'string' && site !== 'same-origin' && site !== 'none') return false;
  const origin = request.headers.origin;
  return typeof origin !== 'string' || isOwnOrigin(request, baseUrl, origin);
}
