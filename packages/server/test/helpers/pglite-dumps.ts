import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createDb, migrateToLatest } from '@mana-credits/db';
import { sql } from 'kysely';

/** The files global-setup.ts has written into its directory, and helpers/database.ts waits for, on PGlite runs. */
export const PGLITE_DUMPS = {
  /** A data directory as initdb left it. */
  empty: 'initdb.tar',
  /** The same, migrated (without the template databases). */
  migrated: 'migrated.tar',
  /** Written instead when making them failed: why. */
  failed: 'failed.txt',
} as const;

/** Runs initdb and the migrations once, in memory, and dumps the data directory before and after migrating. */
export async function makePgliteDumps(directory: string) {
  const handle = await createDb({ dataDir: 'memory://' });
  const save = async (name: string) => {
    // Checkpointed first, so a database started from the dump does not replay the WAL written so far.
    await sql`checkpoint`.execute(handle.db);
    const dump = await handle.dumpDataDir!();
    // Written beside, then renamed: a waiting worker never reads half a file.
    writeFileSync(join(directory, `${name}.part`), Buffer.from(await dump.arrayBuffer()));
    renameSync(join(directory, `${name}.part`), join(directory, name));
  };
  try {
    // Before migrating: what initdb made (PGlite's initdb alone costs seconds of CPU; tests that start from an
    // empty database, in memory or in a directory, start from this instead).
    await save(PGLITE_DUMPS.empty);
    await migrateToLatest(handle.db);
    // The databases started from this dump never copy a database (CREATE DATABASE): without initdb's two
    // template databases it is ~40% smaller, and each of the suite's ~35 PGlite starts unpacks it file by file.
    for (const template of ['template0', 'template1']) {
      await sql`alter database ${sql.id(template)} is_template false`.execute(handle.db);
      await sql`drop database ${sql.id(template)}`.execute(handle.db);
    }
    await save(PGLITE_DUMPS.migrated);
  } finally {
    await handle.close();
  }
}

// global-setup.ts runs this file: node --import tsx pglite-dumps.ts <directory>
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await makePgliteDumps(process.argv[2]!);
}
