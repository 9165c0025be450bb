import { randomUUID } from 'node:crypto';
import { createDb, type Database, migrateToLatest } from '@mana-credits/db';
import {
  createTRPCClient,
  httpBatchLink,
  httpLink,
  type TRPCClient,
  TRPCClientError,
  type TRPCLink,
  unstable_localLink,
} from '@trpc/client';
import { observable } from '@trpc/server/observable';
import type { FastifyInstance } from 'fastify';
import type { Kysely } from 'kysely';
import superjson from 'superjson';
import { onTestFinished } from 'vitest';
import { buildApp } from '../../src/app.ts';
import { configFrom } from '../../src/config.ts';
import { type AppDeps, createAppDeps } from '../../src/deps.ts';
import { reconcile } from '../../src/domain/audit/reconcile.ts';
import { createContextInner, type InnerContextOptions } from '../../src/trpc/context.ts';
import { type AppRouter, appRouter } from '../../src/trpc/routers/_app.ts';
import { appRouterWithBench } from '../../src/trpc/routers/bench.ts';
import { transformer } from '../../src/trpc/transformer.ts';
import { TestAuthServer, type TestUser } from './auth-server.ts';
import { createTestDatabase, type TestDatabase } from './database.ts';
import type { TcpFaultProxy } from './tcp-proxy.ts';

export const SERVICE_KEY = 'test-service-key-0123456789abcdefghij';

export type Client = TRPCClient<AppRouter>;

/**
 * How a file's tRPC clients reach the server. `http`: over its port, through Fastify and tRPC's HTTP adapter.
 * `in-process`: tRPC's local link into the same router, with the context an HTTP request would get (the same
 * credentials, verified by the same procedures; metrics middleware, error formatting and domain code alike),
 * inputs and outputs passed through the wire format. What it skips is the HTTP layer (Fastify hooks, request
 * ids from headers, body limits, batching, the adapter's onError): several times cheaper per call on PGlite,
 * which is most of the CPU time of files that make hundreds of calls about logic. Files and tests about HTTP,
 * and concurrency tests (real parallel requests), use `http`.
 */
export type Transport = 'http' | 'in-process';

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
  /**
   * A tRPC client acting as `user` (a fresh random user when omitted), over the file's transport unless
   * `transport` says otherwise (`batch` is HTTP's).
   */
  userClient(user?: TestUser, options?: { batch?: boolean; transport?: Transport }): Promise<Client>;
  /** A tRPC client acting as an internal service (transport as for userClient). */
  internalClient(options?: {
    serviceKey?: string;
    appId?: string;
    batch?: boolean;
    transport?: Transport;
  }): Client;
  /**
   * Until the current test ends, clients made by userClient, internalClient and fundedUser use HTTP whatever
   * the file's transport: for concurrency tests, which make real parallel requests.
   */
  httpForThisTest(): void;
  /** A client with arbitrary headers (for auth refusal tests), over HTTP. */
  rawClient(headers: Record<string, string>): Client;
  /**
   * A fresh user holding `amount` credits, granted through the internal API over the file's transport (ledger
   * reason 'test funds').
   */
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

/**
 * Passes each call's input and result through the wire format, as HTTP would: the router gets a copy
 * deserialized by the server's own transformer (which also refuses prototype keys), the test gets a copy of
 * the result, never an object the server still holds.
 */
const wireRoundTrip: TRPCLink<AppRouter> =
  () =>
  ({ op, next }) =>
    observable((observer) => {
      let input: unknown;
      try {
        input =
          op.input === undefined
            ? undefined
            : transformer.input.deserialize(JSON.parse(JSON.stringify(superjson.serialize(op.input))));
      } catch (error) {
        // Only the server's input check throws here (a prototype key): tests of that go over HTTP, where the
        // answer is a formatted 400.
        observer.error(TRPCClientError.from(error as Error));
        return;
      }
      return next({ ...op, input }).subscribe({
        next: (envelope) => {
          const result = envelope.result;
          if ('data' in result && result.data !== undefined) {
            observer.next({
              ...envelope,
              result: { ...result, data: superjson.parse(superjson.stringify(result.data)) },
            });
          } else observer.next(envelope);
        },
        error: (error) => observer.error(error),
        complete: () => observer.complete(),
      });
    });

/** A client calling the app's router in this process (see Transport), presenting `credentials`. */
export function inProcessClient(
  app: FastifyInstance,
  credentials: () => InnerContextOptions | Promise<InnerContextOptions>,
): Client {
  const { deps } = app;
  const router = (deps.config.benchNoop ? appRouterWithBench : appRouter) as typeof appRouter;
  return createTRPCClient<AppRouter>({
    links: [
      wireRoundTrip,
      unstable_localLink({
        router,
        transformer: superjson,
        createContext: async () =>
          createContextInner(deps, {
            requestId: randomUUID(),
            clientIp: '127.0.0.1',
            log: app.log,
            ...(await credentials()),
          }),
      }),
    ],
  });
}

export interface TestServerOptions {
  /**
   * The server reaches Postgres through this proxy (its DATABASE_URL is the proxy's); migrations and the
   * closing reconcile use the direct URL. Postgres only (DATABASE_URL set).
   */
  proxy?: TcpFaultProxy;
  /** How userClient, internalClient and fundedUser call the server (default `http`). */
  transport?: Transport;
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
    LOG_LEVEL: 'error',
    ...database.env,
    ...env,
    ...proxied,
  });
  const deps = await createAppDeps(config, { pglite: database.pglite });
  // Errors only (a 5xx and its cause), on stderr, where vitest shows them beside the test that made them: an
  // unexpected Internal server error in a run is then explained by its log line.
  const app = await buildApp(deps, { closeDepsOnClose: true, logStream: process.stderr });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  const url = `http://127.0.0.1:${port}`;
  let fileTransport = options.transport ?? 'http';
  const internalClient: TestServer['internalClient'] = (options = {}) => {
    const headers = {
      'x-service-key': options.serviceKey ?? SERVICE_KEY,
      'x-app-id': options.appId ?? 'test-suite',
    };
    if (!options.batch && (options.transport ?? fileTransport) === 'in-process') {
      return inProcessClient(app, () => ({
        serviceKey: headers['x-service-key'],
        appId: headers['x-app-id'],
      }));
    }
    return clientFor(url, () => headers, options.batch);
  };
  return {
    url,
    app,
    deps,
    auth,
    database,
    db: direct?.db ?? deps.db,
    async userClient(user = newUser(), options = {}) {
      const token = await auth.sign(user);
      if (!options.batch && (options.transport ?? fileTransport) === 'in-process') {
        return inProcessClient(app, () => ({ bearerToken: token }));
      }
      return clientFor(url, () => ({ authorization: `Bearer ${token}` }), options.batch);
    },
    internalClient,
    httpForThisTest() {
      const before = fileTransport;
      fileTransport = 'http';
      onTestFinished(() => {
        fileTransport = before;
      });
    },
    rawClient(headers) {
      return clientFor(url, () => headers);
    },
    async fundedUser(amount, overrides = {}) {
      const user = newUser(overrides);
      await internalClient({ appId: 'unknown' }).internal.credits.grant.mutate({
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
