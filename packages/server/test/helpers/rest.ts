import { Ajv2020 } from 'ajv/dist/2020.js';
import { expect } from 'vitest';
import type { OpenApiDocument } from '../../src/http/rest/openapi.ts';
import type { TestServer } from './server.ts';

export interface CallOptions {
  params?: Record<string, string>;
  query?: Record<string, string>;
  body?: unknown;
  token?: string;
  serviceKey?: string;
  headers?: Record<string, string>;
}

export interface Answer {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: response bodies are inspected freely in assertions
  body: any;
  requestId: string | null;
}

const DOCUMENT_ID = 'https://mana-credits.test/openapi.json';

/**
 * A REST caller for a live test server: calls a route named as in the document ('POST /api/v1/credits/use')
 * and checks that the answer's status is documented for that route and its body matches the documented
 * schema of that status.
 */
export async function restCaller(server: TestServer) {
  const response = await fetch(`${server.url}/api/v1/openapi.json`);
  expect(response.status).toBe(200);
  const document = (await response.json()) as OpenApiDocument;
  const ajv = new Ajv2020({ strict: false, validateFormats: false });
  ajv.addSchema({ $id: DOCUMENT_ID, components: document.components });

  async function call(route: string, options: CallOptions = {}): Promise<Answer> {
    const [method, template] = route.split(' ') as [string, string];
    const path = template.replace(/\{(\w+)\}/g, (_, name: string) =>
      encodeURIComponent(options.params?.[name] ?? ''),
    );
    const query = options.query ? `?${new URLSearchParams(options.query)}` : '';
    const headers: Record<string, string> = { ...options.headers };
    if (options.token) headers.authorization = `Bearer ${options.token}`;
    if (options.serviceKey) headers['x-service-key'] = options.serviceKey;
    if (options.body !== undefined) headers['content-type'] = 'application/json';
    const answer = await fetch(`${server.url}${path}${query}`, {
      method,
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
    const body = await answer.json();
    const operation = document.paths[template]?.[method.toLowerCase()] as
      | { responses: Record<string, { content: { 'application/json': { schema: { $ref: string } } } }> }
      | undefined;
    expect(operation, `${route} is documented`).toBeDefined();
    const documented = operation?.responses[String(answer.status)];
    expect(documented, `${route} documents status ${answer.status} (${JSON.stringify(body)})`).toBeDefined();
    const validate = ajv.compile({
      $ref: `${DOCUMENT_ID}${documented?.content['application/json'].schema.$ref}`,
    });
    expect(validate(body) ? [] : validate.errors, `${route} ${answer.status} body matches`).toEqual([]);
    return { status: answer.status, body, requestId: answer.headers.get('x-request-id') };
  }

  return { document, call };
}
