import { execFile } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { build, type Metafile } from 'esbuild';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromiumAvailable, launchChromium } from '../../server/test/helpers/chromium.ts';
import { expectLedgerConsistent } from '../../server/test/helpers/invariants.ts';
import { newUser, startTestServer, type TestServer } from '../../server/test/helpers/server.ts';

/**
 * The published client in a browser, across origins: a web app (test/browser/web-app.js) on its own local
 * origin, bundled for the browser with esbuild from the packed @mana-credits/client, signs in, reads and
 * spends credits, handles INSUFFICIENT_CREDITS, cancels a gift and sets a member limit through REST `fetch`,
 * all against a live server whose CORS_ORIGINS names that origin. The same page on another origin is refused.
 */
const browserHere = chromiumAvailable('browser.test.ts');

const run = promisify(execFile);
const packageDir = join(dirname(fileURLToPath(import.meta.url)), '..');

/** The packages the browser bundle may contain: the client and its peers, nothing of Node. */
const BUNDLED_PACKAGES = [
  '@mana-credits/client',
  '@trpc/client',
  '@trpc/server',
  'superjson',
  'copy-anything',
  'is-what',
];

const HTML = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Credits</title></head>
<body>
  <form id="sign-in"><input name="token" aria-label="Token"><button>Sign in</button></form>
  <p>Balance: <output data-field="balance">?</output></p>
  <form id="spend"><input name="amount" aria-label="Amount"><button>Spend</button></form>
  <p data-field="top-up" hidden>Top up <span data-field="short-by"></span> credits</p>
  <form id="gift"><input name="amount" aria-label="Gift credits"><button>Create gift</button></form>
  <form id="cancel-gift"><output data-field="gift-id"></output><button>Cancel gift</button></form>
  <form id="limit">
    <input name="guildId" aria-label="Guild"><input name="userId" aria-label="Member">
    <input name="dailyLimit" aria-label="Daily limit"><button>Set limit</button>
  </form>
  <p data-field="status"></p>
  <p>Request: <output data-field="request-id"></output></p>
  <script type="module" src="/app.js"></script>
</body>
</html>`;

/** A static origin serving the page and its bundle. */
async function pageOrigin(bundle: string): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://page').pathname;
    if (path === '/') res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(HTML);
    else if (path === '/app.js') res.writeHead(200, { 'content-type': 'text/javascript' }).end(bundle);
    else res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

/**
 * Packs the client as published (its own tsup config, npm pack honouring `files`), into a scratch directory
 * rather than packages/client/dist, which packed-client.test.ts rebuilds at the same time. JavaScript only:
 * the bundler needs no declarations (packed-client.test.ts checks those).
 */
async function packClient(scratch: string): Promise<string> {
  const stage = join(scratch, 'stage');
  await run(join(packageDir, 'node_modules/.bin/tsup'), ['--out-dir', join(stage, 'dist'), '--silent'], {
    cwd: packageDir,
  });
  await copyFile(join(packageDir, 'package.json'), join(stage, 'package.json'));
  await copyFile(join(packageDir, 'README.md'), join(stage, 'README.md'));
  await run('npm', ['pack', '--silent', '--pack-destination', scratch], { cwd: stage });
  return join(scratch, (await readdir(scratch)).find((name) => name.endsWith('.tgz')) as string);
}

/**
 * The web app bundled for the browser. The tarball is unpacked where the app resolves `@mana-credits/client`
 * (scratch/node_modules); its peers @trpc/client and superjson come from this package's own devDependencies
 * (the versions the tarball names). platform 'browser' fails on any Node built-in: a successful build is
 * the proof that the client bundles for the browser.
 */
async function bundleWebApp(scratch: string, tarball: string) {
  const installed = join(scratch, 'node_modules/@mana-credits/client');
  await mkdir(installed, { recursive: true });
  await run('tar', ['xzf', tarball, '-C', installed, '--strip-components=1']);
  const entry = join(scratch, 'web-app.js');
  await copyFile(join(packageDir, 'test/browser/web-app.js'), entry);
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    platform: 'browser',
    format: 'esm',
    target: 'es2022',
    write: false,
    metafile: true,
    absWorkingDir: scratch,
    nodePaths: [join(packageDir, 'node_modules')],
    logLevel: 'silent',
  });
  return { code: result.outputFiles[0]!.text, metafile: result.metafile as Metafile };
}

/** The package an input file of the bundle belongs to ('' for the app itself). */
function packageOf(input: string): string {
  const match = /node_modules\/((?:@[^/]+\/)?[^/]+)\/(?!.*node_modules\/)/.exec(input);
  return match?.[1] ?? '';
}

let scratch: string;
let server: TestServer;
let browser: Browser;
let bundle: { code: string; metafile: Metafile };
let allowed: { url: string; server: Server };
let refused: { url: string; server: Server };

beforeAll(async () => {
  if (!browserHere) return;
  scratch = await mkdtemp(join(tmpdir(), 'mana-credits-browser-'));
  const launching = launchChromium();
  bundle = await bundleWebApp(scratch, await packClient(scratch));
  allowed = await pageOrigin(bundle.code);
  refused = await pageOrigin(bundle.code);
  [server, browser] = await Promise.all([
    startTestServer({ CORS_ORIGINS: allowed.url, GIFT_EXPIRY_SWEEP_SECONDS: '0' }),
    launching,
  ]);
});

afterAll(async () => {
  await browser?.close();
  for (const origin of [allowed, refused]) {
    origin?.server.closeAllConnections();
    await new Promise((resolve) => origin?.server.close(resolve));
  }
  if (server) {
    await expectLedgerConsistent(server.deps.db);
    await server.close();
  }
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

/** Opens the web app on an origin, talking to the test server; collects what the console and page said. */
async function openApp(origin: string) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const logs: string[] = [];
  const errors: string[] = [];
  page.on('console', (message) => logs.push(message.text()));
  page.on('pageerror', (error) => errors.push(error.message));
  await page.goto(`${origin}/?api=${encodeURIComponent(server.url)}`);
  await page.waitForSelector('body[data-ready="true"]');
  return { page, console: logs, errors, close: () => context.close() };
}

/** Fills and submits a form of the app; returns the status line it settles on (its handler's outcome). */
async function act(page: Page, form: string, values: Record<string, string | number> = {}): Promise<string> {
  for (const [name, value] of Object.entries(values)) {
    await page.locator(`#${form} [name="${name}"]`).fill(String(value));
  }
  const status = page.locator('[data-field="status"]');
  await status.evaluate((element) => {
    element.textContent = '';
  });
  await page.locator(`#${form} button`).click();
  // Settled: neither the cleared line nor the handler's 'Working…'.
  await page
    .locator('[data-field="status"]:not(:empty)', { hasNotText: 'Working…' })
    .waitFor({ timeout: 15_000 });
  return text(page, 'status');
}

async function text(page: Page, field: string): Promise<string> {
  return (await page.locator(`[data-field="${field}"]`).textContent()) ?? '';
}

describe.skipIf(!browserHere)('a web app on another origin, in Chromium', () => {
  it('the packed client bundles for the browser: nothing but the client, its peers and the app', async () => {
    const packages = new Set(Object.keys(bundle.metafile.inputs).map(packageOf));
    expect([...packages].filter(Boolean).sort()).toEqual(
      BUNDLED_PACKAGES.filter((name) => packages.has(name)).sort(),
    );
    expect(packages).toContain('@mana-credits/client');
    const client = Object.keys(bundle.metafile.inputs).filter(
      (input) => packageOf(input) === '@mana-credits/client',
    );
    // The tarball's ESM build, resolved through its exports map.
    expect(client.map((input) => relative('node_modules/@mana-credits/client', input))).toEqual([
      'dist/index.js',
    ]);
    // No require() of anything and no Node module specifier survived into the bundle.
    expect(bundle.code).not.toMatch(/\brequire\(\s*["'`]|["'`]node:/);

    // The check has teeth: the same build refuses a module that imports a Node built-in.
    await writeFile(
      join(scratch, 'node-only.js'),
      `import { randomUUID } from 'node:crypto';\nrandomUUID();\n`,
    );
    await expect(
      build({
        entryPoints: [join(scratch, 'node-only.js')],
        bundle: true,
        platform: 'browser',
        write: false,
        logLevel: 'silent',
      }),
    ).rejects.toThrow(/node:crypto/);
  });

  it('signs in, shows the balance, spends, handles insufficient credits, cancels a gift and sets a limit', async () => {
    const user = await server.fundedUser(100);
    const other = await server.fundedUser(7);
    const guildId = `guild-${user.id.slice(5, 13)}`;
    const member = newUser();
    server.auth.setRole(guildId, user.id, 'owner');
    server.auth.setRole(guildId, member.id, 'member');
    await server.internalClient().internal.guildPool.init.mutate({ guildId });

    const app = await openApp(allowed.url);
    try {
      const { page } = app;
      // getToken is asked per request: another user's token, then the user's, on the same client.
      expect(await act(page, 'sign-in', { token: await server.auth.sign(other) })).toBe('Signed in');
      expect(await text(page, 'balance')).toBe('7');
      expect(await act(page, 'sign-in', { token: await server.auth.sign(user) })).toBe('Signed in');
      expect(await text(page, 'balance')).toBe('100');

      expect(await act(page, 'spend', { amount: 30 })).toBe('Spent 30');
      expect(await text(page, 'balance')).toBe('70');

      expect(await act(page, 'spend', { amount: 1000 })).toBe('Not enough credits: 930 more needed');
      expect(await page.locator('[data-field="top-up"]').isVisible()).toBe(true);
      expect(await text(page, 'short-by')).toBe('930');
      expect(await text(page, 'balance')).toBe('70');

      expect(await act(page, 'gift', { amount: 20 })).toMatch(/^Gift \S+ created$/);
      expect(await text(page, 'balance')).toBe('50');
      const giftId = await text(page, 'gift-id');
      expect(await act(page, 'cancel-gift')).toBe('Gift cancelled: 20 credits back');
      expect(await text(page, 'balance')).toBe('70');
      // The exposed X-Request-Id was readable by the page.
      expect(await text(page, 'request-id')).toMatch(/^[0-9a-f-]{36}$/);

      const limit = { guildId, userId: member.id, dailyLimit: 25 };
      expect(await act(page, 'limit', limit)).toBe('Daily limit: 25');

      expect(app.errors).toEqual([]);
      expect(app.console.filter((line) => /CORS/i.test(line))).toEqual([]);

      // What the page did, as the service recorded it.
      const owner = await server.userClient(user);
      expect((await owner.credits.balance.query()).balance).toBe(70);
      // Cancelled before anyone claimed it: all of it came back.
      const [cancelled] = (await owner.gifts.myCreated.query()).items;
      expect(cancelled).toMatchObject({ id: giftId, status: 'refunded' });
      expect(await owner.guild.memberLimits.query({ guildId, userId: member.id })).toMatchObject({
        dailyLimit: 25,
        monthlyLimit: null,
      });
    } finally {
      await app.close();
    }
  });

  it('the same page on an origin not in CORS_ORIGINS is refused: nothing read, nothing spent', async () => {
    const user = await server.fundedUser(40);
    const owner = await server.userClient(user);
    const gift = await owner.gifts.create.mutate({ type: 'simple', totalCredits: 10 });

    const app = await openApp(refused.url);
    try {
      const { page } = app;
      const token = await server.auth.sign(user);
      // The typed client reports the refused fetch as a transport failure.
      expect(await act(page, 'sign-in', { token })).toBe('Failed: The credits service could not be reached');
      expect(await text(page, 'balance')).toBe('?');
      expect(await act(page, 'spend', { amount: 5 })).toBe(
        'Failed: The credits service could not be reached',
      );

      await page.locator('[data-field="gift-id"]').evaluate((element, id) => {
        element.textContent = id;
      }, gift.id);
      expect(await act(page, 'cancel-gift')).toBe('Failed: Failed to fetch');
      // Chromium says why.
      expect(app.console.some((line) => /blocked by CORS policy/.test(line))).toBe(true);
    } finally {
      await app.close();
    }
    // The preflights were refused, so the requests themselves were never sent.
    expect((await owner.credits.balance.query()).balance).toBe(30);
    expect((await owner.gifts.myCreated.query()).items[0]).toMatchObject({ id: gift.id, status: 'active' });
  });
});
