import { randomBytes } from 'node:crypto';
import pg from 'pg';

/**
 * A fresh database for one test file. With DATABASE_URL set (CI) it is a new Postgres database on that
 * server, dropped afterwards; without it, an in-memory PGlite (DATA_DIR=memory://).
 */
export interface TestDatabase {
  /** Environment overrides that point the server at this database. */
  env: Record<string, string>;
  kind: 'postgres' | 'pglite';
  url: string | undefined;
  drop(): Promise<void>;
}

export async function createTestDatabase(): Promise<TestDatabase> {
  const serverUrl = process.env.DATABASE_URL;
  if (!serverUrl) {
    return { env: { DATA_DIR: 'memory://' }, kind: 'pglite', url: undefined, drop: async () => {} };
  }
  const name = `mana_credits_test_${process.pid}_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`create database ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return {
    env: { DATABASE_URL: url.toString() },
    kind: 'postgres',
    url: url.toString(),
    drop: async () => {
      const client = new pg.Client({ connectionString: serverUrl });
      await client.connect();
      try {
        await client.query(`drop database if exists ${name} with (force)`);
      } finally {
        await client.end();
      }
    },
  };
}
