import { randomUUID } from 'node:crypto';
import { createDb, type Database, migrateToLatest } from '@mana-credits/db';
import { createTRPCClient, httpBatchLink, httpLink, type TRPCClient } from '@trpc/client';
import type { FastifyInstance } from 'fastify';
import type { Kysely } from 'kysely';
import superjson from 'superjson';
import { buildApp } from '../../src/app.ts';
import { configFrom } from '../../src/config.ts';
import { type AppDeps, createAppDeps } from '../../src/deps.ts';
import { reconcile } from '../../src/domain/audit/reconcile.ts';
import type { AppRouter } from '../../src/trpc/routers/_app.ts';
import { TestAuthServer, type TestUser } from './auth-server.ts';
import { createTestDatabase, type TestDatabase } from './database.ts';
import type { TcpFaultProxy } from './tcp-proxy.ts';

export const SERVICE_KEY = 'test-service-key-0123456789abcdefghij';

export type Client = TRPCClient<AppRouter>;

export interface TestServer {
  url: string;
  app: FastifyInstance;
  deps: AppDeps;
  auth: TestAuthServer;
  database: TestDatabase;
  /**
   * A connection straight to the database (not through `options.proxy`): for assertions while the proxy cuts
   * connections. Without a proxy it is deps.db.
   */
  db: Kysely<Database>;
  /** A tRPC client acting as `user` (a fresh random user when omitted). */
  userClient(user?: TestUser, options?: { batch?: boolean }): Promise<Client>;
  /** A tRPC client acting as an internal service. */
  internalClient(options?: { serviceKey?: string; appId?: string; batch?: boolean }): Client;
  /** A client with arbitrary headers (for auth refusal tests). */
  rawClient(headers: Record<string, string>): Client;
  /** A fresh user holding `amount` credits, granted through the internal API (ledger reason 'test funds'). */
  fundedUser(amount: number, overrides?: Partial<TestUser>): Promise<TestUser & { id: string }>;
  close(): Promise<void>;
}

export function newUser(overrides: Partial<TestUser> = {}): TestUser & { id: string } {
  const id = overrides.id ?? `user-${randomUUID()}`;
  return { email: `${id}@example.test`, name: `Test ${id.slice(5, 13)}`, ...overrides, id };
}

export function clientFor(
  url: string,
  headers: () => Record<string, string> | Promise<Record<string, string>>,
  batch = false,
): Client {
  const link = batch
    ? httpBatchLink({ url: `${url}/trpc`, transformer: superjson, headers, maxItems: 50 })
    : httpLink({ url: `${url}/trpc`, transformer: superjson, headers });
  return createTRPCClient<AppRouter>({ links: [link] });
}

export interface TestServerOptions {
  /**
   * The server reaches Postgres through this proxy (its DATABASE_URL is the proxy's); migrations and the
   * closing reconcile use the direct URL. Postgres only (DATABASE_URL set).
   */
  proxy?: TcpFaultProxy;
}

/** Starts the real server on a fresh database with a real auth server beside it, on port 0. */
export async function startTestServer(
  env: Record<string, string | undefined> = {},
  options: TestServerOptions = {},
): Promise<TestServer> {
  const auth = await TestAuthServer.start();
  const database = await createTestDatabase();
  let direct: Awaited<ReturnType<typeof createDb>> | undefined;
  const proxied: Record<string, string> = {};
  if (options.proxy) {
    if (!database.url) throw new Error('a proxied test server needs DATABASE_URL (Postgres)');
    direct = await createDb({ databaseUrl: database.url, poolSize: 2 });
    await migrateToLatest(direct.db);
    Object.assign(proxied, { DATABASE_URL: options.proxy.urlFor(database.url), MIGRATE_ON_START: 'false' });
  }
  const config = configFrom({
    MANA_CORE_AUTH_URL: auth.url,
    MANA_CORE_SERVICE_KEY: SERVICE_KEY,
    PORT: '0',
    HOST: '127.0.0.1',
    DB_POOL_SIZE: '10',
    ...database.env,
    ...env,
    ...proxied,
  });
  const deps = await createAppDeps(config, { pglite: database.pglite });
  const app = await buildApp(deps, { closeDepsOnClose: true, logger: false });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    app,
    deps,
    auth,
    database,
    db: direct?.db ?? deps.db,
    async userClient(user = newUser(), options = {}) {
      const token = await auth.sign(user);
      return clientFor(url, () => ({ authorization: `Bearer ${token}` }), options.batch);
    },
    internalClient(options = {}) {
      return clientFor(
        url,
        () => ({
          'x-service-key': options.serviceKey ?? SERVICE_KEY,
          'x-app-id': options.appId ?? 'test-suite',
        }),
        options.batch,
      );
    },
    rawClient(headers) {
      return clientFor(url, () => headers);
    },
    async fundedUser(amount, overrides = {}) {
      const user = newUser(overrides);
      await clientFor(url, () => ({ 'x-service-key': SERVICE_KEY })).internal.credits.grant.mutate({
        userId: user.id,
        amount,
        reason: 'test funds',
        idempotencyKey: `fund-${randomUUID()}`,
      });
      return user;
    },
    async close() {
      // Every test file ends with a full reconcile of its database: any drift fails the file.
      const report = await reconcile(direct?.db ?? deps.db);
      if (!report.ok) {
        const drift = report.checks.filter((check) => !check.ok);
        await app.close();
        await direct?.close();
        throw new Error(`reconcile found drift: ${JSON.stringify(drift, null, 2)}`);
      }
      await app.close();
      await direct?.close();
      await auth.close();
      await database.drop();
    },
  };
}
