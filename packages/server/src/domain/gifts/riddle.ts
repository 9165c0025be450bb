import { createHash, randomBytes, type ScryptOptions, scrypt, timingSafeEqual } from 'node:crypto';

// ~16 MiB and a few tens of milliseconds per check: cheap for one person, slow for a guessing machine.
const COST = { N: 16384, r: 8, p: 1 } as const;
const KEY_LENGTH = 32;
const SALT_LENGTH = 16;

function scryptAsync(secret: string, salt: Buffer, options: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(secret, salt, KEY_LENGTH, options, (error, key) => (error ? reject(error) : resolve(key)));
  });
}

/**
 * Unicode NFKC, case folded, trimmed, inner whitespace collapsed: "  Die  ERDE " and "die erde" match, and so do
 * "Straße" and "STRASSE" (upper case first, then lower: what lower case alone misses), recomposed afterwards
 * ("J̌", the capital of "ǰ", lowers to a decomposed form).
 */
export function normaliseRiddleAnswer(answer: string): string {
  return answer.normalize('NFKC').toUpperCase().toLowerCase().normalize('NFKC').trim().replace(/\s+/g, ' ');
}

/** How answers hashed as `scrypt$…` (before case folding) were normalised: they are checked the same way. */
function normaliseRiddleAnswerV1(answer: string): string {
  return answer.normalize('NFKC').toLowerCase().trim().replace(/\s+/g, ' ');
}

/** A salted scrypt hash of the normalised answer, self-describing: scrypt2$N$r$p$salt$hash. */
export async function hashRiddleAnswer(answer: string): Promise<string> {
  const salt = randomBytes(SALT_LENGTH);
  const key = await scryptAsync(normaliseRiddleAnswer(answer), salt, COST);
  return ['scrypt2', COST.N, COST.r, COST.p, salt.toString('base64url'), key.toString('base64url')].join('$');
}

/** Checks an answer against a stored hash in constant time; a malformed hash never matches. */
export async function verifyRiddleAnswer(answer: string, stored: string): Promise<boolean> {
  const [scheme, n, r, p, salt, expected] = stored.split('$');
  const normalise =
    scheme === 'scrypt2' ? normaliseRiddleAnswer : scheme === 'scrypt' ? normaliseRiddleAnswerV1 : undefined;
  if (!normalise || !salt || !expected) return false;
  const key = await scryptAsync(normalise(answer), Buffer.from(salt, 'base64url'), {
    N: Number(n),
    r: Number(r),
    p: Number(p),
  });
  const wanted = Buffer.from(expected, 'base64url');
  return wanted.length === key.length && timingSafeEqual(wanted, key);
}

/**
 * A deterministic but slow stand-in for the answer inside an idempotency fingerprint: the request hash is
 * stored in the ledger, and a fast hash of the answer there would make the riddle cheap to guess offline.
 */
export async function riddleAnswerFingerprint(answer: string, scope: string): Promise<string> {
  const salt = createHash('sha256').update(`gift-answer-fingerprint\n${scope}`).digest();
  // The first normalisation, kept: a changed fingerprint would turn the replay of a create into a conflict.
  return (await scryptAsync(normaliseRiddleAnswerV1(answer), salt, COST)).toString('base64url');
}
