import { mkdirSync } from 'node:fs';
import { PGlite } from '@electric-sql/pglite';
import { Kysely, PostgresDialect } from 'kysely';
import { PGliteDialect } from 'kysely-pglite-dialect';
import pg from 'pg';
import type { Database } from './database.ts';
import { PG_OID, parseInt8, parseNumericInteger } from './int8.ts';

export interface DbConfig {
  /** Postgres connection string; when absent the embedded PGlite database is used. */
  databaseUrl?: string | undefined;
  /** Where PGlite keeps its files; 'memory://' for a throw-away database. */
  dataDir?: string | undefined;
  /** Size of the pg pool. */
  poolSize?: number | undefined;
  /** Application name shown in pg_stat_activity. */
  applicationName?: string | undefined;
  /**
   * PGlite only: a dump of a data directory (PGlite's dumpDataDir) to start from instead of an empty one.
   * The tests migrate one database once and start every file from its dump, which skips initdb.
   */
  pgliteSnapshot?: Blob | undefined;
}

export interface DbHandle {
  db: Kysely<Database>;
  kind: 'postgres' | 'pglite';
  /** Connections in use, idle and waiting (pg only). */
  poolStats(): { total: number; idle: number; waiting: number };
  /** PGlite only: the whole data directory as a tarball (a copy to start another database from). */
  dumpDataDir?: () => Promise<Blob>;
  close(): Promise<void>;
}

const keepText = (text: string) => text;

function pgTypeParser(oid: number, format?: string): (text: string) => unknown {
  if (oid === PG_OID.int8) return parseInt8;
  if (oid === PG_OID.numeric) return parseNumericInteger;
  if (oid === PG_OID.date) return keepText;
  // biome-ignore lint/suspicious/noExplicitAny: pg's own typing for the format argument is loose
  return pg.types.getTypeParser(oid, format as any);
}

export function createPgPool(config: DbConfig): pg.Pool {
  return new pg.Pool({
    connectionString: config.databaseUrl,
    max: config.poolSize ?? 10,
    application_name: config.applicationName ?? 'mana-credits',
    types: { getTypeParser: pgTypeParser } as pg.CustomTypesConfig,
  });
}

export async function createPglite(dataDir: string, snapshot?: Blob): Promise<PGlite> {
  if (!dataDir.startsWith('memory://')) mkdirSync(dataDir, { recursive: true });
  const pglite = new PGlite(dataDir, {
    parsers: { [PG_OID.int8]: parseInt8, [PG_OID.numeric]: parseNumericInteger, [PG_OID.date]: keepText },
    ...(snapshot ? { loadDataDir: snapshot } : {}),
  });
  await pglite.waitReady;
  return pglite;
}

export async function createDb(config: DbConfig): Promise<DbHandle> {
  if (config.databaseUrl) {
    const pool = createPgPool(config);
    // A connection lost while idle (pool) or while checked out between queries (client) must not crash the
    // process: the query in flight fails on its own, and pg-pool drops the broken client on release.
    pool.on('error', () => {});
    pool.on('connect', (client) => client.on('error', () => {}));
    const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
    return {
      db,
      kind: 'postgres',
      poolStats: () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }),
      close: () => db.destroy(),
    };
  }
  const pglite = await createPglite(config.dataDir ?? './.data', config.pgliteSnapshot);
  const db = new Kysely<Database>({ dialect: new PGliteDialect(pglite) });
  return {
    db,
    kind: 'pglite',
    poolStats: () => ({ total: 1, idle: 1, waiting: 0 }),
    dumpDataDir: () => pglite.dumpDataDir('none'),
    close: () => db.destroy(),
  };
}
