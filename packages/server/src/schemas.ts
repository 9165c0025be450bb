import { z } from 'zod';

/** The most credits one call may move; far below 2^53 so sums stay exact. */
export const MAX_AMOUNT = 1_000_000_000_000;

/** Postgres text cannot hold NUL, and control characters have no business in identifiers. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point
const NO_CONTROL_CHARACTERS = /^[^\u0000-\u001f\u007f]*$/;
// biome-ignore lint/suspicious/noControlCharactersInRegex: refusing NUL is the point
const NO_NUL = /^[^\u0000]*$/;
/**
 * A lone UTF-16 surrogate (half of a pair, e.g. "\ud800") is not Unicode: Postgres cannot store it in text or
 * jsonb (pg silently turns it into U+FFFD, jsonb refuses it), so it is refused at the edge. In a `u` regex a
 * lone surrogate is a code point of category Cs; a proper pair (an emoji) is one code point that is not.
 */
const WELL_FORMED = /^[^\p{Cs}]*$/u;
const LONE_SURROGATE = /\p{Cs}/u;
const WELL_FORMED_MESSAGE = 'must not contain lone UTF-16 surrogates (not valid Unicode)';

/** Characters that would change the meaning of a URL path segment (the guild membership URL). */
const PATH_UNSAFE = /[\s/\\?#%]/u;

export const amount = z
  .int({ error: 'must be a whole number of credits' })
  .positive({ error: 'must be greater than 0' })
  .max(MAX_AMOUNT, { error: `must be at most ${MAX_AMOUNT}` });

/** Free text: bounded, no NUL bytes, valid Unicode. */
export const text = (max: number) =>
  z
    .string()
    .max(max)
    .regex(NO_NUL, { error: 'must not contain NUL characters' })
    .regex(WELL_FORMED, { error: WELL_FORMED_MESSAGE });

export const identifier = (max = 200) =>
  z
    .string()
    .min(1)
    .max(max)
    .regex(NO_CONTROL_CHARACTERS, { error: 'must not contain control characters' })
    .regex(WELL_FORMED, { error: WELL_FORMED_MESSAGE });

/**
 * True when `id` can stand as one segment of a URL path as it is: not a dot segment ("." or ".." would be
 * resolved away) and none of "/", "\", "?", "#", "%" or whitespace (which split, cut or re-encode the path).
 */
export function isPathSafeId(id: string): boolean {
  return id !== '.' && id !== '..' && !PATH_UNSAFE.test(id);
}

/** An identifier that also goes into a URL path (the auth service's membership URL): see isPathSafeId. */
const pathIdentifier = (max: number) =>
  identifier(max).refine(isPathSafeId, {
    error: 'must not be "." or ".." nor contain "/", "\\", "?", "#", "%" or whitespace',
  });

export const userId = pathIdentifier(200);
export const appId = identifier(100);
export const guildId = pathIdentifier(200);
export const idempotencyKey = identifier(200).describe(
  'Scoped to the account: repeating it answers the first result — what was posted, or a refusal (too few credits, a spending limit) recorded under it, even after a top-up — and another payload under it is a 409 IDEMPOTENCY_CONFLICT. A new attempt takes a new key',
);
export const description = text(500);
export const uuid = z.uuid();
/** Any JSON value; one instance, so the OpenAPI document can name it once. */
export const jsonValue = z.json();

const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);
const MAX_METADATA_BYTES = 4096;
const MAX_METADATA_DEPTH = 5;

interface MetadataProblem {
  /** Where, below `metadata` (empty for the value itself or a key of it). */
  path: (string | number)[];
  message: string;
}

/** What a non-JSON value is, for the message: "a BigInt", "a Date", "undefined", "NaN". */
function describeNonJson(value: unknown): string {
  if (value === undefined) return 'undefined';
  if (typeof value === 'number') return String(value);
  if (typeof value === 'bigint') return 'a BigInt';
  if (typeof value === 'object' && value !== null) {
    const name = (value as { constructor?: { name?: unknown } }).constructor?.name;
    return typeof name === 'string' && name ? `a ${name}` : 'an object with a prototype';
  }
  return `a ${typeof value}`;
}

const isPlainObject = (value: object) => {
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
};

/** Why a string cannot be stored as jsonb text, or null. */
function textProblem(value: string): string | null {
  if (value.includes('\u0000')) return 'must not contain NUL characters';
  if (LONE_SURROGATE.test(value)) return WELL_FORMED_MESSAGE;
  return null;
}

/**
 * The first reason `value` is not plain, storable JSON: only strings, finite numbers, booleans, null, arrays
 * and plain objects (superjson can revive BigInt, Date, Map, Set, undefined, NaN… — none fits in jsonb), no
 * NUL or lone surrogate in any key or string, no prototype-polluting key, bounded depth.
 */
function metadataProblem(value: unknown, depth: number, path: (string | number)[]): MetadataProblem | null {
  if (depth > MAX_METADATA_DEPTH)
    return { path, message: `is nested deeper than ${MAX_METADATA_DEPTH} levels` };
  if (value === null || typeof value === 'boolean') return null;
  if (typeof value === 'string') {
    const problem = textProblem(value);
    return problem ? { path, message: problem } : null;
  }
  if (typeof value === 'number') {
    return Number.isFinite(value)
      ? null
      : { path, message: `must be JSON: ${describeNonJson(value)} is not` };
  }
  if (typeof value !== 'object' || (!Array.isArray(value) && !isPlainObject(value))) {
    return { path, message: `must be JSON: ${describeNonJson(value)} is not` };
  }
  if (Array.isArray(value)) {
    // Every index, holes of a sparse array included (they read as undefined, which JSON cannot carry).
    for (let index = 0; index < value.length; index++) {
      const problem = metadataProblem(value[index], depth + 1, [...path, index]);
      if (problem) return problem;
    }
    return null;
  }
  for (const key of Object.keys(value)) {
    if (FORBIDDEN_KEYS.has(key)) return { path, message: `must not use the key "${key}"` };
    const keyProblem = textProblem(key);
    if (keyProblem) return { path, message: `keys ${keyProblem}` };
    const problem = metadataProblem((value as Record<string, unknown>)[key], depth + 1, [...path, key]);
    if (problem) return problem;
  }
  return null;
}

/**
 * A small JSON object: bounded size and depth, plain JSON values only, no prototype-polluting keys, no NUL
 * bytes or lone surrogates. The raw input is checked before zod copies it, so a "__proto__" key is seen
 * rather than silently swallowed; a problem is reported at its path (e.g. `metadata.list.1`).
 */
export const metadata = z
  .unknown()
  .superRefine((value, ctx) => {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return;
    const problem = metadataProblem(value, 1, []);
    if (problem) ctx.addIssue({ code: 'custom', message: problem.message, path: problem.path });
    else if (Buffer.byteLength(JSON.stringify(value), 'utf8') > MAX_METADATA_BYTES) {
      ctx.addIssue({ code: 'custom', message: `must be at most ${MAX_METADATA_BYTES} bytes as JSON` });
    }
  })
  .pipe(z.record(z.string(), jsonValue));

export const pageInput = z.strictObject({
  limit: z.int().min(1).max(100).default(20),
  cursor: uuid.optional(),
});
