import { randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, configFrom } from '../src/config.ts';
import { clientNetworkOf } from '../src/http/client-address.ts';
import type { GuildRole, TestUser } from './helpers/auth-server.ts';
import { failure } from './helpers/errors.ts';
import { ledgerSum } from './helpers/invariants.ts';
import { restCaller } from './helpers/rest.ts';
import { type Client, newUser, SERVICE_KEY, startTestServer, type TestServer } from './helpers/server.ts';

/**
 * Hardening (issue 13 item 6): guild admins and their own limits, email_verified on personalized gifts,
 * client addresses behind a proxy (TRUST_PROXY) and ids that would break the membership URL.
 */
let server: TestServer;
beforeAll(async () => {
  server = await startTestServer({ MEMBERSHIP_CACHE_SECONDS: '0' });
});
afterAll(async () => {
  await server.close();
});

const internal = () => server.internalClient();

async function newGuild(): Promise<string> {
  const guildId = `guild-${randomUUID()}`;
  await internal().internal.guildPool.init.mutate({ guildId });
  return guildId;
}

async function join(
  guildId: string,
  role: GuildRole,
): Promise<{ id: string; client: Client; token: string }> {
  const user = newUser();
  server.auth.setRole(guildId, user.id, role);
  const token = await server.auth.sign(user);
  return { id: user.id, client: await server.userClient(user), token };
}

describe('guild.setMemberLimits: an admin cannot raise their own limits', () => {
  it('owners set anyone’s limits; admins only those of plain members', async () => {
    const guildId = await newGuild();
    const owner = await join(guildId, 'owner');
    const admin = await join(guildId, 'admin');
    const otherAdmin = await join(guildId, 'admin');
    const member = await join(guildId, 'member');
    const limits = (userId: string, dailyLimit: number | null, monthlyLimit: number | null = null) => ({
      guildId,
      userId,
      dailyLimit,
      monthlyLimit,
    });

    // The owner caps the admin.
    await owner.client.guild.setMemberLimits.mutate(limits(admin.id, 5, 50));

    // The admin cannot lift (or otherwise change) their own cap…
    for (const change of [limits(admin.id, null), limits(admin.id, 6, 50), limits(admin.id, 0, 0)]) {
      const self = await failure(admin.client.guild.setMemberLimits.mutate(change));
      expect(self.data).toMatchObject({ code: 'FORBIDDEN', httpStatus: 403, reason: 'GUILD_OWNER_REQUIRED' });
      expect(self.message).toMatch(/own limits/);
    }
    // …nor another admin's (two admins could otherwise lift each other's), nor the owner's.
    for (const target of [otherAdmin.id, owner.id]) {
      const refused = await failure(admin.client.guild.setMemberLimits.mutate(limits(target, 1)));
      expect(refused.data).toMatchObject({ code: 'FORBIDDEN', reason: 'GUILD_OWNER_REQUIRED' });
    }
    expect(await admin.client.guild.memberLimits.query({ guildId, userId: admin.id })).toMatchObject({
      dailyLimit: 5,
      monthlyLimit: 50,
    });
    expect(await owner.client.guild.memberLimits.query({ guildId, userId: otherAdmin.id })).toMatchObject({
      dailyLimit: null,
      monthlyLimit: null,
    });

    // Over REST the same: 403 with the reason.
    const { call } = await restCaller(server);
    const rest = await call('PUT /api/v1/credits/guild/{guildId}/members/{userId}/limits', {
      params: { guildId, userId: admin.id },
      token: admin.token,
      body: { dailyLimit: null, monthlyLimit: null },
    });
    expect(rest.status).toBe(403);
    expect(rest.body.error.reason).toBe('GUILD_OWNER_REQUIRED');

    // What stays allowed: an admin caps a member; the owner changes an admin's and their own limits.
    expect(await admin.client.guild.setMemberLimits.mutate(limits(member.id, 3))).toMatchObject({
      dailyLimit: 3,
    });
    expect(await owner.client.guild.setMemberLimits.mutate(limits(admin.id, null))).toMatchObject({
      dailyLimit: null,
      monthlyLimit: null,
    });
    expect(await owner.client.guild.setMemberLimits.mutate(limits(owner.id, 100))).toMatchObject({
      dailyLimit: 100,
    });
  });
});

describe('personalized gifts honour email_verified', () => {
  async function personalizedGiftFor(email: string) {
    const creator = await server.fundedUser(100);
    const client = await server.userClient(creator);
    return client.gifts.create.mutate({ type: 'personalized', totalCredits: 10, targetEmail: email });
  }
  const redeemAs = async (user: TestUser, claims: Record<string, unknown>, code: string) => {
    const token = await server.auth.sign(user, {}, claims);
    return server.rawClient({ authorization: `Bearer ${token}` }).gifts.redeem.mutate({ code });
  };

  it('email_verified false → FORBIDDEN (EMAIL_NOT_VERIFIED), nothing moves; true → redeemed', async () => {
    const email = `alice-${randomUUID()}@example.test`;
    const alice = newUser({ email });
    const gift = await personalizedGiftFor(email);

    for (const claim of [false, 'false']) {
      const refused = await failure(redeemAs(alice, { email_verified: claim }, gift.code));
      expect(refused.data).toMatchObject({
        code: 'FORBIDDEN',
        httpStatus: 403,
        reason: 'EMAIL_NOT_VERIFIED',
      });
      expect(refused.message).toMatch(/verif/i);
    }
    expect(await ledgerSum(server.deps.db, alice.id)).toBe(0);
    expect((await server.rawClient({}).gifts.info.query({ code: gift.code })).status).toBe('active');

    const result = await redeemAs(alice, { email_verified: true }, gift.code);
    expect(result).toMatchObject({ giftId: gift.id, creditsReceived: 10, balance: 10 });
  });

  it('an unverified user learns nothing about whom a gift is for', async () => {
    const gift = await personalizedGiftFor(`bob-${randomUUID()}@example.test`);
    const mallory = newUser();
    const refused = await failure(redeemAs(mallory, { email_verified: false }, gift.code));
    expect(refused.data?.reason).toBe('EMAIL_NOT_VERIFIED');
    expect(refused.message).not.toMatch(/bob/);
  });

  it('without the claim, the email alone decides (as before); other gift types ignore it', async () => {
    const email = `carol-${randomUUID()}@example.test`;
    const carol = newUser({ email });
    const gift = await personalizedGiftFor(email);
    expect(await redeemAs(carol, {}, gift.code)).toMatchObject({ creditsReceived: 10 });

    const creator = await server.fundedUser(10);
    const simple = await (await server.userClient(creator)).gifts.create.mutate({
      type: 'simple',
      totalCredits: 10,
    });
    expect(await redeemAs(newUser(), { email_verified: false }, simple.code)).toMatchObject({
      creditsReceived: 10,
    });
  });

  it('internal.gifts.redeemPending (a service call) stays as it is', async () => {
    const email = `dave-${randomUUID()}@example.test`;
    await personalizedGiftFor(email);
    const dave = newUser({ email });
    expect(await internal().internal.gifts.redeemPending.mutate({ userId: dave.id, email })).toEqual({
      redeemed: 1,
      totalCredits: 10,
    });
  });
});

describe('TRUST_PROXY', () => {
  it('is read like Fastify’s trustProxy: unset/false, true, a hop count, or addresses and CIDRs', () => {
    const trust = (value: string | undefined) => configFrom({ TRUST_PROXY: value }).trustProxy;
    expect(trust(undefined)).toBe(false);
    expect(trust('')).toBe(false);
    expect(trust('false')).toBe(false);
    expect(trust('0')).toBe(false);
    expect(trust('true')).toBe(true);
    expect(trust('2')).toBe(2);
    expect(trust('127.0.0.1')).toEqual(['127.0.0.1']);
    expect(trust(' 10.0.0.0/8, 192.168.1.7 ,::1, fd00::/8 ')).toEqual([
      '10.0.0.0/8',
      '192.168.1.7',
      '::1',
      'fd00::/8',
    ]);
    expect(trust('loopback, uniquelocal')).toEqual(['loopback', 'uniquelocal']);
    for (const bad of ['nonsense', '10.0.0.0/33', '300.1.1.1', '1.2.3.4,', '-1', '1.5', 'true,10.0.0.1']) {
      expect(() => configFrom({ TRUST_PROXY: bad }), bad).toThrow(ConfigError);
      expect(() => configFrom({ TRUST_PROXY: bad }), bad).toThrow(/TRUST_PROXY/);
    }
  });

  /**
   * Waits out the last seconds of a rate-limit minute, so a burst of lookups (well under a second) stays in
   * one window. Three seconds of margin (it was ten): a call waits one time in twenty, and at most 3 s.
   */
  async function startOfAWindow() {
    const intoMinute = Date.now() % 60_000;
    if (intoMinute > 57_000) await new Promise((resolve) => setTimeout(resolve, 60_000 - intoMinute + 250));
  }

  async function giftOn(target: TestServer) {
    const creator = await target.fundedUser(10);
    return (await target.userClient(creator)).gifts.create.mutate({ type: 'simple', totalCredits: 10 });
  }

  const info = (target: TestServer, code: string, forwardedFor?: string) =>
    target
      .rawClient(forwardedFor ? { 'x-forwarded-for': forwardedFor } : {})
      .gifts.info.query({ code })
      .then(
        () => 'ok',
        (error: { data?: { code?: string } }) => String(error.data?.code),
      );
  const page = async (target: TestServer, code: string, forwardedFor: string) =>
    (await fetch(`${target.url}/g/${code}`, { headers: { 'x-forwarded-for': forwardedFor } })).status;

  it('unset: X-Forwarded-For is ignored, so a new header per request does not dodge the gift-info limit', async () => {
    const direct = await startTestServer({ GIFT_INFO_RATE_LIMIT_PER_MINUTE: '3' });
    try {
      const { code } = await giftOn(direct);
      await startOfAWindow();
      const outcomes = [];
      for (let i = 1; i <= 4; i++) outcomes.push(await info(direct, code, `203.0.113.${i}`));
      expect(outcomes).toEqual(['ok', 'ok', 'ok', 'TOO_MANY_REQUESTS']);
      expect(await page(direct, code, '198.51.100.77')).toBe(429);
    } finally {
      await direct.close();
    }
  });

  it('set to the proxy’s address: the forwarded client address counts, and prepending addresses does not help', async () => {
    const proxied = await startTestServer({ GIFT_INFO_RATE_LIMIT_PER_MINUTE: '3', TRUST_PROXY: '127.0.0.1' });
    try {
      const { code } = await giftOn(proxied);
      await startOfAWindow();
      const client = `203.0.113.${10 + Math.floor(Math.random() * 200)}`;
      const outcomes = [];
      for (let i = 0; i < 3; i++) outcomes.push(await info(proxied, code, client));
      // The proxy appends the address it saw; whatever the client wrote before it is not trusted.
      outcomes.push(await info(proxied, code, `198.51.100.1, ${client}`));
      expect(outcomes).toEqual(['ok', 'ok', 'ok', 'TOO_MANY_REQUESTS']);
      expect(await page(proxied, code, client)).toBe(429);
      // Another client behind the same proxy has its own budget, on both the procedure and the page.
      expect(await info(proxied, code, '198.51.100.2')).toBe('ok');
      expect(await page(proxied, code, '198.51.100.3')).toBe(200);
      // Without the header the connection's own address counts.
      expect(await info(proxied, code)).toBe('ok');
      // An IPv6 client counts by its /64 (it may take a new address inside it for every request; found by a
      // security review), and an IPv4-mapped address as its IPv4 address.
      const network = `2001:db8:${(Math.floor(Math.random() * 0xffff) + 1).toString(16)}:1`;
      const rotating = [];
      for (let i = 1; i <= 4; i++) rotating.push(await info(proxied, code, `${network}::${i.toString(16)}`));
      expect(rotating).toEqual(['ok', 'ok', 'ok', 'TOO_MANY_REQUESTS']);
      expect(await page(proxied, code, `${network}:ffff:ffff:ffff:ffff`)).toBe(429);
      expect(await info(proxied, code, `2001:db8:ffff:2::1`)).toBe('ok');
      expect(await page(proxied, code, `::ffff:${client}`)).toBe(429);
    } finally {
      await proxied.close();
    }
  });

  it('an IPv6 client is its /64; an IPv4-mapped address is its IPv4 address', () => {
    expect(clientNetworkOf('203.0.113.7')).toBe('203.0.113.7');
    expect(clientNetworkOf('2001:db8:1:2:3:4:5:6')).toBe('2001:db8:1:2::/64');
    expect(clientNetworkOf('2001:DB8:1:2::9')).toBe('2001:db8:1:2::/64');
    expect(clientNetworkOf('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(clientNetworkOf('::1')).toBe('0:0:0:0::/64');
    expect(clientNetworkOf('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(clientNetworkOf('::ffff:198.51.100.9')).toBe('198.51.100.9');
    expect(clientNetworkOf('::ffff:c633:6409')).toBe('198.51.100.9');
    expect(clientNetworkOf('64:ff9b::198.51.100.9')).toBe('64:ff9b:0:0::/64');
  });

  it('true: a forwarded value that is no address (kilobytes of it) counts as the connection’s address, never a 500', async () => {
    const open = await startTestServer({ GIFT_INFO_RATE_LIMIT_PER_MINUTE: '3', TRUST_PROXY: 'true' });
    try {
      const { code } = await giftOn(open);
      await startOfAWindow();
      // Random, so Postgres cannot compress it below its index row limit (~2.7 kB).
      const junk = () => randomBytes(3000).toString('base64');
      const outcomes = [await info(open, code, junk()), await info(open, code, junk())];
      const rest = await fetch(`${open.url}/api/v1/gifts/${code}`, {
        headers: { 'x-forwarded-for': junk() },
      });
      // Three lookups from one connection address: the fourth, with yet another junk value, is refused.
      outcomes.push(String(rest.status), String(await page(open, code, junk())));
      expect(outcomes).toEqual(['ok', 'ok', '200', '429']);
      // A real forwarded address still has its own budget, also as proxies that add a port forward it.
      expect(await info(open, code, '203.0.113.250')).toBe('ok');
      const withPorts = [];
      for (const port of [1001, 1002, 1003, 1004])
        withPorts.push(await info(open, code, `203.0.113.251:${port}`));
      expect(withPorts).toEqual(['ok', 'ok', 'ok', 'TOO_MANY_REQUESTS']);
      expect(await info(open, code, '[2001:db8::7]:443')).toBe('ok');
    } finally {
      await open.close();
    }
  });
});

describe('ids that would break the membership URL are refused by validation', () => {
  const UNSAFE = [
    '.',
    '..',
    'a/b',
    '../other',
    'a\\b',
    'a?b',
    'a#b',
    '50%',
    '%2e%2e',
    'a b',
    ' x',
    'x\u00a0y',
  ];

  it('guildId: 400 VALIDATION naming guildId, before anyone asks the auth service', async () => {
    const member = await server.userClient();
    const asked = server.auth.membershipRequests;
    for (const guildId of UNSAFE) {
      for (const call of [
        () => member.guild.balance.query({ guildId }),
        () => member.guild.fund.mutate({ guildId, amount: 1 }),
        () => member.credits.use.mutate({ guildId, amount: 1, appId: 'a', description: 'd' }),
        () => internal().internal.guildPool.init.mutate({ guildId }),
        () =>
          internal().internal.credits.reserve.mutate({
            userId: 'u',
            guildId,
            amount: 1,
            appId: 'a',
            description: 'd',
            idempotencyKey: 'k',
          }),
      ]) {
        const error = await failure(call());
        expect(error.data, JSON.stringify(guildId)).toMatchObject({ httpStatus: 400, reason: 'VALIDATION' });
        expect(error.message, JSON.stringify(guildId)).toContain('guildId');
      }
    }
    expect(server.auth.membershipRequests).toBe(asked);
  });

  it('userId: the same rule, wherever a user id can reach the membership URL', async () => {
    const guildId = await newGuild();
    const owner = await join(guildId, 'owner');
    const asked = server.auth.membershipRequests;
    for (const userId of UNSAFE) {
      for (const call of [
        () => owner.client.guild.memberLimits.query({ guildId, userId }),
        () => owner.client.guild.setMemberLimits.mutate({ guildId, userId, dailyLimit: 1, monthlyLimit: 1 }),
        () =>
          internal().internal.credits.use.mutate({
            userId,
            guildId,
            amount: 1,
            appId: 'a',
            description: 'd',
          }),
      ]) {
        const error = await failure(call());
        expect(error.data, JSON.stringify(userId)).toMatchObject({ httpStatus: 400, reason: 'VALIDATION' });
        expect(error.message, JSON.stringify(userId)).toContain('userId');
      }
    }
    expect(server.auth.membershipRequests).toBe(asked);
  });

  /** A GET with the path sent exactly as written (fetch would resolve %2E%2E segments before sending). */
  function rawGet(path: string, headers: Record<string, string>) {
    const { hostname, port } = new URL(server.url);
    return new Promise<{ status: number; body: { error?: { message?: string; reason?: string } } }>(
      (resolve, reject) => {
        const request = http.request({ hostname, port, path, method: 'GET', headers }, (response) => {
          let text = '';
          response.setEncoding('utf8');
          response.on('data', (chunk: string) => {
            text += chunk;
          });
          response.on('end', () => resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) }));
        });
        request.on('error', reject);
        request.end();
      },
    );
  }

  it('over REST: an encoded dot segment or slash in a path parameter is a 400 naming it', async () => {
    const token = await server.auth.sign(newUser());
    const asked = server.auth.membershipRequests;
    const cases: [string, Record<string, string>, string][] = [
      ['/api/v1/credits/guild/%2E%2E/balance', { authorization: `Bearer ${token}` }, 'guildId'],
      ['/api/v1/credits/guild/%2e/balance', { authorization: `Bearer ${token}` }, 'guildId'],
      ['/api/v1/credits/guild/a%2Fb/balance', { authorization: `Bearer ${token}` }, 'guildId'],
      ['/api/v1/credits/guild/a%20b/transactions', { authorization: `Bearer ${token}` }, 'guildId'],
      ['/api/v1/credits/guild/guild-1/members/%2E%2E/limits', { authorization: `Bearer ${token}` }, 'userId'],
      ['/api/v1/internal/credits/balance/a%2Fb', { 'x-service-key': SERVICE_KEY }, 'userId'],
      ['/api/v1/internal/credits/balance/%2E%2E', { 'x-service-key': SERVICE_KEY }, 'userId'],
    ];
    for (const [path, headers, field] of cases) {
      const answer = await rawGet(path, headers);
      expect(answer.status, path).toBe(400);
      expect(answer.body.error?.reason, path).toBe('VALIDATION');
      expect(answer.body.error?.message, path).toContain(`${field}:`);
    }
    expect(server.auth.membershipRequests).toBe(asked);
  });

  it('a token whose subject is a dot segment is simply not a member; the auth service is not asked', async () => {
    const guildId = await newGuild();
    const asked = server.auth.membershipRequests;
    // (Other characters in a subject are percent-encoded into its own segment; see the membership client tests.)
    for (const sub of ['..', '.']) {
      server.auth.setRole(guildId, sub, 'owner');
      const token = await server.auth.sign({ id: sub });
      const error = await failure(
        server.rawClient({ authorization: `Bearer ${token}` }).guild.balance.query({ guildId }),
      );
      expect(error.data).toMatchObject({ code: 'FORBIDDEN', reason: 'NOT_A_GUILD_MEMBER' });
    }
    expect(server.auth.membershipRequests).toBe(asked);
  });

  it('ordinary ids still work', async () => {
    for (const guildId of [`guild-${randomUUID()}`, 'org_42:team.alpha@example', 'Ünïcødé-gilde']) {
      await internal().internal.guildPool.init.mutate({ guildId });
      const owner = await join(guildId, 'owner');
      expect(await owner.client.guild.balance.query({ guildId })).toMatchObject({ guildId, balance: 0 });
      expect(await owner.client.guild.memberLimits.query({ guildId, userId: owner.id })).toMatchObject({
        dailyLimit: null,
      });
    }
  });
});
