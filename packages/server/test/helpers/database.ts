import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { inject } from 'vitest';

declare module 'vitest' {
  export interface ProvidedContext {
    /** A migrated Postgres database that each test file copies (CREATE DATABASE … TEMPLATE). */
    templateDatabase: string | undefined;
    /** A file holding the dump of a migrated PGlite database that each test file starts from. */
    pgliteSnapshotPath: string | undefined;
  }
}

/**
 * A fresh database for one test file. With DATABASE_URL set (CI) it is a new Postgres database on that
 * server, dropped afterwards; without it, an in-memory PGlite (DATA_DIR=memory://).
 */
export interface TestDatabase {
  /** Environment overrides that point the server at this database. */
  env: Record<string, string>;
  kind: 'postgres' | 'pglite';
  url: string | undefined;
  /** PGlite: the migrated database to start from (see global-setup.ts). */
  pgliteSnapshot: Blob | undefined;
  drop(): Promise<void>;
}

let snapshot: Blob | undefined;
function pgliteSnapshot(): Blob | undefined {
  const path = inject('pgliteSnapshotPath');
  if (path && !snapshot) snapshot = new Blob([readFileSync(path)]);
  return snapshot;
}

/** `empty`: a database nothing was applied to (for tests of the migrations themselves). */
export async function createTestDatabase(options: { empty?: boolean } = {}): Promise<TestDatabase> {
  const serverUrl = process.env.DATABASE_URL;
  if (!serverUrl) {
    return {
      env: { DATA_DIR: 'memory://' },
      kind: 'pglite',
      url: undefined,
      pgliteSnapshot: options.empty ? undefined : pgliteSnapshot(),
      drop: async () => {},
    };
  }
  const name = `mana_credits_test_${process.pid}_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    // A copy of the database global-setup.ts migrated once (CREATE DATABASE copies it file by file).
    const template = options.empty ? undefined : inject('templateDatabase');
    await admin.query(`create database ${name}${template ? ` template ${template}` : ''}`);
  } finally {
    await admin.end();
  }
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return {
    env: { DATABASE_URL: url.toString() },
    kind: 'postgres',
    url: url.toString(),
    pgliteSnapshot: undefined,
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
