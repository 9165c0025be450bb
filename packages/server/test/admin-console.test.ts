import { randomUUID } from 'node:crypto';
import { insertPendingPurchase, recordUnmatchedPayment } from '@mana-credits/db';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SESSION_COOKIE } from '../src/http/admin/auth.ts';
import { ADMIN_ENV, ADMIN_TOKEN, cookieFrom, form } from './helpers/admin.ts';
import { expectLedgerConsistent, ledgerSum } from './helpers/invariants.ts';
import { newUser, startTestServer, type TestServer } from './helpers/server.ts';

// The console's views and actions through HTTP (inject), as a browser session and as a script (Bearer). The
// browser itself (charts drawn, forms clicked) is admin-browser.test.ts.

const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
const XSS = `<script>window.__xss=1</script><img src=x onerror="window.__xss=2"> & "quotes" 'single'`;

let server: TestServer;
let cookie: string;
beforeAll(async () => {
  // tRPC calls (the set-up) run in process (helpers/server.ts: Transport); the console over HTTP.
  server = await startTestServer(
    { ...ADMIN_ENV, GIFT_EXPIRY_SWEEP_SECONDS: '0' },
    { transport: 'in-process' },
  );
  const login = await server.app.inject({
    method: 'POST',
    url: '/admin/login',
    headers: FORM,
    payload: form({ credential: ADMIN_TOKEN, name: 'alice' }),
  });
  cookie = cookieFrom(login.headers['set-cookie'], SESSION_COOKIE)!;
});
afterAll(async () => {
  if (!server) return;
  await expectLedgerConsistent(server.deps.db);
  await server.close();
});

const session = () => ({ cookie: `${SESSION_COOKIE}=${cookie}` });

async function get(url: string) {
  const response = await server.app.inject({ method: 'GET', url, headers: session() });
  return response;
}

/** The first action form of `name` on a page: its action and hidden fields (CSRF token, nonce, …). */
function actionFormOf(page: string, name: string) {
  const match = new RegExp(
    `<form method="post" action="([^"]+)" class="[^"]*" data-action="${name}">([\\s\\S]*?)</form>`,
  ).exec(page);
  if (!match) throw new Error(`no ${name} form in the page`);
  const hidden: Record<string, string> = {};
  for (const field of match[2]!.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)">/g)) {
    hidden[field[1]!] = field[2]!.replaceAll('&amp;', '&');
  }
  return { action: match[1]!.replaceAll('&amp;', '&'), hidden };
}

async function submit(page: string, name: string, fields: Record<string, string | number | undefined>) {
  const { action, hidden } = actionFormOf(page, name);
  return server.app.inject({
    method: 'POST',
    url: action,
    headers: { ...session(), ...FORM },
    payload: form({ ...hidden, ...fields }),
  });
}

const bearer = { authorization: `Bearer ${ADMIN_TOKEN}`, 'x-admin-operator': 'ops-script' };

async function bearerPost(url: string, body: Record<string, unknown>) {
  return server.app.inject({ method: 'POST', url, headers: bearer, payload: body });
}

const internal = () => server.internalClient({ appId: 'writer' });

async function use(userId: string, amount: number, appId: string, description = 'usage') {
  return internal().internal.credits.use.mutate({ userId, amount, appId, description });
}

describe('views', () => {
  it('a reversed day range is refused naming the field, not shown as an empty ledger', async () => {
    const user = await server.fundedUser(10);
    const response = await server.app.inject({
      method: 'GET',
      url: `/admin/users/${encodeURIComponent(user.id)}?from=2026-03-01&to=2026-02-01`,
      headers: bearer,
    });
    expect(response.statusCode).toBe(400);
    expect(response.json().error.details.field).toBe('to');
  });

  it('search finds users and guilds by id or its beginning; the query is shown as text', async () => {
    const prefix = `find-${randomUUID().slice(0, 8)}`;
    await server.fundedUser(10, { id: `${prefix}-alpha` });
    await server.fundedUser(10, { id: `${prefix}-beta` });
    await internal().internal.guildPool.init.mutate({ guildId: `${prefix}-guild` });
    const page = (await get(`/admin/search?q=${encodeURIComponent(prefix)}`)).body;
    expect(page).toContain(`/admin/users/${prefix}-alpha`);
    expect(page).toContain(`/admin/users/${prefix}-beta`);
    expect(page).toContain(`/admin/guilds/${prefix}-guild`);
    const exact = (await get(`/admin/search?q=${prefix}-alpha`)).body;
    expect(exact).not.toContain(`${prefix}-beta`);
    // % and _ are literal, not wildcards.
    expect((await get(`/admin/search?q=${encodeURIComponent('%')}`)).body).not.toContain(`${prefix}-alpha`);
    const evil = await get(`/admin/search?q=${encodeURIComponent(XSS)}`);
    expect(evil.statusCode).toBe(200);
    expect(evil.body).not.toContain('<script>window.__xss');
    expect(evil.body).toContain('&lt;script&gt;window.__xss=1&lt;/script&gt;');
  });

  it('a user: balance, reserved, holds, gifts created and received, ledger and charts; user text is escaped', async () => {
    const user = await server.fundedUser(1000, { name: XSS });
    await internal().internal.credits.use.mutate({
      userId: user.id,
      amount: 30,
      appId: 'app-one',
      description: XSS,
      metadata: { note: XSS },
    });
    await use(user.id, 20, 'app-two');
    await internal().internal.credits.reserve.mutate({
      userId: user.id,
      amount: 40,
      appId: 'app-one',
      description: 'held',
      idempotencyKey: `hold-${randomUUID()}`,
    });
    const creator = await server.userClient(user);
    await creator.gifts.create.mutate({ type: 'simple', totalCredits: 50, message: XSS });
    const friend = await server.fundedUser(5);
    const received = await (await server.userClient(friend)).gifts.create.mutate({
      type: 'simple',
      totalCredits: 5,
    });
    await creator.gifts.redeem.mutate({ code: received.code });

    const pack = await internal().internal.packages.upsert.mutate({
      name: 'Starter',
      credits: 500,
      priceEuroCents: 499,
      active: true,
      sortOrder: 0,
    });
    const purchaseId = await insertPendingPurchase(server.deps.db, {
      userId: user.id,
      packageId: pack.id,
      credits: 500,
      priceEuroCents: 499,
      currency: 'eur',
      stripeCustomerId: 'cus_test',
      validityDays: null,
    });
    // A payment for it whose amount was not its price (what the Stripe webhook records; stripe.test.ts).
    await server.deps.db.transaction().execute((trx) =>
      recordUnmatchedPayment(trx, purchaseId, {
        amount: 99,
        currency: 'eur',
        paymentIntentId: 'pi_unmatched',
        checkoutSessionId: null,
        receivedAt: new Date().toISOString(),
      }),
    );

    const response = await get(`/admin/users/${encodeURIComponent(user.id)}`);
    expect(response.statusCode).toBe(200);
    expect(response.headers['content-security-policy']).toContain("script-src 'self'");
    const page = response.body;
    // 1000 − 30 − 20 − 50 (gift escrow) + 5 (gift received) = 905, of which 40 held.
    expect(page).toContain('data-field="balance">865<');
    expect(page).toContain('data-field="reserved">40<');
    expect(page).toMatch(/data-table="holds"[\s\S]*held/);
    expect(page).toMatch(/data-table="gifts-created"[\s\S]*data-field="gift-status">active</);
    expect(page).toMatch(/data-table="gifts-received"/);
    // Lots in burn order: the gift received (promotional, priority 10) before the funding grant's lot.
    expect(page).toMatch(/data-table="lots"[\s\S]*data-category="promotional"/);
    expect(page).toMatch(
      new RegExp(`data-table="purchases"[\\s\\S]*pending[\\s\\S]*500[\\s\\S]*${purchaseId}`),
    );
    expect(page).toMatch(
      /data-field="unmatched-payment">paid 99 eur at <time[\s\S]*not credited: refund pi_unmatched/,
    );
    // No user string reaches the page as markup.
    expect(page).not.toContain('<script>window.__xss');
    expect(page).not.toContain('<img src=x');
    expect(page).toContain(
      '&lt;script&gt;window.__xss=1&lt;/script&gt;&lt;img src=x onerror=&quot;window.__xss=2&quot;&gt;',
    );
    // The charts' data: balance after every row, usage per app per day.
    const charts = [...page.matchAll(/data-chart="([^"]*)"/g)].map((match) =>
      JSON.parse(
        match[1]!
          .replaceAll('&quot;', '"')
          .replaceAll('&#39;', "'")
          .replaceAll('&lt;', '<')
          .replaceAll('&gt;', '>')
          .replaceAll('&amp;', '&'),
      ),
    );
    expect(charts).toHaveLength(2);
    expect(charts[0].series[0].values.at(-1)).toBe(905);
    const usage = charts[1];
    expect(usage.series.map((series: { label: string }) => series.label).sort()).toEqual([
      'app-one',
      'app-two',
    ]);
    const total = (label: string) =>
      usage.series
        .find((series: { label: string }) => series.label === label)
        .values.reduce((a: number, b: number) => a + b, 0);
    expect(total('app-one')).toBe(30);
    expect(total('app-two')).toBe(20);
  });

  it('the ledger filters by type, app and UTC day, and pages', async () => {
    const user = await server.fundedUser(1000);
    await internal().internal.credits.useBatch.mutate({
      items: Array.from({ length: 55 }, (_, index) => ({
        userId: user.id,
        amount: 1,
        appId: index % 2 ? 'odd-app' : 'even-app',
        description: `row ${index}`,
        idempotencyKey: `batch-${index}`,
      })),
    });
    const base = `/admin/users/${user.id}`;
    const rows = (page: string) => [
      ...page.matchAll(/<tr data-transaction-id="([^"]+)" data-type="([^"]+)"/g),
    ];
    const first = (await get(base)).body;
    expect(rows(first)).toHaveLength(50);
    const older = /href="([^"]+)" data-field="older"/.exec(first)![1]!.replaceAll('&amp;', '&');
    const second = (await get(older)).body;
    expect(rows(second)).toHaveLength(6); // 55 usage + the grant
    const ids = new Set([...rows(first), ...rows(second)].map((row) => row[1]));
    expect(ids.size).toBe(56);
    expect(second).toContain('End of the ledger');

    const grants = (await get(`${base}?type=grant`)).body;
    expect(rows(grants).map((row) => row[2])).toEqual(['grant']);
    const odd = (await get(`${base}?type=usage&app=odd-app`)).body;
    expect(rows(odd)).toHaveLength(27);
    const today = new Date().toISOString().slice(0, 10);
    expect(rows((await get(`${base}?from=${today}&to=${today}&app=even-app`)).body)).toHaveLength(28);
    expect(rows((await get(`${base}?to=2020-01-01`)).body)).toHaveLength(0);
    // Filters travel with the pager.
    const evenPage = (await get(`${base}?app=even-app`)).body;
    expect(evenPage).not.toContain('data-field="older"');
    // Bad filters are refused, not guessed.
    expect((await get(`${base}?type=nonsense`)).statusCode).toBe(400);
    expect((await get(`${base}?from=yesterday`)).statusCode).toBe(400);
    expect((await get(`${base}?cursor=not-a-uuid`)).statusCode).toBe(400);
    expect((await get(`${base}?cursor=${randomUUID()}`)).statusCode).toBe(400);
  });

  it('a guild: pool, members with limits and spending, holds, ledger and charts', async () => {
    const guildId = `guild-${randomUUID()}`;
    const owner = await server.fundedUser(500);
    const member = newUser();
    server.auth.setRole(guildId, owner.id, 'owner');
    server.auth.setRole(guildId, member.id, 'member');
    await internal().internal.guildPool.init.mutate({ guildId });
    await (await server.userClient(owner)).guild.fund.mutate({ guildId, amount: 300 });
    const memberClient = await server.userClient(member);
    await memberClient.guild.use.mutate({ guildId, amount: 25, appId: 'pool-app', description: XSS });
    await internal().internal.credits.reserve.mutate({
      userId: member.id,
      guildId,
      amount: 10,
      appId: 'pool-app',
      description: 'pool hold',
      idempotencyKey: `hold-${randomUUID()}`,
    });
    const page = (await get(`/admin/guilds/${guildId}`)).body;
    expect(page).toContain('data-field="pool-balance">265<');
    expect(page).toContain('data-field="pool-reserved">10<');
    expect(page).toContain(`data-member="${member.id}"`);
    expect(page).toContain(`data-member="${owner.id}"`);
    expect(page).toMatch(/data-table="holds"[\s\S]*pool hold/);
    expect(page).not.toContain('<script>window.__xss');
    const charts = [...page.matchAll(/data-chart="([^"]*)"/g)].map((match) =>
      JSON.parse(
        match[1]!
          .replaceAll('&quot;', '"')
          .replaceAll('&lt;', '<')
          .replaceAll('&gt;', '>')
          .replaceAll('&#39;', "'")
          .replaceAll('&amp;', '&'),
      ),
    );
    expect(charts[0].series[0].values.at(-1)).toBe(275);
    expect(charts[1].series).toEqual([{ label: member.id, values: expect.arrayContaining([25]) }]);
    const memberRows = (await get(`/admin/guilds/${guildId}?member=${member.id}`)).body;
    expect([...memberRows.matchAll(/<tr data-transaction-id=/g)]).toHaveLength(1);
    const noPool = (await get(`/admin/guilds/never-${randomUUID()}`)).body;
    expect(noPool).toContain('data-field="no-pool"');
  });

  it('hostile filters are a 400 naming the field, never a 500', async () => {
    const user = `filters-${randomUUID()}`;
    const cases: [string, string][] = [
      [`/admin/users/${user}?app=%00`, 'app'],
      [`/admin/users/${user}?app=${'a'.repeat(101)}`, 'app'],
      [`/admin/users/${user}?type=usage&type=grant`, 'type'],
      [`/admin/users/${user}?from=0000-01-01`, 'from'],
      [`/admin/users/${user}?to=9999-12-31`, 'to'],
      [`/admin/users/${user}?from=2026-02-31`, 'from'],
      [`/admin/users/${user}?cursor=a&cursor=b`, 'cursor'],
      [`/admin/guilds/g-${user}?member=%00`, 'member'],
      ['/admin/search?q=a&q=b', 'q'],
      ['/admin/audit?cursor=a&cursor=b', 'cursor'],
    ];
    for (const [url, field] of cases) {
      const response = await get(url);
      expect(response.statusCode, url).toBe(400);
      expect(response.body, url).toContain(`${field}:`);
    }
    // The widest days that are accepted.
    expect((await get(`/admin/users/${user}?from=1970-01-01&to=9999-12-30`)).statusCode).toBe(200);
  });
});

describe('actions', () => {
  it('grant: needs a reason, is recorded with the operator in the ledger and the audit, and a double submit grants once', async () => {
    const user = await server.fundedUser(10);
    const page = (await get(`/admin/users/${user.id}`)).body;
    const noReason = await submit(page, 'grant', { amount: 25, reason: '  ' });
    expect(noReason.statusCode).toBe(400);
    expect(noReason.body).toContain('REASON_REQUIRED');
    // Invisible characters are no reason either (a zero-width space, a word joiner, punctuation alone).
    for (const reason of ['\u200b', '\u2060\u200b', '...']) {
      const invisible = await submit(page, 'grant', { amount: 25, reason });
      expect(invisible.statusCode, JSON.stringify(reason)).toBe(400);
      expect(invisible.body).toContain('REASON_REQUIRED');
    }

    // A field given twice is refused, not guessed: two amounts, or a wrong CSRF token beside the right one.
    const { action, hidden } = actionFormOf(page, 'grant');
    for (const extra of ['amount=500', '_csrf=forged']) {
      const twice = await server.app.inject({
        method: 'POST',
        url: action,
        headers: { ...session(), ...FORM },
        payload: `${extra}&${form({ ...hidden, amount: 5, reason: 'twice' })}`,
      });
      expect(twice.statusCode, extra).toBe(400);
      expect(twice.json().error, extra).toMatchObject({
        reason: 'VALIDATION',
        message: `${extra.split('=')[0]}: given more than once`,
      });
    }
    expect(await ledgerSum(server.deps.db, user.id)).toBe(10);

    const first = await submit(page, 'grant', { amount: 25, reason: `goodwill ${XSS}` });
    expect(first.statusCode).toBe(303);
    expect(first.headers.location).toMatch(/^\/admin\/users\/[^?]+\?done=[0-9a-f-]{36}#notice$/);
    const again = await submit(page, 'grant', { amount: 25, reason: `goodwill ${XSS}` });
    expect(again.statusCode).toBe(303);
    expect(again.headers.location).toContain('replayed=1');
    expect(await ledgerSum(server.deps.db, user.id)).toBe(35);

    const grants = await server.deps.db
      .selectFrom('credits.transactions')
      .selectAll()
      .where('user_id', '=', user.id)
      .where('type', '=', 'grant')
      .where('app_id', '=', 'admin-console')
      .execute();
    expect(grants).toHaveLength(1);
    expect(grants[0]!.description).toBe(`goodwill ${XSS}`);
    expect(grants[0]!.metadata).toMatchObject({
      admin: { operator: 'token:alice', reason: `goodwill ${XSS}`, action: 'grant' },
    });
    const audit = await server.deps.db
      .selectFrom('credits.admin_actions')
      .selectAll()
      .where('target', '=', `user:${user.id}`)
      .execute();
    expect(audit).toHaveLength(1);
    expect(audit[0]).toMatchObject({
      operator: 'token:alice',
      action: 'grant',
      request: { amount: 25, userId: user.id },
    });
    expect(audit[0]!.result).toMatchObject({ transactionId: grants[0]!.id, amount: 25 });

    // The page shows what was done, escaped.
    const shown = (await get(first.headers.location as string)).body;
    expect(shown).toContain('data-field="notice"');
    expect(shown).not.toContain('<script>window.__xss');
    expect(shown).toMatch(/data-table="audit"[\s\S]*goodwill &lt;script&gt;/);
    const replayed = (await get(again.headers.location as string)).body;
    expect(replayed).toContain('Already done');

    // The same nonce with another amount is a conflict, not a second grant.
    const conflict = await submit(page, 'grant', { amount: 26, reason: `goodwill ${XSS}` });
    expect(conflict.statusCode).toBe(409);
    expect(conflict.body).toContain('IDEMPOTENCY_CONFLICT');
    expect(await ledgerSum(server.deps.db, user.id)).toBe(35);
  });

  it('two concurrent submits of one form grant once', async () => {
    const user = await server.fundedUser(1);
    const page = (await get(`/admin/users/${user.id}`)).body;
    const answers = await Promise.all(
      Array.from({ length: 4 }, () => submit(page, 'grant', { amount: 7, reason: 'race' })),
    );
    expect(answers.map((answer) => answer.statusCode)).toEqual([303, 303, 303, 303]);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(8);
  });

  it('a grant with an expiry is a promotional lot that expires then; the lots table shows it first', async () => {
    const user = await server.fundedUser(10);
    const page = (await get(`/admin/users/${user.id}`)).body;
    const badDays = await submit(page, 'grant', { amount: 5, reason: 'trial', expiresInDays: 0 });
    expect(badDays.statusCode).toBe(400);
    const granted = await submit(page, 'grant', { amount: 5, reason: 'trial', expiresInDays: 7 });
    expect(granted.statusCode).toBe(303);
    const lots = await server.deps.db
      .selectFrom('credits.lots')
      .select(['id', 'category', 'amount', 'expires_at', 'created_at'])
      .where('account_kind', '=', 'user')
      .where('account_id', '=', user.id)
      .where('expires_at', 'is not', null)
      .execute();
    expect(lots).toHaveLength(1);
    const [lot] = lots;
    expect(lot).toMatchObject({ category: 'promotional', amount: 5 });
    const days = (lot!.expires_at!.getTime() - lot!.created_at.getTime()) / 86_400_000;
    expect(days).toBeCloseTo(7, 2);
    const after = (await get(`/admin/users/${user.id}`)).body;
    // Burn order: the expiring promotional lot before the funding grant that never expires.
    const order = [...after.matchAll(/data-lot-id="([^"]+)"/g)].map((match) => match[1]);
    expect(order[0]).toBe(lot!.id);
    expect(order).toHaveLength(2);
  });

  it('refund of a usage transaction, partial then the rest; more than is left is refused', async () => {
    const user = await server.fundedUser(100);
    const spent = await use(user.id, 40, 'refund-app');
    const page = (await get(`/admin/users/${user.id}?type=usage`)).body;
    expect(page).toContain(`data-transaction-id="${spent.transactionId}"`);
    const partial = await submit(page, 'refund', { amount: 15, reason: 'bad answer' });
    expect(partial.statusCode).toBe(303);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(75);
    const refund = await server.deps.db
      .selectFrom('credits.transactions')
      .selectAll()
      .where('reference_transaction_id', '=', spent.transactionId)
      .executeTakeFirstOrThrow();
    expect(refund).toMatchObject({ type: 'refund', amount: 15, app_id: 'refund-app' });
    expect(refund.metadata).toMatchObject({ admin: { operator: 'token:alice', reason: 'bad answer' } });

    const next = (await get(`/admin/users/${user.id}?type=usage`)).body;
    const tooMuch = await submit(next, 'refund', { amount: 26, reason: 'too much' });
    expect(tooMuch.statusCode).toBe(400);
    expect(tooMuch.body).toContain('REFUND_EXCEEDS_TRANSACTION');
    const rest = await submit(next, 'refund', { amount: '', reason: 'the rest' });
    expect(rest.statusCode).toBe(303);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(100);
    const after = (await get(`/admin/users/${user.id}?type=usage`)).body;
    expect(after).not.toContain('data-action="refund"');
    // Someone else's transaction is not this user's to refund.
    const other = await server.fundedUser(10);
    const foreign = await bearerPost(`/admin/users/${other.id}/refund`, {
      transactionId: spent.transactionId,
      reason: 'x',
      nonce: randomUUID(),
    });
    expect(foreign.statusCode).toBe(404);
  });

  it('cancel a gift: the unclaimed escrow returns to its creator, recorded; a repeat answers the same', async () => {
    const user = await server.fundedUser(100);
    const gift = await (await server.userClient(user)).gifts.create.mutate({
      type: 'simple',
      totalCredits: 60,
    });
    const page = (await get(`/admin/users/${user.id}`)).body;
    const cancelled = await submit(page, 'cancel-gift', { reason: 'sent by mistake' });
    expect(cancelled.statusCode).toBe(303);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(100);
    const refund = await server.deps.db
      .selectFrom('credits.transactions')
      .selectAll()
      .where('user_id', '=', user.id)
      .where('type', '=', 'refund')
      .executeTakeFirstOrThrow();
    expect(refund.metadata).toMatchObject({ giftId: gift.id, admin: { reason: 'sent by mistake' } });
    const again = await bearerPost(`/admin/gifts/${gift.id}/cancel`, {
      reason: 'again',
      nonce: randomUUID(),
    });
    expect(again.statusCode).toBe(200);
    expect(again.json()).toMatchObject({
      ok: true,
      replayed: false,
      result: { refunded: 60, replayedByDomain: true },
    });
    expect(await ledgerSum(server.deps.db, user.id)).toBe(100);
  });

  it('release a hold, personal or on a pool', async () => {
    const user = await server.fundedUser(100);
    const hold = await internal().internal.credits.reserve.mutate({
      userId: user.id,
      amount: 70,
      appId: 'hold-app',
      description: 'stuck',
      idempotencyKey: `hold-${randomUUID()}`,
    });
    const page = (await get(`/admin/users/${user.id}`)).body;
    expect(page).toContain(`data-hold-id="${hold.reservationId}"`);
    const released = await submit(page, 'release', { reason: 'client crashed' });
    expect(released.statusCode).toBe(303);
    expect(await internal().internal.credits.balance.query({ userId: user.id })).toMatchObject({
      balance: 100,
      reserved: 0,
    });
    const status = await server.deps.db
      .selectFrom('credits.reservations')
      .select('status')
      .where('id', '=', hold.reservationId)
      .executeTakeFirstOrThrow();
    expect(status.status).toBe('released');
  });

  it('set a member limit (the member must be one); the limit is enforced afterwards', async () => {
    const guildId = `guild-${randomUUID()}`;
    const owner = await server.fundedUser(500);
    const member = newUser();
    server.auth.setRole(guildId, owner.id, 'owner');
    server.auth.setRole(guildId, member.id, 'member');
    await internal().internal.guildPool.init.mutate({ guildId });
    await (await server.userClient(owner)).guild.fund.mutate({ guildId, amount: 300 });
    const page = (await get(`/admin/guilds/${guildId}`)).body;
    const set = await submit(page, 'set-limits', {
      userId: member.id,
      dailyLimit: 5,
      monthlyLimit: '',
      reason: 'abuse',
    });
    expect(set.statusCode).toBe(303);
    expect(set.headers.location).toMatch(new RegExp(`^/admin/guilds/${guildId}\\?done=`));
    const memberClient = await server.userClient(member);
    await expect(
      memberClient.guild.use.mutate({ guildId, amount: 6, appId: 'a', description: 'too much' }),
    ).rejects.toThrow(/daily limit/);
    expect(await memberClient.guild.memberLimits.query({ guildId, userId: member.id })).toMatchObject({
      dailyLimit: 5,
      monthlyLimit: null,
    });
    // A fresh page (fresh nonces): the form above was used.
    const fresh = (await get(`/admin/guilds/${guildId}`)).body;
    const stranger = await submit(fresh, 'set-limits', {
      userId: 'not-a-member',
      dailyLimit: 1,
      reason: 'x',
    });
    expect(stranger.statusCode).toBe(404);
    expect(stranger.body).toContain('MEMBER_NOT_FOUND');
  });

  it('scripts: Bearer calls answer JSON and need no CSRF token; the operator is named by X-Admin-Operator', async () => {
    const user = await server.fundedUser(1);
    const nonce = randomUUID();
    const granted = await bearerPost(`/admin/users/${user.id}/grant`, { amount: 9, reason: 'script', nonce });
    expect(granted.statusCode).toBe(200);
    expect(granted.json()).toMatchObject({
      ok: true,
      replayed: false,
      operator: 'token:ops-script',
      result: { amount: 9 },
    });
    const replay = await bearerPost(`/admin/users/${user.id}/grant`, { amount: 9, reason: 'script', nonce });
    expect(replay.json()).toMatchObject({ ok: true, replayed: true, id: granted.json().id });
    expect(await ledgerSum(server.deps.db, user.id)).toBe(10);
    const bad = await bearerPost(`/admin/users/${user.id}/grant`, {
      amount: -1,
      reason: 'script',
      nonce: randomUUID(),
    });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error.reason).toBe('VALIDATION');
    // Counted in the metrics like the API's grants (the replay under outcome="replay").
    const metrics = (await server.app.inject({ method: 'GET', url: '/metrics' })).body;
    expect(metrics).toMatch(
      /mana_credits_credits_credited_total\{app="admin-console",account="personal",type="grant",outcome="ok"\} \d+/,
    );
    expect(metrics).toMatch(
      /mana_credits_credits_credited_total\{app="admin-console",account="personal",type="grant",outcome="replay"\} \d+/,
    );
    const noNonce = await bearerPost(`/admin/users/${user.id}/grant`, {
      amount: 1,
      reason: 'script',
      nonce: 'short',
    });
    expect(noNonce.statusCode).toBe(400);
  });

  it('the audit table is append-only', async () => {
    const db = server.deps.db;
    await expect(sql`update credits.admin_actions set reason = 'changed'`.execute(db)).rejects.toThrow(
      /immutable/,
    );
    await expect(sql`delete from credits.admin_actions`.execute(db)).rejects.toThrow(/immutable/);
    await expect(sql`truncate credits.admin_actions`.execute(db)).rejects.toThrow(/immutable/);
    const log = (await get('/admin/audit')).body;
    expect(log).toContain('data-table="audit"');
    expect(log).toContain('token:ops-script');
  });
});

describe('one nonce, many submits', () => {
  const newNonce = () => `nonce-${randomUUID()}`;
  const auditRowsOf = (nonce: string) =>
    server.deps.db
      .selectFrom('credits.admin_actions')
      .selectAll()
      .where('idempotency_key', '=', `admin:${nonce}`)
      .execute();
  const adminGrantsOf = (userIds: string[]) =>
    server.deps.db
      .selectFrom('credits.transactions')
      .select('user_id')
      .where('user_id', 'in', userIds)
      .where('type', '=', 'grant')
      .where('app_id', '=', 'admin-console')
      .execute();
  const hold = async (userId: string, amount: number) =>
    (
      await internal().internal.credits.reserve.mutate({
        userId,
        amount,
        appId: 'hold-app',
        description: 'stuck',
        idempotencyKey: `hold-${randomUUID()}`,
      })
    ).reservationId;

  it('sent at once to grant eight users: one grant, audited; the others are a CONFLICT and move nothing', async () => {
    const users = await Promise.all(Array.from({ length: 8 }, () => server.fundedUser(10)));
    const nonce = newNonce();
    const answers = await Promise.all(
      users.map((user) =>
        bearerPost(`/admin/users/${user.id}/grant`, { amount: 5, reason: 'goodwill', nonce }),
      ),
    );
    expect(answers.map((answer) => answer.statusCode).sort()).toEqual([200, ...Array(7).fill(409)]);
    const granted = await adminGrantsOf(users.map((user) => user.id));
    expect(granted).toHaveLength(1);
    expect(await auditRowsOf(nonce)).toHaveLength(1);
    const winner = users[answers.findIndex((answer) => answer.statusCode === 200)]!;
    expect(granted[0]!.user_id).toBe(winner.id);
  });

  it('sent at once to release six holds: one released, audited', async () => {
    const user = await server.fundedUser(100);
    const holds = [];
    for (let i = 0; i < 6; i++) holds.push(await hold(user.id, 10));
    const nonce = newNonce();
    const answers = await Promise.all(
      holds.map((id) => bearerPost(`/admin/holds/${id}/release`, { reason: 'stuck', nonce })),
    );
    expect(answers.map((answer) => answer.statusCode).sort()).toEqual([200, ...Array(5).fill(409)]);
    const statuses = await server.deps.db
      .selectFrom('credits.reservations')
      .select('status')
      .where('id', 'in', holds)
      .execute();
    expect(statuses.filter((row) => row.status === 'released')).toHaveLength(1);
    expect(await auditRowsOf(nonce)).toHaveLength(1);
  });

  it('reused later for another user or another action: a CONFLICT that moves nothing', async () => {
    const a = await server.fundedUser(10);
    const b = await server.fundedUser(10);
    const nonce = newNonce();
    expect(
      (await bearerPost(`/admin/users/${a.id}/grant`, { amount: 5, reason: 'r', nonce })).statusCode,
    ).toBe(200);
    expect(
      (await bearerPost(`/admin/users/${b.id}/grant`, { amount: 5, reason: 'r', nonce })).statusCode,
    ).toBe(409);
    const spent = await use(a.id, 3, 'x');
    const refund = { transactionId: spent.transactionId, reason: 'r', nonce };
    expect((await bearerPost(`/admin/users/${a.id}/refund`, refund)).statusCode).toBe(409);
    const held = await hold(b.id, 4);
    expect((await bearerPost(`/admin/holds/${held}/release`, { reason: 'r', nonce })).statusCode).toBe(409);
    expect(await ledgerSum(server.deps.db, a.id)).toBe(12);
    expect(await ledgerSum(server.deps.db, b.id)).toBe(10);
    expect(await auditRowsOf(nonce)).toHaveLength(1);
  });

  it('a key a caller chose cannot take the nonce first: the console posts under a system key', async () => {
    const user = await server.fundedUser(100);
    const nonce = `ticket-${randomUUID()}`; // scripts choose their nonces (a support ticket, say)
    await (await server.userClient(user)).credits.use.mutate({
      amount: 1,
      appId: 'any-app',
      description: 'takes the key first',
      idempotencyKey: `admin:${nonce}`,
    });
    const granted = await bearerPost(`/admin/users/${user.id}/grant`, {
      amount: 50,
      reason: 'make good',
      nonce,
    });
    expect(granted.statusCode, granted.body).toBe(200);
    expect(await ledgerSum(server.deps.db, user.id)).toBe(149);
  });

  it('hostile action input is a 4xx, never a 5xx', async () => {
    const bodies: Record<string, unknown>[] = [
      { amount: 5, reason: 'r\ud800', nonce: newNonce() },
      { amount: 5, reason: 'r\u0000', nonce: newNonce() },
      { amount: [5], reason: 'r', nonce: newNonce() },
      { amount: 5, reason: ['r'], nonce: newNonce() },
      { amount: 5, reason: 'x'.repeat(100_000), nonce: newNonce() },
      { amount: 5, reason: 'r', nonce: `${newNonce()}\u0000` },
      // A nonce cannot name a system key (U+001F) nor anything but [A-Za-z0-9_-].
      { amount: 5, reason: 'r', nonce: `\u001fpurchase:${randomUUID()}` },
      { amount: 5, reason: 'r', nonce: `a:${randomUUID()}` },
      { amount: '1e3', reason: 'r', nonce: newNonce() },
      { amount: 1e300, reason: 'r', nonce: newNonce() },
    ];
    for (const body of bodies) {
      const response = await bearerPost('/admin/users/hostile-user/grant', body);
      expect(response.statusCode, JSON.stringify(body).slice(0, 80)).toBe(400);
    }
    for (const dailyLimit of [-1, 1.5, 'abc', '1e3', Number.MAX_SAFE_INTEGER + 2, ['1']]) {
      const response = await bearerPost('/admin/guilds/some-guild/limits', {
        userId: 'someone',
        dailyLimit,
        monthlyLimit: null,
        reason: 'r',
        nonce: newNonce(),
      });
      expect(response.statusCode, String(dailyLimit)).toBe(400);
    }
    for (const url of [
      '/admin/users/%ED%A0%80/grant',
      '/admin/users/a%00b/grant',
      '/admin/users/a%2Fb/grant', // ids no user can have: the API's path-safe ids only
      '/admin/users/%2E%2E/grant',
      `/admin/users/${'x'.repeat(300)}/grant`,
      '/admin/holds/not-a-uuid/release',
      '/admin/gifts/not-a-uuid/cancel',
    ]) {
      const response = await bearerPost(url, { amount: 5, reason: 'r', nonce: newNonce() });
      expect(response.statusCode, url).toBeGreaterThanOrEqual(400);
      expect(response.statusCode, url).toBeLessThan(500);
    }
  });
});
