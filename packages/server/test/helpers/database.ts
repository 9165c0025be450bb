import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, normalize, sep } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { PGlite } from '@electric-sql/pglite';
import { createPglite } from '@mana-credits/db';
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
  /**
   * PGlite, migrated (not `empty`): an open database in that state, lent to this file until drop(). Hand it
   * to createDb / createAppDeps (`pglite`) instead of starting one from pgliteSnapshot.
   */
  pglite: PGlite | undefined;
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

// ── PGlite instances lent to one file after another ─────────────────────────────────────────────────────────
//
// Starting a PGlite, even from the migrated dump, costs a second or two of CPU: for ~40 files, more than the
// tests of most of them take. So a worker keeps the instances its files have dropped and lends them again,
// reset to the state of the dump: every table emptied and the rows the migrations seeded put back, sequences
// rewound, session settings, advisory locks and any open transaction ended. If a file changed the schema
// itself (tables, columns, functions, triggers…) the instance is not lent again: a new one is started.

const idlePglites: PGlite[] = [];

/** What a migrated database looks like, read from a fresh instance (every instance starts from one dump). */
interface PgliteBaseline {
  /** Catalog fingerprint of the non-system schemas (see schemaFingerprint). */
  fingerprint: string;
  /** Every table, schema-qualified and quoted. */
  tables: string[];
  /**
   * One query naming the tables that hold a row. Only those (and the seeded ones) are truncated: TRUNCATE gives
   * each table and index new files whether it holds rows or not, a few milliseconds each on PGlite, most of a
   * reset when every table is named.
   */
  filled: string;
  /** The tables that hold rows after migrating (a migration's seed): their rows, to put back. */
  seeds: Array<{ table: string; columns: string; rows: string }>;
  /** Sequences and where they stood. */
  sequences: Array<{ sequence: string; lastValue: string; isCalled: boolean }>;
}
let baseline: Promise<PgliteBaseline> | undefined;

const USER_SCHEMAS = `n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast') and n.nspname not like 'pg_temp%'
  and n.nspname not like 'pg_toast_temp%'`;

/** A digest of everything a test could change in the schema: relations, columns, types, functions, triggers… */
async function schemaFingerprint(pglite: PGlite): Promise<string> {
  const { rows } = await pglite.query<{ digest: string }>(`
    select md5(coalesce((select string_agg(x, E'\n' order by x) from (
      select format('rel %s.%s %s', n.nspname, c.relname, c.relkind) as x
        from pg_class c join pg_namespace n on n.oid = c.relnamespace where ${USER_SCHEMAS}
      union all
      select format('col %s.%s.%s %s %s %s %s', n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                    a.attnotnull, a.attgenerated, pg_get_expr(d.adbin, d.adrelid))
        from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
        left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
       where ${USER_SCHEMAS} and a.attnum > 0 and not a.attisdropped
      union all
      select format('con %s %s', conname, pg_get_constraintdef(k.oid))
        from pg_constraint k join pg_namespace n on n.oid = k.connamespace where ${USER_SCHEMAS}
      union all
      select format('fn %s.%s(%s) %s', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), md5(p.prosrc))
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace where ${USER_SCHEMAS}
      union all
      select format('trg %s %s %s', t.tgrelid::regclass, t.tgname, t.tgenabled)
        from pg_trigger t join pg_class c on c.oid = t.tgrelid join pg_namespace n on n.oid = c.relnamespace
       where ${USER_SCHEMAS}
      union all
      select format('ns %s', n.nspname) from pg_namespace n where ${USER_SCHEMAS}
      union all
      select format('db %s', datname) from pg_database
      union all
      select format('role %s %s', rolname, rolsuper) from pg_roles
      union all
      select format('ext %s %s', extname, extversion) from pg_extension
    ) all_of_it), '')) as digest`);
  return rows[0]!.digest;
}

async function readBaseline(pglite: PGlite): Promise<PgliteBaseline> {
  const tables = await pglite.query<{ table: string; columns: string }>(`
    select format('%I.%I', n.nspname, c.relname) as table,
           (select string_agg(quote_ident(a.attname), ', ' order by a.attnum) from pg_attribute a
             where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped and a.attgenerated = '') as columns
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p') and ${USER_SCHEMAS}
     order by 1`);
  const seeds: PgliteBaseline['seeds'] = [];
  for (const { table, columns } of tables.rows) {
    const { rows } = await pglite.query<{ rows: string | null }>(
      `select json_agg(t)::text as rows from (select ${columns} from ${table}) t`,
    );
    if (rows[0]!.rows) seeds.push({ table, columns, rows: rows[0]!.rows });
  }
  const sequences = await pglite.query<{ sequence: string }>(`
    select format('%I.%I', n.nspname, c.relname) as sequence
      from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.relkind = 'S' and ${USER_SCHEMAS}`);
  const positions: PgliteBaseline['sequences'] = [];
  for (const { sequence } of sequences.rows) {
    const { rows } = await pglite.query<{ last_value: string; is_called: boolean }>(
      `select last_value::text, is_called from ${sequence}`,
    );
    positions.push({ sequence, lastValue: rows[0]!.last_value, isCalled: rows[0]!.is_called });
  }
  const literal = (text: string) => `'${text.replaceAll("'", "''")}'`;
  const filled = `select name from (values ${tables.rows
    .map(({ table }) => `(${literal(table)}, exists (select from ${table}))`)
    .join(', ')}) as t(name, filled) where filled`;
  return {
    fingerprint: await schemaFingerprint(pglite),
    tables: tables.rows.map((row) => row.table),
    filled,
    seeds,
    sequences: positions,
  };
}

/** Puts a used instance back in the state of the dump; false if it cannot be (its schema was changed). */
async function resetPglite(pglite: PGlite, base: PgliteBaseline): Promise<boolean> {
  if (pglite.closed) return false;
  // A transaction a test left open (or aborted) is rolled back; outside one this is only a warning.
  await pglite.exec('rollback');
  await pglite.exec('reset all; select pg_advisory_unlock_all();');
  if ((await schemaFingerprint(pglite)) !== base.fingerprint) return false;
  await pglite.transaction(async (tx) => {
    // As a replica: no triggers fire (the ledgers refuse TRUNCATE, inserts would raise events…).
    await tx.exec('set local session_replication_role = replica');
    const written = base.tables.length > 0 ? (await tx.query<{ name: string }>(base.filled)).rows : [];
    const emptied = new Set([...written.map((row) => row.name), ...base.seeds.map((seed) => seed.table)]);
    // CASCADE: an empty table that references one of these is emptied with it (TRUNCATE refuses otherwise).
    if (emptied.size > 0) await tx.exec(`truncate ${[...emptied].join(', ')} cascade`);
    for (const seed of base.seeds) {
      await tx.query(
        `insert into ${seed.table} (${seed.columns}) overriding system value
         select ${seed.columns} from json_populate_recordset(null::${seed.table}, $1::json)`,
        [seed.rows],
      );
    }
    for (const { sequence, lastValue, isCalled } of base.sequences) {
      await tx.query(`select setval('${sequence}', $1::int8, $2)`, [lastValue, isCalled]);
    }
  });
  return true;
}

/** A migrated PGlite for one file: one this worker had lent before and has reset, or a new one. */
async function borrowPglite(): Promise<PGlite> {
  for (let pglite = idlePglites.pop(); pglite; pglite = idlePglites.pop()) {
    if (baseline && (await resetPglite(pglite, await baseline))) return pglite;
    if (!pglite.closed) await pglite.close();
  }
  const pglite = await createPglite('memory://', (await pgliteSnapshot(false)).blob);
  baseline ??= readBaseline(pglite);
  await baseline;
  return pglite;
}

/**
 * `empty`: a database nothing was applied to (for tests of the migrations themselves). On PGlite that is a
 * database as initdb left it, started from global-setup.ts's dump rather than by running initdb again.
 */
export async function createTestDatabase(options: { empty?: boolean } = {}): Promise<TestDatabase> {
  const serverUrl = process.env.DATABASE_URL;
  if (!serverUrl) {
    const empty = options.empty ?? false;
    const lent = empty ? undefined : await borrowPglite();
    let dropped = false;
    return {
      env: { DATA_DIR: 'memory://' },
      kind: 'pglite',
      url: undefined,
      pgliteSnapshot: (await pgliteSnapshot(empty)).blob,
      pglite: lent,
      drop: async () => {
        if (lent && !dropped) idlePglites.push(lent);
        dropped = true;
      },
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
    pglite: undefined,
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
    pglite: undefined,
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
