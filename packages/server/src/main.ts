import { buildApp } from './app.ts';
import { ConfigError, loadConfig } from './config.ts';
import { createAppDeps } from './deps.ts';

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
  const deps = await createAppDeps(config);
  const app = await buildApp(deps, { closeDepsOnClose: true });

  let closing = false;
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
      await app.close();
      process.exit(0);
    } catch (error) {
      app.log.error({ err: error }, 'shutdown failed');
      process.exit(1);
    }
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));

  await app.listen({ port: config.port, host: config.host });
  app.log.info(
    { database: deps.dbHandle.kind, port: config.port },
    deps.dbHandle.kind === 'pglite' ? `embedded database in ${config.dataDir}` : 'connected to Postgres',
  );
}

main().catch((error) => {
  console.error('mana-credits failed to start:', error instanceof Error ? error.message : error);
  process.exit(1);
});
