import { randomUUID } from 'node:crypto';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromiumAvailable, launchChromium } from './helpers/chromium.ts';
import { expectLedgerConsistent } from './helpers/invariants.ts';
import { newUser, startTestServer, type TestServer } from './helpers/server.ts';

const REDEEM_URL = 'https://app.example/redeem?code={code}';
const XSS =
  `<script>window.__xss = 'script'</script><img src=x onerror="window.__xss = 'img'">` +
  `"><svg onload="window.__xss = 'svg'"></svg> & 'quotes' \`ticks\``;

const browserHere = chromiumAvailable('gift-page.test.ts');

let server: TestServer;
let browser: Browser;
beforeAll(async () => {
  if (!browserHere) return;
  server = await startTestServer({
    BASE_URL: 'https://gift.example',
    GIFT_REDEEM_URL: REDEEM_URL,
    GIFT_EXPIRY_SWEEP_SECONDS: '0',
    GIFT_INFO_RATE_LIMIT_PER_MINUTE: '1000000',
  });
  browser = await launchChromium();
});
afterAll(async () => {
  await browser?.close();
  if (!server) return;
  await expectLedgerConsistent(server.deps.db);
  await server.close();
});

async function creator(name: string) {
  const user = newUser({ name });
  await server.internalClient().internal.credits.grant.mutate({
    userId: user.id,
    amount: 1000,
    reason: 'test funds',
    idempotencyKey: `fund-${randomUUID()}`,
  });
  return server.userClient(user);
}

/** Opens a page in a fresh browser context and collects what the browser saw. */
async function visit(path: string) {
  const context = await browser.newContext({ javaScriptEnabled: true });
  const page = await context.newPage();
  const dialogs: string[] = [];
  page.on('dialog', (dialog) => {
    dialogs.push(dialog.message());
    void dialog.dismiss();
  });
  const response = await page.goto(`${server.url}${path}`);
  const field = async (name: string) => (await page.locator(`[data-field="${name}"]`).textContent())?.trim();
  return { page, response, dialogs, field, close: () => context.close() };
}

describe.skipIf(!browserHere)('GET /g/:code in headless Chromium', () => {
  it('shows amount, portions left, message, status, expiry and a Redeem link; user text stays text', async () => {
    const client = await creator(`<b>Eve</b> "the" creator`);
    const gift = await client.gifts.create.mutate({
      type: 'first_come',
      totalCredits: 90,
      totalPortions: 3,
      message: XSS,
    });
    await (await server.userClient()).gifts.redeem.mutate({ code: gift.code });

    const view = await visit(`/g/${gift.code.toLowerCase()}`);
    try {
      expect(view.response?.status()).toBe(200);
      expect(view.response?.headers()['content-security-policy']).toContain("default-src 'none'");
      expect(await view.field('amount')).toBe('30 credits');
      expect(await view.field('portions-left')).toBe('2 of 3');
      expect(await view.field('status')).toBe('Ready to redeem');
      expect(await view.field('code')).toBe(gift.code);
      expect(await view.page.locator('[data-field="expires"] time').getAttribute('datetime')).toBe(
        gift.expiresAt.toISOString(),
      );
      // The hostile message and creator name arrive as literal text: no element, no script, no handler ran.
      expect(await view.field('message')).toBe(XSS);
      expect(await view.page.locator('h1').textContent()).toBe(`A gift from <b>Eve</b> "the" creator`);
      expect(await view.page.locator('script, img, svg, b').count()).toBe(0);
      expect(await view.page.evaluate(() => (globalThis as { __xss?: string }).__xss)).toBeUndefined();
      expect(view.dialogs).toEqual([]);

      const link = view.page.getByRole('link', { name: 'Redeem' });
      expect(await link.getAttribute('href')).toBe(
        `https://app.example/redeem?code=${encodeURIComponent(gift.code)}`,
      );
    } finally {
      await view.close();
    }
  });

  it('shows the riddle question; a depleted gift shows its status and no Redeem link', async () => {
    const client = await creator('Riddler');
    const gift = await client.gifts.create.mutate({
      type: 'riddle',
      totalCredits: 10,
      riddleQuestion: 'What has keys but <no> locks?',
      riddleAnswer: 'a piano',
    });
    const view = await visit(`/g/${gift.code}`);
    try {
      expect(await view.field('riddle')).toBe('What has keys but <no> locks?');
      expect(await view.page.getByRole('link', { name: 'Redeem' }).count()).toBe(1);
    } finally {
      await view.close();
    }

    await (await server.userClient()).gifts.redeem.mutate({ code: gift.code, riddleAnswer: 'A Piano' });
    const after = await visit(`/g/${gift.code}`);
    try {
      expect(await after.field('status')).toBe('Every portion has been claimed');
      expect(await after.field('portions-left')).toBe('0 of 1');
      expect(await after.page.getByRole('link', { name: 'Redeem' }).count()).toBe(0);
    } finally {
      await after.close();
    }
  });

  it('an unknown or malformed code is a 404 page that reflects nothing', async () => {
    for (const path of ['/g/ZZZZZ-ZZZZZ', `/g/${encodeURIComponent('<script>alert(1)</script>')}`]) {
      const view = await visit(path);
      try {
        expect(view.response?.status()).toBe(404);
        expect(await view.page.locator('h1').textContent()).toBe('Gift not found');
        expect(await view.page.content()).not.toContain('script');
        expect(view.dialogs).toEqual([]);
      } finally {
        await view.close();
      }
    }
  });
});
