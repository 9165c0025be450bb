import { createRemoteJWKSet, errors, type JWTPayload, type JWTVerifyGetKey, jwtVerify } from 'jose';
import { identifier, text } from '../schemas.ts';

export interface AuthUser {
  id: string;
  email: string | null;
  /**
   * The token's `email_verified` claim: true or false (also as the strings "true"/"false"), null when the
   * token has no such claim. Any other value counts as false: a claim that cannot be read verifies nothing.
   */
  emailVerified: boolean | null;
  name: string | null;
  role: string | null;
  /** Every claim of the verified token (the operator console reads its configurable role claim here). */
  claims?: Readonly<JWTPayload>;
}

export type VerifyUserToken = (token: string) => Promise<AuthUser>;

export class InvalidTokenError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'InvalidTokenError';
  }
}

/** The auth service could not be asked for its keys: not the caller's fault, so not a 401. */
export class KeySetUnavailableError extends Error {
  constructor(options?: { cause?: unknown }) {
    super('The key set of the auth service is unreachable', options);
    this.name = 'KeySetUnavailableError';
  }
}

const ALGORITHMS = ['EdDSA', 'ES256', 'RS256'];

export interface JwtVerifierOptions {
  jwksUrl: string | undefined;
  issuer: string | undefined;
  audience: string;
  /** For tests: a key set other than the remote one. */
  keySet?: JWTVerifyGetKey;
}

/**
 * What the key set throws when the token names no key it can use: the token's fault (401). Anything else it
 * throws — an answer other than 200, a redirect, a body that is not a key set, a timeout, a network failure —
 * means the keys could not be had: the auth service's fault (503), never a reason to tell a holder of a good
 * token that it is bad (clients sign users out on 401).
 */
const TOKEN_KEY_ERRORS = [
  errors.JWKSNoMatchingKey,
  errors.JWKSMultipleMatchingKeys,
  errors.JOSENotSupported,
  errors.JOSEAlgNotAllowed,
];

function keysOrUnavailable(keySet: JWTVerifyGetKey): JWTVerifyGetKey {
  return async (header, token) => {
    try {
      return await keySet(header, token);
    } catch (error) {
      if (TOKEN_KEY_ERRORS.some((type) => error instanceof type)) throw error;
      throw new KeySetUnavailableError({ cause: error });
    }
  };
}

const subject = identifier(200);
const claim = text(1000).min(1);

/** A text claim we can keep (show, store, send to Stripe); one that Postgres could not store counts as absent. */
const claimText = (payload: JWTPayload, name: string) => {
  const value = claim.safeParse(payload[name]);
  return value.success ? value.data : null;
};

function emailVerifiedClaim(payload: JWTPayload): boolean | null {
  const value = payload.email_verified;
  if (value === undefined || value === null) return null;
  return value === true || value === 'true';
}

/**
 * Verifies user tokens against one cached remote key set (jose refetches it on an unknown kid, rate
 * limited). Algorithms are pinned, issuer and audience are checked and exp is required.
 */
export function createJwtVerifier(options: JwtVerifierOptions): VerifyUserToken {
  const source =
    options.keySet ??
    (options.jwksUrl
      ? createRemoteJWKSet(new URL(options.jwksUrl), { timeoutDuration: 5000, cooldownDuration: 30_000 })
      : undefined);
  const keySet = source && keysOrUnavailable(source);
  return async (token) => {
    if (!keySet || !options.issuer) throw new InvalidTokenError('User authentication is not configured');
    try {
      const { payload } = await jwtVerify(token, keySet, {
        algorithms: ALGORITHMS,
        issuer: options.issuer,
        audience: options.audience,
        requiredClaims: ['exp', 'sub'],
      });
      // The subject is the account id: no control characters, valid Unicode, at most 200 characters.
      const sub = subject.safeParse(payload.sub);
      if (!sub.success) throw new InvalidTokenError('Token has no usable subject');
      const id = sub.data;
      return {
        id,
        email: claimText(payload, 'email'),
        emailVerified: emailVerifiedClaim(payload),
        name: claimText(payload, 'name'),
        role: claimText(payload, 'role'),
        claims: payload,
      };
    } catch (error) {
      if (error instanceof InvalidTokenError || error instanceof KeySetUnavailableError) throw error;
      if (error instanceof errors.JOSEError) {
        throw new InvalidTokenError('Invalid or expired token', { cause: error });
      }
      throw new KeySetUnavailableError({ cause: error });
    }
  };
}
