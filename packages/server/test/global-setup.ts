import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createDb, migrateToLatest } from '@mana-credits/db';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { inputsKey, ROOT } from './helpers/build-cache.ts';
// What this file provides is declared beside the code that injects it.
import type {} from './helpers/database.ts';
import { PGLITE_DUMPS } from './helpers/pglite-dumps.ts';

const MAKER = new URL('./helpers/pglite-dumps.ts', import.meta.url);
/** Where the PGlite dumps of earlier runs are kept, one directory per state of what makes them. */
const DUMP_CACHE = join(ROOT, 'node_modules/.cache/mana-credits-test-pglite');

/**
 * What the dumps depend on: the migrations and everything else of packages/db/src, the PGlite that runs them,
 * the locked versions of every package (kysely…), and the code that makes them. Any change makes new dumps.
 */
function dumpKey(): string {
  return inputsKey([
    'packages/db/src',
    'packages/db/node_modules/@electric-sql/pglite/package.json',
    'pnpm-lock.yaml',
    relative(ROOT, fileURLToPath(MAKER)),
  ]);
}

/**
 * Migrates one database for the whole run; every file then starts from a copy of it instead of creating and
 * migrating its own (for PGlite that also skips initdb, most of a file's start-up time). Postgres: a template
 * database, made before any test file runs. PGlite: dumps of a data directory, made while the first files
 * start (helpers/pglite-dumps.ts).
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
  project.provide('templateDatabase', undefined);
  // PGlite: the dumps an earlier run made from the same migrations, PGlite and packages (initdb and the
  // migrations cost ~10 s of CPU, a fifth of a run)…
  const key = dumpKey();
  const cached = join(DUMP_CACHE, key);
  if (existsSync(join(cached, PGLITE_DUMPS.migrated))) {
    project.provide('pgliteEmptySnapshotPath', join(cached, PGLITE_DUMPS.empty));
    project.provide('pgliteSnapshotPath', join(cached, PGLITE_DUMPS.migrated));
    return;
  }
  // …or new ones, made in the background, by another process (PGlite's initdb would hold this one's event
  // loop, which serves the workers their modules). Workers start and import the server meanwhile, and the
  // files that build or pack first get on with it; helpers/database.ts waits for a dump when it needs one.
  const directory = mkdtempSync(join(tmpdir(), 'mana-credits-pglite-'));
  project.provide('pgliteEmptySnapshotPath', join(directory, PGLITE_DUMPS.empty));
  project.provide('pgliteSnapshotPath', join(directory, PGLITE_DUMPS.migrated));
  const maker = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(MAKER), directory], {
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let errors = '';
  maker.stderr.on('data', (chunk: Buffer) => {
    errors += chunk.toString('utf8');
  });
  const made = new Promise<void>((done) => {
    const fail = (why: string) => {
      writeFileSync(join(directory, PGLITE_DUMPS.failed), `${why}\n${errors}`);
      done();
    };
    maker.once('error', (error) => fail(error.message));
    // 'close', not 'exit': by then all of its stderr has been read.
    maker.once('close', (code, signal) => {
      if (code !== 0) return fail(`exited with ${code ?? signal}`);
      keep(directory, key);
      done();
    });
  });
  return async () => {
    await made;
    rmSync(directory, { recursive: true, force: true });
  };
}

/** Copies new dumps into the cache (whole or not at all), in place of those of other keys. */
function keep(directory: string, key: string) {
  try {
    mkdirSync(DUMP_CACHE, { recursive: true });
    for (const entry of readdirSync(DUMP_CACHE))
      rmSync(join(DUMP_CACHE, entry), { recursive: true, force: true });
    const partial = mkdtempSync(join(DUMP_CACHE, `${key}.partial-`));
    for (const name of [PGLITE_DUMPS.empty, PGLITE_DUMPS.migrated]) {
      copyFileSync(join(directory, name), join(partial, name));
    }
    renameSync(partial, join(DUMP_CACHE, key));
  } catch {
    // Another run kept the same dumps first, or the cache cannot be written: the next run makes them again.
  }
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
