import { createDb, type Database, type DbHandle, migrateToLatest } from '@mana-credits/db';
import type { FastifyBaseLogger } from 'fastify';
import type { Kysely } from 'kysely';
import { createJwtVerifier, type VerifyUserToken } from './auth/jwt.ts';
import { createServiceKeyVerifier } from './auth/service-key.ts';
import type { Config } from './config.ts';
import { createMetrics, type Metrics } from './metrics.ts';

/** Everything a request handler may use; built once per process by createAppDeps (or by tests). */
export interface AppDeps {
  config: Readonly<Config>;
  db: Kysely<Database>;
  dbHandle: DbHandle;
  verifyUserToken: VerifyUserToken;
  verifyServiceKey: (presented: string | undefined) => boolean;
  /** This app's Prometheus metrics (its own registry). */
  metrics: Metrics;
}

export type Logger = FastifyBaseLogger;

export interface CreateAppDepsOptions {
  /** Run migrations before returning (default: config.migrateOnStart). main.ts runs them after listening. */
  migrate?: boolean;
}

export async function createAppDeps(
  config: Readonly<Config>,
  options: CreateAppDepsOptions = {},
): Promise<AppDeps> {
  const dbHandle = await createDb({
    databaseUrl: config.databaseUrl,
    dataDir: config.dataDir,
    poolSize: config.dbPoolSize,
  });
  try {
    if (options.migrate ?? config.migrateOnStart) await migrateToLatest(dbHandle.db);
  } catch (error) {
    await dbHandle.close();
    throw error;
  }
  return {
    config,
    db: dbHandle.db,
    dbHandle,
    verifyUserToken: createJwtVerifier({
      jwksUrl: config.jwksUrl,
      issuer: config.jwtIssuer,
      audience: config.jwtAudience,
    }),
    verifyServiceKey: createServiceKeyVerifier(config.serviceKeys),
    metrics: createMetrics(dbHandle),
  };
}
