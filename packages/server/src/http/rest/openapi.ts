import { z } from 'zod';
import { metadata } from '../../schemas.ts';
import { routeInput } from './input.ts';
import type { RestRoute } from './routes.ts';
import { namedSchemas } from './views.ts';

type JsonSchema = Record<string, unknown> & {
  properties?: Record<string, unknown>;
  required?: string[];
};
export type OpenApiDocument = Record<string, unknown> & {
  paths: Record<string, Record<string, unknown>>;
  components: { schemas: Record<string, JsonSchema>; securitySchemes: Record<string, unknown> };
};

const ref = (id: string) => `#/components/schemas/${id}`;

const ERROR_DESCRIPTIONS: Record<number, string> = {
  400: 'Invalid input: reason VALIDATION, details.issues names each field (BAD_URL: a path with bad percent-encoding)',
  401: 'Missing or invalid credentials',
  402: 'Insufficient credits: reason INSUFFICIENT_CREDITS (INSUFFICIENT_POOL_CREDITS for a pool), details { required, available }. With an idempotency key the refusal is recorded under it: the same key answers this refusal again, even after a top-up (a new attempt takes a new key)',
  403: 'Not allowed',
  404: 'Not found',
  409: 'The idempotency key was used with another payload (IDEMPOTENCY_CONFLICT), or another conflict',
  412: 'A precondition failed, e.g. a spending limit (recorded under the idempotency key like a 402)',
  414: 'A path parameter is longer than 5,000 characters (URL_TOO_LONG)',
  429: 'Too many requests',
  503: 'A dependency is unavailable; retry later (with the same idempotency key)',
};

const SECURITY = {
  user: [{ bearerAuth: [] }],
  service: [{ serviceKey: [] }],
  public: [],
} as const;

/** 'internal.credits.use' → 'InternalCreditsUse' */
const pascal = (path: string) =>
  path
    .split('.')
    .map((part) => part.charAt(0).toUpperCase() + part.slice(1))
    .join('');

const isDateTime = (schema: unknown) =>
  typeof schema === 'object' && schema !== null && (schema as { format?: unknown }).format === 'date-time';

/**
 * JSON Schema for the document: dates are ISO strings on the wire, and the metadata field (checked as raw
 * input before it is parsed, so its input side is `unknown`) is documented as the JSON object it must be.
 */
function documentOverride(ctx: { zodSchema: z.core.$ZodTypes; jsonSchema: z.core.JSONSchema.BaseSchema }) {
  if (ctx.zodSchema._zod.def.type === 'date')
    Object.assign(ctx.jsonSchema, { type: 'string', format: 'date-time' });
  // An instant input (a Date over tRPC, or an ISO string) is one date-time string on the wire.
  const { anyOf } = ctx.jsonSchema;
  if (anyOf && anyOf.length > 1 && anyOf.every((member) => isDateTime(member))) {
    delete ctx.jsonSchema.anyOf;
    Object.assign(ctx.jsonSchema, { type: 'string', format: 'date-time' });
  }
  if (ctx.zodSchema === metadata) {
    Object.assign(ctx.jsonSchema, {
      type: 'object',
      additionalProperties: { $ref: ref('JsonValue') },
      description: 'A JSON object: at most 4096 bytes as JSON, nested at most 5 levels',
    });
  }
}

/** Converts every schema in `named` at once, so shared and recursive pieces become $refs between them. */
function componentsOf(named: Map<z.ZodType, string>, io: 'input' | 'output'): Record<string, JsonSchema> {
  const registry = z.registry<{ id: string }>();
  for (const [schema, id] of named) registry.add(schema, { id });
  const { schemas } = z.toJSONSchema(registry, {
    io,
    uri: ref,
    unrepresentable: 'any',
    override: documentOverride,
  });
  const result: Record<string, JsonSchema> = {};
  for (const [id, schema] of Object.entries(schemas)) {
    if (id === '__shared') throw new Error('OpenAPI: a recursive schema needs a name in namedSchemas');
    const { $schema: _dialect, $id: _id, ...rest } = schema as JsonSchema;
    result[id] = rest;
  }
  return result;
}

function errorResponse(status: number) {
  return {
    description: ERROR_DESCRIPTIONS[status] ?? 'Error',
    content: { 'application/json': { schema: { $ref: ref('Error') } } },
  };
}

/** The OpenAPI 3.1 document of the REST routes, generated from the procedures' own zod schemas. */
export function buildOpenApiDocument(routes: readonly RestRoute[], serverUrl: string): OpenApiDocument {
  const outputs = new Map<z.ZodType, string>(
    Object.entries(namedSchemas).map(([id, schema]) => [schema, id]),
  );
  const inputs = new Map<z.ZodType, string>([[namedSchemas.JsonValue as z.ZodType, 'JsonValue']]);
  const prepared = routes.map((route) => {
    const input = routeInput(route);
    if (!outputs.has(route.output)) outputs.set(route.output, `${pascal(route.procedure)}Response`);
    if (input.schema && !inputs.has(input.schema))
      inputs.set(input.schema, `${pascal(route.procedure)}Input`);
    return { route, input };
  });
  const outputSchemas = componentsOf(outputs, 'output');
  const inputSchemas = componentsOf(inputs, 'input');

  const paths: OpenApiDocument['paths'] = {};
  const bodies: Record<string, JsonSchema> = {};
  const operationIds = new Set<string>();
  for (const { route, input } of prepared) {
    if (operationIds.has(route.procedure)) throw new Error(`OpenAPI: two routes call ${route.procedure}`);
    operationIds.add(route.procedure);
    const parameters: Record<string, unknown>[] = input.pathParams.map((name) => ({
      name,
      in: 'path',
      required: true,
      schema: input.jsonSchema?.properties?.[name],
    }));
    let requestBody: Record<string, unknown> | undefined;
    const inputId = input.schema ? inputs.get(input.schema) : undefined;
    const inputSchema = inputId ? inputSchemas[inputId] : undefined;
    if (inputId && inputSchema) {
      const fields = { ...inputSchema.properties };
      const required = (inputSchema.required ?? []).filter((name) => !input.pathParams.includes(name));
      for (const name of input.pathParams) delete fields[name];
      if (route.method === 'GET' || route.method === 'DELETE') {
        for (const [name, schema] of Object.entries(fields)) {
          parameters.push({ name, in: 'query', required: required.includes(name), schema });
        }
      } else if (Object.keys(fields).length > 0) {
        const bodyId = input.pathParams.length > 0 ? `${pascal(route.procedure)}Body` : inputId;
        bodies[bodyId] = { ...inputSchema, properties: fields, required };
        requestBody = { required: true, content: { 'application/json': { schema: { $ref: ref(bodyId) } } } };
      }
    }
    if (route.auth === 'service') {
      parameters.push({
        name: 'X-App-Id',
        in: 'header',
        required: false,
        description: 'The calling service, recorded on ledger entries',
        schema: { type: 'string', pattern: '^[A-Za-z0-9._:-]{1,100}$' },
      });
    }
    const hasPathParameters = route.path.includes('/:');
    const statuses = [
      ...(input.schema || hasPathParameters ? [400] : []),
      ...(route.auth === 'public' ? [] : [401]),
      ...(route.errors ?? []),
      ...(hasPathParameters ? [414] : []),
    ];
    const openApiPath = route.path.replace(/:(\w+)/g, '{$1}');
    paths[openApiPath] ??= {};
    paths[openApiPath][route.method.toLowerCase()] = {
      operationId: route.procedure,
      summary: route.summary,
      description: `Answered by the tRPC procedure \`${route.procedure}\`, with its behaviour.`,
      tags: [route.procedure.split('.')[0]],
      security: SECURITY[route.auth],
      ...(parameters.length > 0 ? { parameters } : {}),
      ...(requestBody ? { requestBody } : {}),
      responses: {
        200: {
          description: 'OK',
          content: { 'application/json': { schema: { $ref: ref(outputs.get(route.output) as string) } } },
        },
        ...Object.fromEntries(statuses.map((status) => [status, errorResponse(status)])),
      },
    };
  }

  return {
    openapi: '3.1.0',
    info: {
      title: 'mana-credits',
      version: '1.0.0',
      description:
        'Credits: balances, spending, ledger history. Every route is also a tRPC procedure at /trpc ' +
        '(operationId); errors are { error: { message, reason, details?, requestId } }.',
    },
    servers: [{ url: serverUrl }],
    paths,
    components: {
      schemas: { ...outputSchemas, ...bodies },
      securitySchemes: {
        bearerAuth: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' },
        serviceKey: { type: 'apiKey', in: 'header', name: 'X-Service-Key' },
      },
    },
  };
}
