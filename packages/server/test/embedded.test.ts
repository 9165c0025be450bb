import { rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.ts';
import { ConfigError, configFrom, loadConfig } from '../src/config.ts';
import { createAppDeps } from '../src/deps.ts';
import { pgliteDataDir } from './helpers/database.ts';
import { clientFor, SERVICE_KEY } from './helpers/server.ts';

// On PGlite runs global setup has already run initdb (in memory) and the directory starts from its dump, as
// initdb left it; with DATABASE_URL set (CI) it starts empty and the first start below runs initdb on disk.
// Either way the first start migrates it, and the second finds what the first left.
let dataDir: string;
beforeAll(async () => {
  dataDir = await pgliteDataDir({ empty: true });
});
afterAll(() => {
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

async function startEmbedded() {
  // DATABASE_URL is cleared on purpose: this test is about the embedded default.
  const config = configFrom({ DATABASE_URL: '', DATA_DIR: dataDir, MANA_CORE_SERVICE_KEY: SERVICE_KEY });
  const app = await buildApp(await createAppDeps(config), { closeDepsOnClose: true, logger: false });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  const url = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  return {
    app,
    client: clientFor(url, () => ({ 'x-service-key': SERVICE_KEY })),
    kind: app.deps.dbHandle.kind,
  };
}

describe('embedded database (PGlite)', () => {
  it('keeps data across a restart', async () => {
    const first = await startEmbedded();
    expect(first.kind).toBe('pglite');
    await first.client.internal.credits.grant.mutate({
      userId: 'keeper',
      amount: 42,
      reason: 'x',
      idempotencyKey: 'k',
    });
    await first.client.internal.credits.use.mutate({
      userId: 'keeper',
      amount: 2,
      appId: 'a',
      description: 'd',
    });
    await first.app.close();

    const second = await startEmbedded();
    expect(await second.client.internal.credits.balance.query({ userId: 'keeper' })).toMatchObject({
      balance: 40,
    });
    // The idempotency record survived too.
    const replay = await second.client.internal.credits.grant.mutate({
      userId: 'keeper',
      amount: 42,
      reason: 'x',
      idempotencyKey: 'k',
    });
    expect(replay.balance).toBe(42);
    await second.app.close();
  });
});

describe('configuration', () => {
  it('names a bad variable', () => {
    expect(() => loadConfig({ PORT: 'eighty' })).toThrow(/PORT/);
    expect(() => loadConfig({ MIGRATE_ON_START: 'maybe' })).toThrow(/MIGRATE_ON_START/);
  });

  it('in production requires long service keys, an auth URL and a base URL: no defaults', () => {
    try {
      loadConfig({ NODE_ENV: 'production', MANA_CORE_SERVICE_KEY: 'short' });
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      const message = (error as Error).message;
      expect(message).toMatch(/MANA_CORE_SERVICE_KEY: key #1 is shorter than 32/);
      expect(message).toMatch(/MANA_CORE_AUTH_URL/);
      expect(message).toMatch(/BASE_URL/);
    }
    expect(() => loadConfig({ NODE_ENV: 'production' })).toThrow(/MANA_CORE_SERVICE_KEY: required/);
  });

  it('derives JWKS URL and issuer from the auth URL and splits rotated keys', () => {
    const config = loadConfig({
      MANA_CORE_AUTH_URL: 'https://auth.example/',
      MANA_CORE_SERVICE_KEY: 'a, b ,c',
      CORS_ORIGINS: 'https://a.example, https://b.example',
    });
    expect(config.jwksUrl).toBe('https://auth.example/api/auth/jwks');
    expect(config.jwtIssuer).toBe('https://auth.example');
    expect(config.jwtAudience).toBe('manacore');
    expect(config.serviceKeys).toEqual(['a', 'b', 'c']);
    expect(config.corsOrigins).toEqual(['https://a.example', 'https://b.example']);
    expect(config.port).toBe(3060);
    expect(Object.isFrozen(config)).toBe(true);
  });
});
