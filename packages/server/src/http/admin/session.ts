import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/** Who is operating the console, as recorded in the audit table and the ledger rows an action writes. */
export interface Operator {
  /** `token`: the shared ADMIN_TOKEN; `jwt`: a user token carrying the admin role. */
  kind: 'token' | 'jwt';
  /** The token's subject, or the name given at a token login ('admin' when none). */
  id: string;
  /** For display (a JWT's name or email). */
  label: string;
}

/** The operator as one string: `jwt:<sub>` or `token:<name>`. */
export const operatorName = (operator: Operator) => `${operator.kind}:${operator.id}`;

/** A signed console session: what the cookie carries. */
export interface Session {
  operator: Operator;
  /** Seconds since the epoch. */
  expiresAt: number;
  /** Random per login: the CSRF token is derived from it. */
  sid: string;
  /** Token logins: a fingerprint of the ADMIN_TOKEN they were made with, so rotating it ends them. */
  tokenFingerprint?: string | undefined;
}

const b64 = (bytes: Buffer) => bytes.toString('base64url');

/**
 * Signs and checks session cookies and CSRF tokens with one HMAC-SHA256 key. Every comparison of a MAC is
 * constant-time (timingSafeEqual on equal-length digests).
 */
export class SessionSigner {
  private readonly key: Buffer;

  constructor(secret: string | Buffer) {
    this.key = typeof secret === 'string' ? Buffer.from(secret, 'utf8') : secret;
  }

  /** A signer with a random key: sessions last as long as the process (development without a secret). */
  static ephemeral(): SessionSigner {
    return new SessionSigner(randomBytes(32));
  }

  private mac(purpose: string, value: string): Buffer {
    return createHmac('sha256', this.key).update(purpose).update('\n').update(value).digest();
  }

  private matches(purpose: string, value: string, presented: string): boolean {
    const expected = this.mac(purpose, value);
    const given = Buffer.from(presented, 'base64url');
    return given.length === expected.length && timingSafeEqual(given, expected);
  }

  /** `<payload>.<mac>`, both base64url: the cookie value. */
  seal(session: Session): string {
    const payload = b64(
      Buffer.from(
        JSON.stringify({
          v: 1,
          k: session.operator.kind,
          i: session.operator.id,
          l: session.operator.label,
          e: session.expiresAt,
          s: session.sid,
          f: session.tokenFingerprint,
        }),
        'utf8',
      ),
    );
    return `${payload}.${b64(this.mac('session', payload))}`;
  }

  /** The session a cookie value carries, or undefined when it is forged, malformed or expired. */
  open(value: string | undefined, nowSeconds = Date.now() / 1000): Session | undefined {
    if (!value || value.length > 4096) return undefined;
    const [payload, mac, ...rest] = value.split('.');
    if (!payload || !mac || rest.length > 0 || !this.matches('session', payload, mac)) return undefined;
    let data: Record<string, unknown>;
    try {
      data = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Record<string, unknown>;
    } catch {
      return undefined;
    }
    const { v, k, i, l, e, s, f } = data;
    if (v !== 1 || (k !== 'token' && k !== 'jwt')) return undefined;
    if (typeof i !== 'string' || typeof l !== 'string' || typeof s !== 'string') return undefined;
    if (typeof e !== 'number' || e <= nowSeconds) return undefined;
    if (f !== undefined && typeof f !== 'string') return undefined;
    return { operator: { kind: k, id: i, label: l }, expiresAt: e, sid: s, tokenFingerprint: f };
  }

  /** The CSRF token of a session: every POST form of the console carries it. */
  csrfToken(session: Session): string {
    return b64(this.mac('csrf', session.sid));
  }

  checkCsrf(session: Session, presented: unknown): boolean {
    return (
      typeof presented === 'string' && presented.length < 200 && this.matches('csrf', session.sid, presented)
    );
  }

  /** Identifies an ADMIN_TOKEN without revealing it. */
  tokenFingerprint(token: string): string {
    return b64(this.mac('admin-token', token)).slice(0, 22);
  }
}

const digest = (value: string) => createHash('sha256').update(value, 'utf8').digest();

/** Constant-time check of a presented ADMIN_TOKEN (both hashed first: neither length nor prefix leaks). */
export function tokenMatches(configured: string | undefined, presented: string | undefined): boolean {
  if (!configured || !presented || presented.length > 1024) return false;
  return timingSafeEqual(digest(configured), digest(presented));
}

export const newSid = () => b64(randomBytes(18));
