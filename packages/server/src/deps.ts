import {
  createDb,
  type Database,
  type DbConfig,
  type DbHandle,
  migrateToLatest,
  oldestUndeliveredEventAge,
  writeDefaultLowBalanceThreshold,
} from '@mana-credits/db';
import type { FastifyBaseLogger } from 'fastify';
import type { Kysely } from 'kysely';
import type Stripe from 'stripe';
import { createJwtVerifier, type VerifyUserToken } from './auth/jwt.ts';
import { createServiceKeyVerifier } from './auth/service-key.ts';
import type { Config } from './config.ts';
import type { MovementResult } from './domain/credits/mappers.ts';
import { type SpendInput, spendCredits } from './domain/credits/personal.ts';
import { SpendCoalescer } from './domain/credits/spend-coalescer.ts';
import { createMembershipClient, type MembershipClient } from './domain/guild/membership.ts';
import { coalescedPoolSpender } from './domain/guild/pool-coalescer.ts';
import { type PoolSpender, spendFromPool } from './domain/guild/pools.ts';
import { createStripeClient } from './domain/stripe/client.ts';
import { createMetrics, type Metrics } from './metrics.ts';

/** Everything a request handler may use; built once per process by createAppDeps (or by tests). */
export interface AppDeps {
  config: Readonly<Config>;
  db: Kysely<Database>;
  dbHandle: DbHandle;
  verifyUserToken: VerifyUserToken;
  verifyServiceKey: (presented: string | undefined) => boolean;
  /** Personal spends go through here: grouped into batches under load, or one by one when disabled. */
  spend: (input: SpendInput) => Promise<MovementResult>;
  /** Members' pool spends go through here: coalesced per hot pool, or one by one when disabled. */
  spendFromPool: PoolSpender;
  /** Absent without STRIPE_SECRET_KEY: purchases then answer PAYMENTS_NOT_CONFIGURED. */
  stripe?: Stripe;
  /** Who is in which guild, asked of the auth service. */
  membership: MembershipClient;
  /** This app's Prometheus metrics (its own registry). */
  metrics: Metrics;
}

export type Logger = FastifyBaseLogger;

export interface CreateAppDepsOptions {
  /**
   * Prepare the database before returning (prepareDatabase; migrations when config.migrateOnStart). false
   * leaves it as it is: main.ts prepares it after listening, a test may need none.
   */
  migrate?: boolean;
  /** Start an embedded database from this PGlite dump (see DbConfig.pgliteSnapshot). */
  pgliteSnapshot?: Blob | undefined;
  /** Use this open PGlite, and leave it open on close (see DbConfig.pglite). */
  pglite?: DbConfig['pglite'];
}

/**
 * What a server does to its database before it serves: the migrations (when config.migrateOnStart), then the
 * settings the database's own functions read — the default low-balance threshold (LOW_BALANCE_THRESHOLD) the
 * alert triggers apply to accounts without a setting of their own. Before it is ready, so no debit the server
 * accepts is judged without it.
 */
export async function prepareDatabase(
  db: Kysely<Database>,
  config: Pick<Config, 'migrateOnStart' | 'events'>,
): Promise<void> {
  if (config.migrateOnStart) await migrateToLatest(db);
  await writeDefaultLowBalanceThreshold(db, config.events.lowBalanceThreshold ?? null);
}

export async function createAppDeps(
  config: Readonly<Config>,
  options: CreateAppDepsOptions = {},
): Promise<AppDeps> {
  const dbHandle = await createDb({
    databaseUrl: config.databaseUrl,
    dataDir: config.dataDir,
    poolSize: config.dbPoolSize,
    preparedStatements: config.dbPreparedStatements,
    pgliteSnapshot: options.pgliteSnapshot,
    pglite: options.pglite,
  });
  try {
    if (options.migrate !== false) await prepareDatabase(dbHandle.db, config);
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
    spend: personalSpender(dbHandle.db, config),
    spendFromPool: config.coalesceDebits
      ? coalescedPoolSpender(dbHandle.db)
      : (input) => spendFromPool(dbHandle.db, input),
    stripe: createStripeClient(config),
    membership: createMembershipClient({
      authUrl: config.authUrl,
      serviceKey: config.authServiceKey,
      cacheSeconds: config.membershipCacheSeconds,
    }),
    metrics: createMetrics(dbHandle, {
      oldestUndeliveredEventSeconds: () => oldestUndeliveredEventAge(dbHandle.db),
    }),
  };
}

function personalSpender(db: Kysely<Database>, config: Readonly<Config>): AppDeps['spend'] {
  if (!config.coalesceDebits) return (input) => spendCredits(db, input);
  const coalescer = new SpendCoalescer(db, { inFlight: config.debitStatementsInFlight });
  return (input) => coalescer.spend(input);
}
