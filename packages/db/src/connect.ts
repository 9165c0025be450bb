import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import type { PGlite } from '@electric-sql/pglite';
import { type Dialect, Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import type { Database } from './database.ts';
import { PG_OID, parseInt8, parseInt8Array, parseNumericInteger } from './int8.ts';

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
   * Postgres only: send repeated statements as named (prepared) statements, parsed and planned once per
   * connection, instead of node-pg's unnamed ones, parsed and planned on every call (see PreparingClient).
   * Default off; the server turns it on with DB_PREPARED_STATEMENTS.
   */
  preparedStatements?: boolean | undefined;
  /** With preparedStatements: how many one connection keeps at most (default 100). */
  preparedStatementsPerConnection?: number | undefined;
  /**
   * PGlite only: a dump of a data directory (PGlite's dumpDataDir) to start from instead of an empty one.
   * The tests migrate one database once and start every file from its dump, which skips initdb.
   */
  pgliteSnapshot?: Blob | undefined;
  /**
   * PGlite only: an open PGlite to use instead of opening one (dataDir and pgliteSnapshot are then unused).
   * The handle's close() leaves it open: whoever opened it closes it. The tests lend each file's server one
   * of a few PGlite instances that they reset in between, instead of starting a database per file.
   */
  pglite?: PGlite | undefined;
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
  if (oid === PG_OID.int8Array) return parseInt8Array;
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
    ...(config.preparedStatements
      ? {
          Client: preparingClientClass(
            pg.Client,
            preparedLimit(config),
          ) as unknown as new () => pg.ClientBase,
        }
      : {}),
  });
}

const preparedLimit = (config: DbConfig) =>
  config.preparedStatementsPerConnection ?? DEFAULT_PREPARED_STATEMENTS_PER_CONNECTION;

// ── Prepared statements ───────────────────────────────────────────────────────────────────────────────────
//
// Kysely hands node-pg a text and its values; node-pg sends that as an unnamed statement, which Postgres parses,
// analyses and plans on every call. Given a name, node-pg prepares it once per connection (Parse), remembers
// that it did, and afterwards only binds and executes it: on the 2-core machine where Postgres and Node share
// the CPU, parse and plan time is throughput. What this costs, and what is done about it:
// - A name per text: `mc_` + a hash of the text, so a name never stands for two texts (node-pg refuses that).
// - Only texts seen before in this process are prepared (one-off texts — an IN-list of a length not seen
//   again, an admin query — stay unnamed), and a connection keeps at most `limit` statements, deallocating the
//   least recently used one past that.
// - Statements without values (BEGIN, COMMIT, DDL, the SQL function files) stay on the simple protocol.
// - After a schema change a prepared statement is re-planned by Postgres itself, but one whose result columns
//   changed (`select *` after a column was added, a function whose result type changed) is refused with
//   "cached plan must not change result type" (0A000); so is a name the server no longer has (26000: someone
//   ran DEALLOCATE/DISCARD) or a name it already has (42P05). Each is refused at Parse/Bind, before the
//   statement ran, so nothing was written: outside a transaction the statement is sent again unnamed at once;
//   inside one the error goes up (the transaction is lost anyway), and the connection deallocates everything
//   it prepared the next time it is idle.
// - Postgres may switch a prepared statement to a generic plan after five executions; the hot statements
//   (the debit, use_batch, the pool lock, the balance read) are primary-key lookups or function calls, whose
//   generic plan is their custom plan (checked with plan_cache_mode = force_generic_plan).

export const DEFAULT_PREPARED_STATEMENTS_PER_CONNECTION = 100;

/** Texts called before in this process: a text is prepared from its second call on. Cleared when full. */
const seenTexts = new Set<string>();
const SEEN_TEXTS_LIMIT = 2_000;

/** Letters, digits, '-' and '_' (base64url): quoted where SQL names it, as DEALLOCATE does. */
function statementName(text: string): string {
  return `mc_${createHash('sha1').update(text).digest('base64url')}`;
}

/** Refused before it ran because of what the server holds under the name (see above): safe to send again. */
function isStaleStatementError(error: unknown): boolean {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  return (
    code === '26000' ||
    code === '42P05' ||
    (code === '0A000' && typeof message === 'string' && message.includes('cached plan must not change'))
  );
}

type ClientClass = new (config?: pg.ClientConfig) => pg.Client;
type QueryFunction = (...args: unknown[]) => unknown;

/** A pg client class (of `Base`) that names the statements it is given as text + values; see above. */
export function preparingClientClass(Base: ClientClass, limit: number): ClientClass {
  return class PreparingClient extends Base {
    /** Texts prepared on this connection → their names, least recently used first. */
    private readonly prepared = new Map<string, string>();
    /** The server may hold statements this map does not know of: deallocate them all when next idle. */
    private stale = false;

    override query(...args: unknown[]): never {
      const send = (...queryArgs: unknown[]) => (super.query as QueryFunction).apply(this, queryArgs);
      const idle = this.getTransactionStatus() === 'I';
      if (this.stale && idle) this.reset(send);
      const [text, values] = args;
      if (args.length !== 2 || typeof text !== 'string' || !Array.isArray(values) || values.length === 0) {
        return send(...args) as never;
      }
      const name = this.stale ? undefined : this.nameFor(text, send);
      if (name === undefined) return send(text, values) as never;
      return (send({ name, text, values }) as Promise<unknown>).catch((error: unknown) => {
        if (!isStaleStatementError(error)) throw error;
        this.forget(text);
        this.stale = true;
        // Refused before it ran, so nothing was written; outside a transaction it goes again, unnamed.
        if (!idle) throw error;
        return send(text, values);
      }) as never;
    }

    private nameFor(text: string, send: QueryFunction): string | undefined {
      const known = this.prepared.get(text);
      if (known !== undefined) {
        this.prepared.delete(text);
        this.prepared.set(text, known);
        return known;
      }
      if (!seenTexts.has(text)) {
        if (seenTexts.size >= SEEN_TEXTS_LIMIT) seenTexts.clear();
        seenTexts.add(text);
        return undefined;
      }
      if (this.prepared.size >= limit) {
        // A failed transaction refuses DEALLOCATE too: stay unnamed until it is over.
        if (this.getTransactionStatus() === 'E') return undefined;
        const oldest = this.prepared.entries().next().value!;
        this.forget(oldest[0]);
        // Queued ahead of the statement that takes the place; if it fails, the server keeps one too many.
        (send(`deallocate "${oldest[1]}"`) as Promise<unknown>).catch(() => {
          this.stale = true;
        });
      }
      const name = statementName(text);
      this.prepared.set(text, name);
      return name;
    }

    private forget(text: string): void {
      const name = this.prepared.get(text);
      this.prepared.delete(text);
      if (name !== undefined) delete this.parsedStatements()[name];
    }

    private reset(send: QueryFunction): void {
      for (const name of this.prepared.values()) delete this.parsedStatements()[name];
      this.prepared.clear();
      this.stale = false;
      (send('deallocate all') as Promise<unknown>).catch(() => {
        this.stale = true;
      });
    }

    /** node-pg's own record of the names it has prepared on this connection (it skips Parse for those). */
    private parsedStatements(): Record<string, string> {
      return (this as unknown as { connection: { parsedStatements: Record<string, string> } }).connection
        .parsedStatements;
    }
  };
}

// PGlite and its dialect are imported when an embedded database is opened, not with this module: a server on
// Postgres never loads them (3 MB less resident memory, measured; docs/benchmarks.md, "Memory of the server").

export async function createPglite(dataDir: string, snapshot?: Blob): Promise<PGlite> {
  if (!dataDir.startsWith('memory://')) mkdirSync(dataDir, { recursive: true });
  const { PGlite } = await import('@electric-sql/pglite');
  const pglite = new PGlite(dataDir, {
    parsers: {
      [PG_OID.int8]: parseInt8,
      [PG_OID.int8Array]: parseInt8Array,
      [PG_OID.numeric]: parseNumericInteger,
      [PG_OID.date]: keepText,
    },
    ...(snapshot ? { loadDataDir: snapshot } : {}),
  });
  await pglite.waitReady;
  return pglite;
}

export async function createDb(config: DbConfig): Promise<DbHandle> {
  const multiHost = config.databaseUrl ? parseMultiHostUrl(config.databaseUrl) : undefined;
  if (multiHost) {
    const pool = new MultiHostPool(multiHost, config);
    const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
    return {
      db,
      kind: 'postgres',
      poolStats: () => pool.stats(),
      close: () => db.destroy(),
    };
  }
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
  const pglite = config.pglite ?? (await createPglite(config.dataDir ?? './.data', config.pgliteSnapshot));
  const { PGliteDialect } = await import('kysely-pglite-dialect');
  const dialect = config.pglite ? lentPgliteDialect(PGliteDialect, pglite) : new PGliteDialect(pglite);
  const db = new Kysely<Database>({ dialect });
  return {
    db,
    kind: 'pglite',
    poolStats: () => ({ total: 1, idle: 1, waiting: 0 }),
    dumpDataDir: () => pglite.dumpDataDir('none'),
    close: () => db.destroy(),
  };
}

/** PGliteDialect on a PGlite that someone else closes: destroying the Kysely instance leaves it open. */
function lentPgliteDialect(
  PGliteDialect: typeof import('kysely-pglite-dialect').PGliteDialect,
  pglite: PGlite,
): Dialect {
  const dialect = new PGliteDialect(pglite);
  return {
    createAdapter: () => dialect.createAdapter(),
    createIntrospector: (db) => dialect.createIntrospector(db),
    createQueryCompiler: () => dialect.createQueryCompiler(),
    createDriver: () => {
      const driver = dialect.createDriver();
      return {
        init: () => driver.init(),
        acquireConnection: () => driver.acquireConnection(),
        beginTransaction: (connection, settings) => driver.beginTransaction(connection, settings),
        commitTransaction: (connection) => driver.commitTransaction(connection),
        rollbackTransaction: (connection) => driver.rollbackTransaction(connection),
        releaseConnection: (connection) => driver.releaseConnection(connection),
        // Kysely refuses queries on a destroyed instance by itself; only the PGlite stays open.
        destroy: async () => {},
      };
    },
  };
}

// ── Several hosts (libpq's multi-host form) ──────────────────────────────────────────────────────────────────
//
// node-postgres takes one host. libpq also takes a list, `postgres://u@h1:5432,h2:5432/db?target_session_attrs=
// read-write`, tries the hosts in order and keeps the first whose session matches target_session_attrs; that is
// how a client finds the primary of a primary/standby pair without a proxy. The pool below does the same for
// pg: every new connection goes to the last host found writable, is checked on arrival (the in_hot_standby and
// default_transaction_read_only the server reports at startup, or `select pg_is_in_recovery()` on servers
// older than 14), and when it fails or lands on a read-only server, all hosts are probed (at once; the first
// writable one wins) and the connection is made there. A connection that dies is dropped by pg-pool; one whose
// statement is refused with 25006 (read_only_sql_transaction: the server was demoted under it) is dropped on
// release and the primary looked for again. With no writable host the caller gets NoWritablePrimaryError
// (SQLSTATE class 08: the server answers a retryable 503) at once rather than waiting for one to appear.

export interface HostPort {
  host: string;
  port: number;
}

/** The target_session_attrs values that make sense for a pool that writes. */
export type TargetSessionAttrs = 'any' | 'read-write' | 'primary';

export interface MultiHostUrl {
  hosts: HostPort[];
  targetSessionAttrs: TargetSessionAttrs;
  /** libpq's connect_timeout (seconds in the URL): how long one host may take to accept a connection. */
  connectTimeoutMs: number;
  /** A single-host connection string for one of the hosts (the URL minus the libpq-only parameters). */
  urlFor(host: HostPort): string;
}

const DEFAULT_PORT = 5432;
const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
const URL_PARTS = /^(postgres(?:ql)?:\/\/)([^/?#]*@)?([^/?#@]*)([^?#]*)(\?[^#]*)?(#.*)?$/i;

/** `h1:5432,[::1]:5433,h3` → hosts with ports (the default port where none is given). */
function parseHostList(list: string): HostPort[] {
  return list.split(',').map((item) => {
    const match = /^(?:\[([^\]]+)\]|([^:[\]]+))(?::(\d+))?$/.exec(item.trim());
    if (!match) throw new Error(`DATABASE_URL: cannot read host "${item}" in the host list "${list}"`);
    const host = decodeURIComponent(match[1] ?? match[2] ?? '');
    return { host, port: match[3] ? Number(match[3]) : DEFAULT_PORT };
  });
}

/**
 * Reads a libpq-style URL with several hosts and/or target_session_attrs. Returns undefined for a URL with
 * one host and no target_session_attrs (or target_session_attrs=any): that one stays on the plain pg pool,
 * exactly as before. Other target_session_attrs values (read-only, standby, prefer-standby) make no sense for
 * a pool that writes and are refused, as is a host list without host names (Unix sockets).
 */
export function parseMultiHostUrl(url: string): MultiHostUrl | undefined {
  const match = URL_PARTS.exec(url);
  if (!match) return undefined;
  const [, scheme = '', userinfo = '', hostList = '', path = '', query = '', fragment = ''] = match;
  const params = new URLSearchParams(query.slice(1));
  const attrs = params.get('target_session_attrs') ?? 'any';
  const several = hostList.includes(',');
  if (!several && attrs === 'any') return undefined;
  if (attrs !== 'any' && attrs !== 'read-write' && attrs !== 'primary') {
    throw new Error(
      `DATABASE_URL: target_session_attrs=${attrs} is not supported (the service writes: use read-write, primary or any)`,
    );
  }
  if (hostList === '') throw new Error('DATABASE_URL: target_session_attrs needs a host name in the URL');
  const hosts = parseHostList(hostList);
  const connectTimeout = Number(params.get('connect_timeout') ?? Number.NaN);
  // connect_timeout and target_session_attrs are ours; pg would ignore them anyway.
  params.delete('target_session_attrs');
  params.delete('connect_timeout');
  const rest = params.toString();
  return {
    hosts,
    targetSessionAttrs: attrs,
    connectTimeoutMs:
      Number.isFinite(connectTimeout) && connectTimeout > 0
        ? connectTimeout * 1000
        : DEFAULT_CONNECT_TIMEOUT_MS,
    urlFor: ({ host, port }) =>
      `${scheme}${userinfo}${host.includes(':') ? `[${host}]` : host}:${port}${path}${rest ? `?${rest}` : ''}${fragment}`,
  };
}

/** No listed host is a writable primary right now (class 08: a connection failure, answered with a 503). */
export class NoWritablePrimaryError extends Error {
  readonly code = '08001';
  constructor(readonly reasons: string[]) {
    super(`No writable primary among the database hosts: ${reasons.join('; ')}`);
    this.name = 'NoWritablePrimaryError';
  }
}

interface Probe {
  index: number;
  writable: boolean;
  reason: string;
}

/** Which host is the primary: the last one found writable, looked for again when that one fails. */
export class PrimaryLocator {
  private preferred = 0;
  private stale = false;
  private locating: Promise<number> | undefined;
  private lastFailure: { at: number; error: NoWritablePrimaryError } | undefined;
  /** A failed search is the answer for this long, so callers in that window do not each probe every host. */
  static readonly NEGATIVE_CACHE_MS = 100;

  constructor(
    readonly parsed: MultiHostUrl,
    private readonly clientConfig: pg.ClientConfig,
  ) {}

  get index(): number {
    return this.preferred;
  }

  describe(index: number): string {
    const host = this.parsed.hosts[index]!;
    return `${host.host}:${host.port}`;
  }

  /** The host at `index` failed or is not writable: the next connection looks for the primary first. */
  suspect(index: number): void {
    if (index === this.preferred) this.stale = true;
  }

  get needsSearch(): boolean {
    return this.stale;
  }

  /** Probes every host at once; resolves with the first writable one (and prefers it from now on). */
  locate(): Promise<number> {
    if (this.locating) return this.locating;
    const failure = this.lastFailure;
    if (failure && Date.now() - failure.at < PrimaryLocator.NEGATIVE_CACHE_MS)
      return Promise.reject(failure.error);
    this.locating = this.search().finally(() => {
      this.locating = undefined;
    });
    return this.locating;
  }

  private async search(): Promise<number> {
    const probes = this.parsed.hosts.map((_, index) => this.probe(index));
    const found = await new Promise<number | undefined>((resolve) => {
      let pending = probes.length;
      for (const probe of probes) {
        probe.then((result) => {
          if (result.writable) resolve(result.index);
          if (--pending === 0) resolve(undefined);
        });
      }
    });
    if (found === undefined) {
      const error = new NoWritablePrimaryError(
        (await Promise.all(probes)).map((p) => `${this.describe(p.index)} ${p.reason}`),
      );
      this.lastFailure = { at: Date.now(), error };
      throw error;
    }
    this.preferred = found;
    this.stale = false;
    this.lastFailure = undefined;
    return found;
  }

  private async probe(index: number): Promise<Probe> {
    const client = new pg.Client({
      ...this.clientConfig,
      connectionString: this.parsed.urlFor(this.parsed.hosts[index]!),
      connectionTimeoutMillis: this.parsed.connectTimeoutMs,
    });
    client.on('error', () => {});
    try {
      await client.connect();
      const { rows } = await client.query<{ recovery: boolean; read_only: string }>(
        `select pg_catalog.pg_is_in_recovery() as recovery,
                pg_catalog.current_setting('transaction_read_only') as read_only`,
      );
      const { recovery, read_only } = rows[0]!;
      const writable = this.accepts({ inHotStandby: recovery, readOnly: read_only === 'on' });
      return { index, writable, reason: writable ? 'writable' : recovery ? 'is a standby' : 'is read-only' };
    } catch (error) {
      return {
        index,
        writable: false,
        reason: `unreachable (${error instanceof Error ? error.message : error})`,
      };
    } finally {
      client.end().catch(() => {});
    }
  }

  /** Whether a session with these properties satisfies target_session_attrs. */
  accepts(session: { inHotStandby: boolean; readOnly: boolean }): boolean {
    if (this.parsed.targetSessionAttrs === 'any') return true;
    if (this.parsed.targetSessionAttrs === 'primary') return !session.inHotStandby;
    return !session.inHotStandby && !session.readOnly;
  }
}

/** A pg client that connects to the locator's current host and remembers what the server reported. */
function multiHostClientClass(locator: PrimaryLocator, Base: ClientClass) {
  return class MultiHostClient extends Base {
    /** The host (index into the list) this connection went to. */
    readonly hostIndex: number;
    /** ParameterStatus values of the startup (in_hot_standby, default_transaction_read_only, …). */
    readonly serverParameters: Record<string, string> = {};
    /** Checked against target_session_attrs after connecting. */
    verified = false;
    /** A statement was refused as read-only: drop this connection when it is released. */
    readOnly = false;

    constructor(config: pg.ClientConfig) {
      const hostIndex = locator.index;
      super({ ...config, connectionString: locator.parsed.urlFor(locator.parsed.hosts[hostIndex]!) });
      this.hostIndex = hostIndex;
      const connection = (this as unknown as { connection: import('node:events').EventEmitter }).connection;
      connection.on('parameterStatus', (message: { parameterName: string; parameterValue: string }) => {
        this.serverParameters[message.parameterName] = message.parameterValue;
      });
    }

    override query(...args: unknown[]): never {
      const result = (super.query as QueryFunction).apply(this, args);
      if (!(result instanceof Promise)) return result as never;
      return result.catch((error: unknown) => {
        // Refused (and rolled back) as read-only: the server was demoted under this connection. The error
        // goes up as it is (the server answers it as a connection failure, a retryable 503).
        if ((error as { code?: unknown } | null)?.code === '25006') {
          this.readOnly = true;
          locator.suspect(this.hostIndex);
        }
        throw error;
      }) as never;
    }
  };
}

type MultiHostClient = InstanceType<ReturnType<typeof multiHostClientClass>>;

/**
 * A pg pool over several hosts that hands out connections to a writable primary only (target_session_attrs).
 * Kysely's PostgresDialect takes it as its pool (it needs connect() and end()).
 */
export class MultiHostPool {
  readonly locator: PrimaryLocator;
  private readonly pool: pg.Pool;

  constructor(parsed: MultiHostUrl, config: DbConfig) {
    const clientConfig = {
      application_name: config.applicationName ?? 'mana-credits',
      types: { getTypeParser: pgTypeParser } as pg.CustomTypesConfig,
    };
    this.locator = new PrimaryLocator(parsed, { application_name: clientConfig.application_name });
    const locator = this.locator;
    this.pool = new pg.Pool({
      ...clientConfig,
      max: config.poolSize ?? 10,
      connectionTimeoutMillis: parsed.connectTimeoutMs,
      // A primary that vanishes without a reset (power, network) is noticed by keepalives, not in two hours.
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
      Client: multiHostClientClass(
        locator,
        config.preparedStatements ? preparingClientClass(pg.Client, preparedLimit(config)) : pg.Client,
      ) as unknown as new () => pg.ClientBase,
    });
    // As in createDb: a connection lost while idle or checked out must not crash the process; the host it
    // was on is suspected, so the next connection looks for the primary first.
    this.pool.on('error', (_error, client) =>
      locator.suspect((client as unknown as MultiHostClient).hostIndex),
    );
    this.pool.on('connect', (client) =>
      client.on('error', () => locator.suspect((client as unknown as MultiHostClient).hostIndex)),
    );
  }

  stats(): { total: number; idle: number; waiting: number } {
    return { total: this.pool.totalCount, idle: this.pool.idleCount, waiting: this.pool.waitingCount };
  }

  /** A connection to the writable primary, or NoWritablePrimaryError when none of the hosts is one. */
  async connect(): Promise<pg.PoolClient> {
    for (let attempt = 1; ; attempt++) {
      if (this.locator.needsSearch) await this.locator.locate();
      let client: MultiHostClient & pg.PoolClient;
      try {
        client = (await this.pool.connect()) as unknown as MultiHostClient & pg.PoolClient;
      } catch (error) {
        // The host we believed in does not answer: look for the primary among all of them and try there.
        this.locator.suspect(this.locator.index);
        if (attempt >= 3) throw error;
        continue;
      }
      if (!client.verified) {
        let accepted = false;
        try {
          accepted = await this.verify(client);
        } catch {}
        if (!accepted) {
          client.release(true);
          this.locator.suspect(client.hostIndex);
          if (attempt >= 3) {
            throw new NoWritablePrimaryError([`${this.locator.describe(client.hostIndex)} is not writable`]);
          }
          continue;
        }
        client.verified = true;
      }
      const release = client.release;
      client.release = (error?: Error | boolean) =>
        release(error ?? (client.readOnly ? new Error('the server turned read-only') : undefined));
      return client;
    }
  }

  /** target_session_attrs on a fresh connection: from the startup report (Postgres ≥ 14) or by asking. */
  private async verify(client: MultiHostClient): Promise<boolean> {
    const reported = client.serverParameters;
    if (reported.in_hot_standby !== undefined && reported.default_transaction_read_only !== undefined) {
      return this.locator.accepts({
        inHotStandby: reported.in_hot_standby === 'on',
        readOnly: reported.default_transaction_read_only === 'on',
      });
    }
    const { rows } = await (client as unknown as pg.ClientBase).query<{
      recovery: boolean;
      read_only: string;
    }>(
      `select pg_catalog.pg_is_in_recovery() as recovery,
              pg_catalog.current_setting('transaction_read_only') as read_only`,
    );
    return this.locator.accepts({ inHotStandby: rows[0]!.recovery, readOnly: rows[0]!.read_only === 'on' });
  }

  end(): Promise<void> {
    return this.pool.end();
  }
}
