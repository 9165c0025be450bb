import { z } from 'zod';

/** The most credits one call may move; far below 2^53 so sums stay exact. */
export const MAX_AMOUNT = 1_000_000_000_000;

/** Postgres text cannot hold NUL, and control characters have no business in identifiers. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point
const NO_CONTROL_CHARACTERS = /^[^\u0000-\u001f\u007f]*$/;
// biome-ignore lint/suspicious/noControlCharactersInRegex: refusing NUL is the point
const NO_NUL = /^[^\u0000]*$/;

export const amount = z
  .int({ error: 'must be a whole number of credits' })
  .positive({ error: 'must be greater than 0' })
  .max(MAX_AMOUNT, { error: `must be at most ${MAX_AMOUNT}` });

/** Free text: bounded, no NUL bytes. */
export const text = (max: number) =>
  z.string().max(max).regex(NO_NUL, { error: 'must not contain NUL characters' });

export const identifier = (max = 200) =>
  z.string().min(1).max(max).regex(NO_CONTROL_CHARACTERS, { error: 'must not contain control characters' });

export const userId = identifier(200);
export const appId = identifier(100);
export const guildId = identifier(200);
export const idempotencyKey = identifier(200);
export const description = text(500);
export const uuid = z.uuid();
/** Any JSON value; one instance, so the OpenAPI document can name it once. */
export const jsonValue = z.json();

const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);
const MAX_METADATA_BYTES = 4096;
const MAX_METADATA_DEPTH = 5;

function metadataProblem(value: unknown, depth: number): string | null {
  if (depth > MAX_METADATA_DEPTH) return `is nested deeper than ${MAX_METADATA_DEPTH} levels`;
  if (Array.isArray(value)) {
    for (const item of value) {
      const problem = metadataProblem(item, depth + 1);
      if (problem) return problem;
    }
    return null;
  }
  if (value !== null && typeof value === 'object') {
    for (const key of Object.keys(value)) {
      if (FORBIDDEN_KEYS.has(key)) return `must not use the key "${key}"`;
      if (key.includes('\u0000')) return 'keys must not contain NUL characters';
      const problem = metadataProblem((value as Record<string, unknown>)[key], depth + 1);
      if (problem) return problem;
    }
    return null;
  }
  if (typeof value === 'string' && value.includes('\u0000')) return 'must not contain NUL characters';
  return null;
}

/**
 * A small JSON object: bounded size and depth, no prototype-polluting keys, no NUL bytes. The raw input is
 * checked before zod copies it, so a "__proto__" key is seen rather than silently swallowed.
 */
export const metadata = z
  .unknown()
  .superRefine((value, ctx) => {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return;
    const problem = metadataProblem(value, 1);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
    else if (Buffer.byteLength(JSON.stringify(value), 'utf8') > MAX_METADATA_BYTES) {
      ctx.addIssue({ code: 'custom', message: `must be at most ${MAX_METADATA_BYTES} bytes as JSON` });
    }
  })
  .pipe(z.record(z.string(), jsonValue));

export const pageInput = z.strictObject({
  limit: z.int().min(1).max(100).default(20),
  cursor: uuid.optional(),
});
