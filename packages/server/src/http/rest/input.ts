import type { AnyTRPCProcedure } from '@trpc/server';
import { z } from 'zod';
import { appRouter } from '../../trpc/routers/_app.ts';
import type { RestRoute } from './routes.ts';

export interface RouteInput {
  /** The procedure's own input schema; undefined when the procedure takes no input. */
  schema: z.ZodType | undefined;
  /** JSON Schema of that input (io: input), for query coercion and the document. */
  jsonSchema: { properties?: Record<string, { type?: unknown }>; required?: string[] } | undefined;
  pathParams: string[];
}

/**
 * What a route's request must carry, read from its procedure. Throws at start-up when the table names a
 * path parameter the input does not have, so a misconfigured route never serves.
 */
export function routeInput(route: RestRoute): RouteInput {
  // At run time the router keeps its procedures flat, by dotted path.
  const procedures = appRouter._def.procedures as unknown as Record<string, AnyTRPCProcedure | undefined>;
  const procedure = procedures[route.procedure];
  if (!procedure) throw new Error(`REST route ${route.path}: no procedure ${route.procedure}`);
  const parsers = procedure._def.inputs;
  if (parsers.length > 1 || (parsers[0] !== undefined && !(parsers[0] instanceof z.ZodType))) {
    throw new Error(`REST route ${route.path}: ${route.procedure} must have at most one zod input`);
  }
  const schema = parsers[0] as z.ZodType | undefined;
  const jsonSchema = schema
    ? (z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as RouteInput['jsonSchema'])
    : undefined;
  const pathParams = [...route.path.matchAll(/:(\w+)/g)].map((match) => match[1] as string);
  for (const name of pathParams) {
    if (!jsonSchema?.properties?.[name]) {
      throw new Error(`REST route ${route.path}: ${route.procedure} has no input field "${name}"`);
    }
  }
  return { schema, jsonSchema, pathParams };
}

const INTEGER = /^-?(0|[1-9]\d*)$/;
const NUMBER = /^-?(0|[1-9]\d*)(\.\d+)?$/;

/**
 * Query strings carry text; a field the schema types as a number or boolean is converted when the text is
 * one, and left as it is otherwise so that validation names the field.
 */
export function coerceQueryValue(
  fieldSchema: { type?: unknown } | undefined,
  value: string | string[],
): unknown {
  if (typeof value !== 'string') return value;
  const type = fieldSchema?.type;
  // Integers as integers are written (no 5.0, no 007): `Number` would read 2.0000000000000001 as 2.
  if (type === 'integer' && INTEGER.test(value)) return Number(value);
  if (type === 'number' && NUMBER.test(value)) return Number(value);
  if (type === 'boolean' && (value === 'true' || value === 'false')) return value === 'true';
  return value;
}
