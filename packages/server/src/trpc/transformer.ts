import { TRPCError } from '@trpc/server';
import superjson from 'superjson';

const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/** Finds the path of the first own key that could pollute a prototype when the input is copied. */
function forbiddenKeyPath(value: unknown, path: string[], depth: number): string | null {
  if (value === null || typeof value !== 'object' || depth > 64) return null;
  for (const key of Object.keys(value)) {
    if (FORBIDDEN_KEYS.has(key)) return [...path, key].join('.');
    const found = forbiddenKeyPath((value as Record<string, unknown>)[key], [...path, key], depth + 1);
    if (found) return found;
  }
  return null;
}

/**
 * superjson, with inputs checked before superjson copies them: its copy silently turns a "__proto__" key
 * into a prototype, so the key would vanish before validation could name it.
 */
export const transformer = {
  input: {
    serialize: (value: unknown) => superjson.serialize(value),
    deserialize: (value: unknown) => {
      const json = value !== null && typeof value === 'object' && 'json' in value ? value.json : value;
      const path = forbiddenKeyPath(json, [], 0);
      if (path) {
        throw new TRPCError({
          code: 'BAD_REQUEST',
          message: `Invalid input: ${path}: this key is not allowed`,
        });
      }
      try {
        // biome-ignore lint/suspicious/noExplicitAny: superjson's own signature
        return superjson.deserialize(value as any);
      } catch (cause) {
        // A meta that names paths the json does not have: superjson fails with a bare TypeError.
        throw new TRPCError({
          code: 'BAD_REQUEST',
          message: 'Invalid input: meta: not a superjson meta that fits this json',
          cause,
        });
      }
    },
  },
  output: superjson,
};
