import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { OpenApiDocument } from '../src/http/rest/openapi.ts';
import { restRoutes } from '../src/http/rest/routes.ts';
import { statementCsvRoutes } from '../src/http/rest/statement-csv.ts';
import { chromiumAvailable, launchChromium } from './helpers/chromium.ts';
import { startTestServer, type TestServer } from './helpers/server.ts';

// The interactive API docs at /docs (Swagger UI): served from this server only, over the same document as
// /api/v1/openapi.json, and "Try it out" calls this server even when BASE_URL names another host.

const browserHere = chromiumAvailable('docs-viewer.test.ts');

let server: TestServer;
let browser: Browser | undefined;
beforeAll(async () => {
  server = await startTestServer({ BASE_URL: 'https://credits.example' });
  if (browserHere) {
    browser = await launchChromium();
  }
});
afterAll(async () => {
  await browser?.close();
  await server?.close();
});

describe('/docs', () => {
  it('serves Swagger UI and its assets from this server, under a same-origin CSP', async () => {
    const response = await fetch(`${server.url}/docs/`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/html/);
    const csp = response.headers.get('content-security-policy') ?? '';
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("connect-src 'self'");
    const html = await response.text();
    const assets = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((match) => match[1] as string);
    expect(assets.length).toBeGreaterThan(3);
    for (const asset of assets) {
      expect(asset, 'a relative asset').not.toMatch(/^(https?:)?\/\//);
      const loaded = await fetch(new URL(asset, `${server.url}/docs/`));
      expect(loaded.status, asset).toBe(200);
      // Read to the end: a response left unread keeps its connection busy, and the server's close waits for it
      // (Swagger UI's bundle is larger than the socket buffers).
      expect((await loaded.arrayBuffer()).byteLength, asset).toBeGreaterThan(0);
    }
    const index = await fetch(`${server.url}/docs`);
    expect(index.status).toBe(200);
    await index.arrayBuffer();
  });

  it('shows the document of /api/v1/openapi.json, with this server as the one to try', async () => {
    const served = (await (await fetch(`${server.url}/api/v1/openapi.json`)).json()) as OpenApiDocument;
    expect(served.servers).toEqual([{ url: 'https://credits.example' }]);
    const viewed = (await (await fetch(`${server.url}/docs/json`)).json()) as OpenApiDocument;
    expect(viewed.servers).toEqual([{ url: '/', description: 'This server' }]);
    expect({ ...viewed, servers: served.servers }).toEqual(served);
    for (const route of [...restRoutes, ...statementCsvRoutes]) {
      const method = 'method' in route ? route.method.toLowerCase() : 'get';
      expect(viewed.paths[route.path.replace(/:(\w+)/g, '{$1}')]?.[method], route.path).toMatchObject({
        operationId: expect.stringContaining(route.procedure),
      });
    }
  });

  it.runIf(browserHere)('renders every operation and tries one out against this server', async () => {
    const page = await (browser as Browser).newPage();
    const requested: string[] = [];
    const problems: string[] = [];
    page.on('request', (request) => requested.push(request.url()));
    page.on('console', (message) => {
      if (message.type() === 'error') problems.push(message.text());
    });
    page.on('pageerror', (error) => problems.push(error.message));
    try {
      await page.goto(`${server.url}/docs`);
      await page.waitForSelector('.opblock', { timeout: 30_000 });
      expect(await page.locator('.opblock').count()).toBe(restRoutes.length + statementCsvRoutes.length);

      const user = { id: `docs-user-${Date.now()}` };
      await server.internalClient().internal.credits.grant.mutate({
        userId: user.id,
        amount: 42,
        reason: 'docs',
        idempotencyKey: 'docs-grant',
      });
      await page.click('.btn.authorize');
      const bearer = page.locator('.auth-container', { hasText: 'bearerAuth' });
      await bearer.locator('input').fill(await server.auth.sign(user));
      await bearer.locator('button.authorize').click();
      await page.click('.btn-done');

      const balance = page.locator('.opblock', {
        has: page.locator('[data-path="/api/v1/credits/balance"]'),
      });
      await balance.locator('.opblock-summary').click();
      await balance.locator('.try-out__btn').click();
      await balance.locator('.execute').click();
      const status = balance.locator('.live-responses-table tr.response .response-col_status').first();
      await status.waitFor({ timeout: 30_000 });
      expect((await status.textContent())?.trim()).toBe('200');
      expect(await balance.locator('.live-responses-table .microlight').first().textContent()).toContain(
        '"balance": 42',
      );

      const origin = new URL(server.url).origin;
      expect(requested.filter((url) => !url.startsWith('data:') && new URL(url).origin !== origin)).toEqual(
        [],
      );
      expect(requested).toContain(`${origin}/api/v1/credits/balance`);
      expect(problems).toEqual([]);
    } finally {
      await page.close();
    }
  });
});
