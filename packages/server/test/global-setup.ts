import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDb, migrateToLatest } from '@mana-credits/db';
import { sql } from 'kysely';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
// What this file provides is declared beside the code that injects it.
import type {} from './helpers/database.ts';

/**
 * Migrates one database before any test file runs; every file then starts from a copy of it instead of
 * creating and migrating its own (for PGlite that also skips initdb, most of a file's start-up time).
 */
export default async function setup(project: TestProject) {
  const serverUrl = process.env.DATABASE_URL;
  if (serverUrl) {
    const name = `mana_credits_template_${process.pid}_${randomBytes(4).toString('hex')}`;
    await admin(serverUrl, `create database ${name}`);
    const url = Object.assign(new URL(serverUrl), { pathname: `/${name}` }).toString();
    const handle = await createDb({ databaseUrl: url, poolSize: 1 });
    try {
      await migrateToLatest(handle.db);
    } finally {
      await handle.close();
    }
    project.provide('templateDatabase', name);
    project.provide('pgliteSnapshotPath', undefined);
    project.provide('pgliteEmptySnapshotPath', undefined);
    return async () => admin(serverUrl, `drop database if exists ${name} with (force)`);
  }
  const handle = await createDb({ dataDir: 'memory://' });
  const directory = mkdtempSync(join(tmpdir(), 'mana-credits-pglite-'));
  const save = async (name: string) => {
    // Checkpointed first, so a database started from the dump does not replay the WAL written so far.
    await sql`checkpoint`.execute(handle.db);
    const dump = await handle.dumpDataDir!();
    writeFileSync(join(directory, name), Buffer.from(await dump.arrayBuffer()));
    return join(directory, name);
  };
  try {
    // Before migrating: what initdb made (PGlite's initdb alone costs seconds of CPU; tests that start from an
    // empty database, in memory or in a directory, start from this instead).
    project.provide('pgliteEmptySnapshotPath', await save('initdb.tar'));
    await migrateToLatest(handle.db);
    // The databases started from this dump never copy a database (CREATE DATABASE): without initdb's two
    // template databases it is ~40% smaller, and each of the suite's ~35 PGlite starts unpacks it file by file.
    for (const template of ['template0', 'template1']) {
      await sql`alter database ${sql.id(template)} is_template false`.execute(handle.db);
      await sql`drop database ${sql.id(template)}`.execute(handle.db);
    }
    project.provide('pgliteSnapshotPath', await save('migrated.tar'));
  } finally {
    await handle.close();
  }
  project.provide('templateDatabase', undefined);
  return () => rmSync(directory, { recursive: true, force: true });
}

async function admin(serverUrl: string, statement: string) {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    await client.query(statement);
  } finally {
    await client.end();
  }
}
