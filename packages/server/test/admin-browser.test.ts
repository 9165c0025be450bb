import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_ENV, ADMIN_TOKEN } from './helpers/admin.ts';
import { chromiumAvailable, launchChromium } from './helpers/chromium.ts';
import { expectLedgerConsistent, ledgerSum } from './helpers/invariants.ts';
import { newUser, startTestServer, type TestServer } from './helpers/server.ts';

const XSS =
  `<script>window.__xss = 'script'</script><img src=x onerror="window.__xss = 'img'">` +
  `"><svg onload="window.__xss = 'svg'"></svg> & 'quotes' \`ticks\``;
/** Screenshots of every console page (the README shows the user page): packages/server/test/output/admin-console. */
export const SCREENSHOTS = join(import.meta.dirname, 'output', 'admin-console');

const browserHere = chromiumAvailable('admin-browser.test.ts');

let server: TestServer;
let browser: Browser;
beforeAll(async () => {
  if (!browserHere) return;
  mkdirSync(SCREENSHOTS, { recursive: true });
  server = await startTestServer({ ...ADMIN_ENV, GIFT_EXPIRY_SWEEP_SECONDS: '0' });
  browser = await launchChromium();
});
afterAll(async () => {
  await browser?.close();
  if (!server) return;
  await expectLedgerConsistent(server.deps.db);
  await server.close();
});

interface Session {
  context: BrowserContext;
  page: Page;
  /** Console errors (a CSP violation is one), dialogs, and requests that left the server's origin. */
  problems: string[];
}

async function signedIn(options: { javaScript?: boolean } = {}): Promise<Session> {
  const context = await browser.newContext({
    javaScriptEnabled: options.javaScript ?? true,
    viewport: { width: 1280, height: 900 },
  });
  const page = await context.newPage();
  const problems: string[] = [];
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console: ${message.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('dialog', (dialog) => {
    problems.push(`dialog: ${dialog.message()}`);
    void dialog.dismiss();
  });
  page.on('request', (request) => {
    if (!request.url().startsWith(server.url)) problems.push(`request elsewhere: ${request.url()}`);
  });
  await page.goto(`${server.url}/admin`);
  // Not signed in: the console sends the browser to its sign-in page.
  expect(new URL(page.url()).pathname).toBe('/admin/login');
  if (options.javaScript !== false) await page.screenshot({ path: join(SCREENSHOTS, '1-login.png') });
  await page.locator('input[name="credential"]').fill(ADMIN_TOKEN);
  await page.locator('input[name="name"]').fill('browser-operator');
  await Promise.all([
    page.waitForURL(`${server.url}/admin`),
    page.getByRole('button', { name: 'Sign in' }).click(),
  ]);
  return { context, page, problems };
}

/** How many pixels of a canvas are painted (not fully transparent). */
async function paintedPixels(page: Page, selector: string): Promise<number> {
  return page.locator(selector).evaluate((canvas) => {
    const element = canvas as unknown as {
      width: number;
      height: number;
      getContext(kind: '2d'): { getImageData(...box: number[]): { data: Uint8ClampedArray } } | null;
    };
    const data = element.getContext('2d')?.getImageData(0, 0, element.width, element.height).data;
    let painted = 0;
    for (let index = 3; data && index < data.length; index += 4) if (data[index]! > 0) painted++;
    return painted;
  });
}

describe.skipIf(!browserHere)('the operator console in headless Chromium', () => {
  it('search, charts, a grant through the form that shows in the ledger, hostile text shown as text', async () => {
    // A user with usage in two apps, a hostile description and gift message, and a hold.
    const user = await server.fundedUser(1000, { id: `user-console-${randomUUID().slice(0, 8)}`, name: XSS });
    const internal = server.internalClient({ appId: 'writer' });
    await internal.internal.credits.use.mutate({
      userId: user.id,
      amount: 120,
      appId: 'chat',
      description: XSS,
      metadata: { prompt: XSS },
    });
    await internal.internal.credits.use.mutate({
      userId: user.id,
      amount: 45,
      appId: 'images',
      description: 'a picture',
    });
    await internal.internal.credits.reserve.mutate({
      userId: user.id,
      amount: 30,
      appId: 'chat',
      description: 'a long answer',
      idempotencyKey: `hold-${randomUUID()}`,
    });
    await (await server.userClient(user)).gifts.create.mutate({
      type: 'simple',
      totalCredits: 50,
      message: XSS,
    });

    const { context, page, problems } = await signedIn();
    try {
      await page.screenshot({ path: join(SCREENSHOTS, '2-search.png') });
      // Search by the beginning of the id, then follow the match.
      await page.locator('input[name="q"]').fill(user.id.slice(0, 18));
      await Promise.all([
        page.waitForURL(/\/admin\/search\?q=/),
        page.getByRole('button', { name: 'Search' }).click(),
      ]);
      await page.screenshot({ path: join(SCREENSHOTS, '3-search-results.png') });
      await Promise.all([
        page.waitForURL(`${server.url}/admin/users/${user.id}`),
        page.getByRole('link', { name: user.id, exact: true }).click(),
      ]);

      // Both charts drawn by uPlot (served by this server) into non-empty canvases.
      for (const id of ['chart-balance', 'chart-usage']) {
        await page.locator(`#${id}[data-rendered="chart"] canvas`).waitFor();
        expect(await paintedPixels(page, `#${id} canvas`), id).toBeGreaterThan(500);
      }
      expect(await page.locator('#chart-usage .u-legend').textContent()).toMatch(/chat[\s\S]*images/);
      expect(await page.locator('[data-field="balance"]').textContent()).toBe('755');
      expect(await page.locator('[data-field="reserved"]').textContent()).toBe('30');

      // Hostile text arrives as literal text: no element, script or handler from it ran.
      expect(
        await page.locator('tr[data-type="usage"] [data-field="description"]').last().textContent(),
      ).toBe(XSS);
      expect(await page.locator('[data-field="gift-message"]').first().textContent()).toBe(XSS);
      expect(await page.locator('main img, main svg, main script').count()).toBe(0);
      expect(await page.evaluate(() => (globalThis as { __xss?: string }).__xss)).toBeUndefined();
      await page.screenshot({ path: join(SCREENSHOTS, '4-user.png'), fullPage: true });

      // A grant through the form, clicked twice (a double submit sends the same nonce twice): granted once,
      // recorded, shown, and in the ledger.
      const grant = page.locator('form[data-action="grant"]');
      await grant.locator('input[name="amount"]').fill('250');
      await grant.locator('input[name="reason"]').fill(`support ticket #42 ${XSS}`);
      await grant.getByRole('button', { name: 'Grant' }).dblclick();
      // Two submissions: the second may abort the first's navigation, or follow it. Wait until both settled.
      await expect.poll(() => page.url(), { timeout: 30_000 }).toMatch(/\?done=/);
      await page.waitForLoadState('networkidle');
      expect(page.url()).toMatch(/\?done=/);
      expect(await page.locator('[data-field="notice"]').textContent()).toMatch(/(Done|Already done): grant/);
      const row = page.locator('tr[data-type="grant"]').first();
      expect(await row.locator('[data-field="description"]').textContent()).toBe(`support ticket #42 ${XSS}`);
      expect(await row.textContent()).toContain('250');
      expect(await row.textContent()).toContain('token:browser-operator');
      expect(await page.locator('tr[data-type="grant"]').count()).toBe(2); // the test funds and this one
      expect(await page.locator('[data-field="balance"]').textContent()).toBe('1005');
      expect(await ledgerSum(server.deps.db, user.id)).toBe(1035);
      expect(await page.locator('table[data-table="audit"] tr[data-audit-id]').count()).toBe(1);
      expect(await page.evaluate(() => (globalThis as { __xss?: string }).__xss)).toBeUndefined();

      // The ledger filter, then the audit log.
      await page.locator('form[data-form="ledger-filter"] select[name="type"]').selectOption('usage');
      await Promise.all([
        page.waitForURL(/type=usage/),
        page.getByRole('button', { name: 'Filter' }).click(),
      ]);
      expect(await page.locator('table[data-table="ledger"] tbody tr').count()).toBe(2);
      await Promise.all([
        page.waitForURL(`${server.url}/admin/audit`),
        page.getByRole('link', { name: 'Audit log' }).click(),
      ]);
      expect(await page.locator('table[data-table="audit"]').textContent()).toContain('support ticket #42');
      await page.screenshot({ path: join(SCREENSHOTS, '6-audit.png'), fullPage: true });
      expect(problems).toEqual([]);
    } finally {
      await context.close();
    }
  });

  it('a guild: pool balance and spend per member charts, members and limits', async () => {
    const guildId = `guild-${randomUUID().slice(0, 8)}`;
    const owner = await server.fundedUser(2000);
    server.auth.setRole(guildId, owner.id, 'owner');
    const internal = server.internalClient();
    await internal.internal.guildPool.init.mutate({ guildId });
    await (await server.userClient(owner)).guild.fund.mutate({ guildId, amount: 1500 });
    for (const [index, amount] of [120, 80, 40].entries()) {
      const member = newUser({ id: `member-${index}-${randomUUID().slice(0, 6)}` });
      server.auth.setRole(guildId, member.id, 'member');
      await (await server.userClient(member)).guild.use.mutate({
        guildId,
        amount,
        appId: 'chat',
        description: XSS,
      });
    }
    const { context, page, problems } = await signedIn();
    try {
      await page.goto(`${server.url}/admin/guilds/${guildId}`);
      for (const id of ['chart-pool-balance', 'chart-member-spend']) {
        await page.locator(`#${id}[data-rendered="chart"] canvas`).waitFor();
        expect(await paintedPixels(page, `#${id} canvas`), id).toBeGreaterThan(500);
      }
      expect(await page.locator('[data-field="pool-balance"]').textContent()).toBe('1260');
      expect(await page.locator('table[data-table="members"] tbody tr').count()).toBe(4);
      expect(await page.evaluate(() => (globalThis as { __xss?: string }).__xss)).toBeUndefined();
      await page.screenshot({ path: join(SCREENSHOTS, '5-guild.png'), fullPage: true });
      expect(problems).toEqual([]);
    } finally {
      await context.close();
    }
  });

  it('without JavaScript every page and form still works (only the charts need it)', async () => {
    const user = await server.fundedUser(10);
    const { context, page, problems } = await signedIn({ javaScript: false });
    try {
      await page.goto(`${server.url}/admin/users/${user.id}`);
      expect(await page.locator('#chart-balance').textContent()).toBe('');
      const grant = page.locator('form[data-action="grant"]');
      await grant.locator('input[name="amount"]').fill('5');
      await grant.locator('input[name="reason"]').fill('no-js grant');
      await Promise.all([page.waitForURL(/\?done=/), grant.getByRole('button', { name: 'Grant' }).click()]);
      expect(await ledgerSum(server.deps.db, user.id)).toBe(15);
      expect(problems).toEqual([]);
    } finally {
      await context.close();
    }
  });
});
