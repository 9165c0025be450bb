import type { OpenApiDocument } from './openapi.ts';

const escapeHtml = (text: string) => text.replace(/[&<>"']/g, (char) => `&#${char.charCodeAt(0)};`);

/** Pretty JSON, with each $ref to a named schema a link to it further down the page. */
const json = (value: unknown) =>
  `<pre>${escapeHtml(JSON.stringify(value, null, 2)).replace(
    /&#34;#\/components\/schemas\/(\w+)&#34;/g,
    '<a href="#schema-$1">$1</a>',
  )}</pre>`;

interface Operation {
  operationId: string;
  summary: string;
  description?: string;
  security: Record<string, unknown>[];
  parameters?: { name: string; in: string; required: boolean; schema?: unknown; description?: string }[];
  requestBody?: { content: Record<string, { schema: unknown }> };
  responses: Record<string, { description: string; content?: Record<string, { schema: unknown }> }>;
}

function renderOperation(method: string, path: string, operation: Operation): string {
  const auth = operation.security.map((scheme) => Object.keys(scheme).join(' ')).join(', ') || 'none';
  const parameters = (operation.parameters ?? [])
    .map(
      (parameter) =>
        `<tr><td><code>${escapeHtml(parameter.name)}</code></td><td>${parameter.in}</td><td>${
          parameter.required ? 'yes' : 'no'
        }</td><td>${json(parameter.schema)}</td></tr>`,
    )
    .join('');
  const body = operation.requestBody?.content['application/json']?.schema;
  const responses = Object.entries(operation.responses)
    .map(
      ([status, response]) =>
        `<tr><td>${status}</td><td>${escapeHtml(response.description)}</td><td>${
          response.content ? json(response.content['application/json']?.schema ?? response.content) : ''
        }</td></tr>`,
    )
    .join('');
  return `<section id="${escapeHtml(operation.operationId)}">
<h3><span class="method ${method}">${method.toUpperCase()}</span> <code>${escapeHtml(path)}</code></h3>
<p>${escapeHtml(operation.summary)} · auth: <b>${escapeHtml(auth)}</b> · tRPC: <code>${escapeHtml(operation.operationId)}</code></p>
${parameters ? `<table><tr><th>parameter</th><th>in</th><th>required</th><th>schema</th></tr>${parameters}</table>` : ''}
${body ? `<h4>Request body</h4>${json(body)}` : ''}
<table><tr><th>status</th><th>meaning</th><th>body</th></tr>${responses}</table>
</section>`;
}

/** A self-contained HTML page listing every operation and schema of the document. */
export function renderDocsPage(document: OpenApiDocument, documentUrl: string): string {
  const info = document.info as { title: string; version: string; description?: string };
  const operations = Object.entries(document.paths).flatMap(([path, methods]) =>
    Object.entries(methods).map(([method, operation]) =>
      renderOperation(method, path, operation as Operation),
    ),
  );
  const schemas = Object.entries(document.components.schemas)
    .map(
      ([id, schema]) =>
        `<section id="schema-${escapeHtml(id)}"><h3>${escapeHtml(id)}</h3>${json(schema)}</section>`,
    )
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(info.title)} API</title>
<style>
body{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2rem auto;padding:0 1rem;color:#1d1d1f}
section{border-top:1px solid #ddd;padding:.5rem 0}
pre{background:#f5f5f7;padding:.5rem;white-space:pre-wrap;word-break:break-all;font-size:12px;margin:0}
table{border-collapse:collapse;width:100%;margin:.5rem 0}td,th{border:1px solid #ddd;padding:4px;vertical-align:top;text-align:left}
.method{font-weight:bold;padding:0 6px;border-radius:4px;color:#fff}.get{background:#0a7}.post{background:#06c}.put{background:#c70}.delete{background:#c33}
</style></head><body>
<h1>${escapeHtml(info.title)} <small>${escapeHtml(info.version)}</small></h1>
<p>${escapeHtml(info.description ?? '')}</p>
<p>OpenAPI document: <a href="${escapeHtml(documentUrl)}">${escapeHtml(documentUrl)}</a></p>
<h2>Operations</h2>
${operations.join('\n')}
<h2>Schemas</h2>
${schemas}
</body></html>`;
}
