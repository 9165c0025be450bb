import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, normalize, sep } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { inject } from 'vitest';
import { PGLITE_DUMPS } from './pglite-dumps.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    /** A migrated Postgres database that each test file copies (CREATE DATABASE … TEMPLATE). */
    templateDatabase: string | undefined;
    /** A file holding the dump of a migrated PGlite database that each test file starts from. */
    pgliteSnapshotPath: string | undefined;
    /** The same before migrating: a PGlite data directory as initdb left it. */
    pgliteEmptySnapshotPath: string | undefined;
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
  /** PGlite: the dump to start from (see global-setup.ts). */
  pgliteSnapshot: Blob | undefined;
  drop(): Promise<void>;
}

const snapshots = new Map<string, Promise<{ file: Buffer; blob: Blob }>>();
/** A dump global-setup.ts makes (in the background: waited for), read once per worker. */
function pgliteSnapshot(empty: boolean): Promise<{ file: Buffer; blob: Blob }> {
  const path = inject(empty ? 'pgliteEmptySnapshotPath' : 'pgliteSnapshotPath');
  if (!path) throw new Error('global-setup.ts made no PGlite snapshot');
  let snapshot = snapshots.get(path);
  if (!snapshot) {
    snapshot = (async () => {
      const failed = join(dirname(path), PGLITE_DUMPS.failed);
      const deadline = Date.now() + 120_000;
      while (!existsSync(path)) {
        if (existsSync(failed))
          throw new Error(
            `global-setup.ts could not make the PGlite dumps:\n${readFileSync(failed, 'utf8')}`,
          );
        if (Date.now() > deadline) throw new Error(`global-setup.ts made no ${path} within 120 s`);
        await sleep(20);
      }
      const file = readFileSync(path);
      return { file, blob: new ReadBlob(file) };
    })();
    snapshots.set(path, snapshot);
  }
  return snapshot;
}

/**
 * A Blob whose bytes are already in memory: arrayBuffer() hands out the one copy instead of reading the
 * Blob again in chunks on every PGlite start (PGlite only reads what it loads).
 */
class ReadBlob extends Blob {
  readonly #bytes: ArrayBuffer;
  constructor(file: Buffer) {
    super([file]);
    const whole = file.byteOffset === 0 && file.byteLength === file.buffer.byteLength;
    this.#bytes = (
      whole ? file.buffer : file.buffer.slice(file.byteOffset, file.byteOffset + file.byteLength)
    ) as ArrayBuffer;
  }
  override arrayBuffer(): Promise<ArrayBuffer> {
    return Promise.resolve(this.#bytes);
  }
}

/**
 * `empty`: a database nothing was applied to (for tests of the migrations themselves). On PGlite that is a
 * database as initdb left it, started from global-setup.ts's dump rather than by running initdb again.
 */
export async function createTestDatabase(options: { empty?: boolean } = {}): Promise<TestDatabase> {
  const serverUrl = process.env.DATABASE_URL;
  if (!serverUrl) {
    return {
      env: { DATA_DIR: 'memory://' },
      kind: 'pglite',
      url: undefined,
      pgliteSnapshot: (await pgliteSnapshot(options.empty ?? false)).blob,
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

/**
 * A database that another process can open too: on Postgres what createTestDatabase gives; on PGlite a
 * directory (DATA_DIR) holding global-setup.ts's dump unpacked, as initdb left it (`empty`) or migrated, so
 * the process that opens it does not run initdb (seconds of CPU) first. Dropped: the directory is removed.
 */
export async function createTestDataDir(options: { empty?: boolean } = {}): Promise<TestDatabase> {
  if (process.env.DATABASE_URL) return createTestDatabase(options);
  const dataDir = await pgliteDataDir(options);
  return {
    env: { DATA_DIR: dataDir },
    kind: 'pglite',
    url: undefined,
    pgliteSnapshot: undefined,
    drop: async () => rmSync(dataDir, { recursive: true, force: true }),
  };
}

/**
 * Where data directories go: a RAM file system where there is one (Linux), else the temp directory. On a
 * disk, creating a directory's thousand files and PGlite's writes wait on the file system's journal while
 * other tests write too (seconds per directory, measured in a full run).
 */
const MEMORY_DIR = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();

/**
 * A new PGlite data directory holding global-setup.ts's dump (as initdb left it with `empty`), or nothing
 * when global setup made no dump (DATABASE_URL set): then whoever opens it first runs initdb there. The
 * caller removes it.
 */
export async function pgliteDataDir(options: { empty?: boolean } = {}): Promise<string> {
  const dataDir = mkdtempSync(join(MEMORY_DIR, 'mana-credits-data-'));
  const dumped = inject(options.empty ? 'pgliteEmptySnapshotPath' : 'pgliteSnapshotPath');
  if (dumped) extractTar((await pgliteSnapshot(options.empty ?? false)).file, dataDir);
  return dataDir;
}

/** Unpacks a ustar archive of directories and regular files (what PGlite's dumpDataDir writes) into `into`. */
function extractTar(tar: Buffer, into: string) {
  const text = (start: number, length: number) => {
    const value = tar.toString('utf8', start, start + length);
    const end = value.indexOf('\0');
    return end < 0 ? value : value.slice(0, end);
  };
  for (let offset = 0; offset + 512 <= tar.length; ) {
    const name = text(offset, 100);
    if (name === '') break; // the zero blocks that end the archive
    const prefix = text(offset + 257, 6) === 'ustar' ? text(offset + 345, 155) : '';
    const size = Number.parseInt(text(offset + 124, 12).trim() || '0', 8);
    const type = text(offset + 156, 1) || '0';
    const relative = normalize(`${prefix ? `${prefix}/` : ''}${name}`).replace(/^[/\\]+/, '');
    if (relative.split(sep).includes('..')) throw new Error(`tar entry outside its directory: ${name}`);
    const path = join(into, relative);
    if (type === '5') mkdirSync(path, { recursive: true });
    else if (type === '0') {
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, tar.subarray(offset + 512, offset + 512 + size));
    } else throw new Error(`tar entry ${name} of type ${type}: only directories and files are expected`);
    offset += 512 + Math.ceil(size / 512) * 512;
  }
}
