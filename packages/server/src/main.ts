import { setTimeout as sleep } from 'node:timers/promises';
import { buildApp } from './app.ts';
import { ConfigError, loadConfig } from './config.ts';
import { createAppDeps, prepareDatabase } from './deps.ts';

async function main() {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(error.message);
      process.exit(1);
    }
    throw error;
  }
  // The database is prepared (prepareDatabase: migrations, start-up settings) after listening, below.
  const deps = await createAppDeps(config, { migrate: false });
  const app = await buildApp(deps, { closeDepsOnClose: true });
  if (config.nodeEnv === 'production' && !config.metricsToken) {
    app.log.warn('METRICS_TOKEN is unset: /metrics is open to anyone who can reach the port');
  }

  let migrations: Promise<unknown> = Promise.resolve();
  let closing = false;
  /**
   * SIGTERM: /ready turns 503 at once, requests are still served for SHUTDOWN_DRAIN_MS (so a load balancer
   * can notice), then the listener closes, in-flight requests finish, the pool closes and the process exits
   * 0. The whole sequence is bounded by SHUTDOWN_TIMEOUT_MS; past it the process exits 1.
   */
  const shutdown = async (signal: string) => {
    if (closing) return;
    closing = true;
    app.readiness.accepting = false;
    app.log.info({ signal }, 'shutting down: finishing in-flight requests');
    const timer = setTimeout(() => {
      app.log.error('shutdown timed out; exiting');
      process.exit(1);
    }, config.shutdownTimeoutMs);
    timer.unref();
    try {
      // A migration is never cut off half-way (it would roll back, but the next start would redo it).
      await migrations.catch(() => {});
      if (config.shutdownDrainMs > 0) await sleep(config.shutdownDrainMs);
      await app.close();
      app.log.info('shut down cleanly');
      process.exit(0);
    } catch (error) {
      app.log.error({ err: error }, 'shutdown failed');
      process.exit(1);
    }
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));

  // Without migrations preparing the database is one write, done before listening (ready at once, as before);
  // migrations run after listening, so /health answers and /ready says 'migrating' meanwhile (other requests
  // are answered 503 MIGRATING with Retry-After).
  if (!config.migrateOnStart) await prepareDatabase(deps.db, config);
  app.readiness.migrating = config.migrateOnStart;
  await app.listen({ port: config.port, host: config.host });
  const address = app.server.address();
  app.log.info(
    {
      database: deps.dbHandle.kind,
      port: typeof address === 'object' && address ? address.port : config.port,
    },
    deps.dbHandle.kind === 'pglite' ? `embedded database in ${config.dataDir}` : 'connected to Postgres',
  );

  if (!config.migrateOnStart) return;
  migrations = prepareDatabase(deps.db, config);
  try {
    await migrations;
  } catch (error) {
    app.log.fatal({ err: error }, 'migrations failed');
    if (!closing) {
      closing = true;
      await app.close().catch(() => {});
      process.exit(1);
    }
    return;
  }
  app.readiness.migrating = false;
  app.log.info('migrations done: ready');
}

main().catch((error) => {
  console.error('mana-credits failed to start:', error instanceof Error ? error.message : error);
  process.exit(1);
});
