import { execFile, execFileSync } from 'node:child_process';
import {
  appendFileSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { ReplicationLink } from './link.ts';

/**
 * Throw-away Postgres clusters for the failover run and its tests: a primary and a streaming standby made with
 * initdb and pg_basebackup in a temporary directory, on free ports, from the binaries of the installed
 * Postgres (never the machine's own cluster: every pg_ctl call names a data directory below our temp dir).
 * Postgres refuses to run as root: then every cluster command runs as the `postgres` OS user (runuser) and the
 * temp dir belongs to it. `cleanupAll()` stops whatever is still running (also from exit handlers).
 */

const run = promisify(execFile);

function findBinDir(): string {
  if (process.env.PG_BIN_DIR) return process.env.PG_BIN_DIR;
  for (const version of ['17', '16', '15', '14']) {
    const dir = `/usr/lib/postgresql/${version}/bin`;
    if (existsSync(join(dir, 'pg_ctl'))) return dir;
  }
  try {
    return execFileSync('pg_config', ['--bindir']).toString().trim();
  } catch {
    throw new Error('no Postgres binaries found: set PG_BIN_DIR to the directory holding pg_ctl and initdb');
  }
}

const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
let binDir: string | undefined;

/** Runs one of Postgres' programs, as the postgres OS user when we are root. */
async function pgTool(tool: string, args: string[], timeoutMs = 120_000): Promise<string> {
  binDir ??= findBinDir();
  const path = join(binDir, tool);
  const [command, commandArgs] = isRoot ? ['runuser', ['-u', 'postgres', '--', path, ...args]] : [path, args];
  try {
    const { stdout, stderr } = await run(command, commandArgs, { timeout: timeoutMs, cwd: '/' });
    return `${stdout}${stderr}`;
  } catch (error) {
    const { stdout, stderr } = error as { stdout?: string; stderr?: string };
    throw new Error(`${tool} ${args.join(' ')} failed: ${`${stderr ?? ''}${stdout ?? ''}`.trim() || error}`);
  }
}

function postgresOwner(): { uid: number; gid: number } | undefined {
  if (!isRoot) return undefined;
  const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim());
  return { uid, gid };
}

export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolvePort(port));
    });
  });
}

const live = new Set<PgNode>();
const tempDirs = new Set<string>();

/** Stops every node still running (immediate mode) and removes the temp dirs; synchronous, for exit handlers. */
export function cleanupAllSync(): void {
  for (const node of live) {
    try {
      binDir ??= findBinDir();
      const args = ['-D', node.dataDir, '-m', 'immediate', '-w', 'stop'];
      if (isRoot)
        execFileSync('runuser', ['-u', 'postgres', '--', join(binDir, 'pg_ctl'), ...args], {
          stdio: 'ignore',
        });
      else execFileSync(join(binDir, 'pg_ctl'), args, { stdio: 'ignore' });
    } catch {}
  }
  live.clear();
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

/** One Postgres server: a data directory and the port it listens on (both fixed for its whole life). */
export class PgNode {
  constructor(
    readonly name: string,
    readonly dataDir: string,
    readonly port: number,
    /** Where the Unix socket goes (the temp root: never /var/run/postgresql). */
    private readonly socketDir: string,
    private readonly owner: { uid: number; gid: number } | undefined,
  ) {}

  get hostPort(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** A libpq URL for one database on this node. */
  url(database = 'postgres'): string {
    return `postgres://postgres@127.0.0.1:${this.port}/${database}`;
  }

  get running(): boolean {
    return live.has(this);
  }

  /** Port, socket and name are given on the command line: pg_basebackup and pg_rewind copy the config files. */
  async start(): Promise<void> {
    const options = `-p ${this.port} -k ${this.socketDir} -c listen_addresses=127.0.0.1 -c cluster_name=${this.name}`;
    await pgTool('pg_ctl', [
      '-D',
      this.dataDir,
      '-l',
      join(this.dataDir, 'server.log'),
      '-w',
      '-t',
      '60',
      '-o',
      options,
      'start',
    ]);
    live.add(this);
  }

  /** The crash: every process of the server gets SIGQUIT, nothing is flushed or checkpointed. */
  async killImmediate(): Promise<void> {
    await pgTool('pg_ctl', ['-D', this.dataDir, '-m', 'immediate', '-w', 'stop']);
    live.delete(this);
  }

  async stopFast(): Promise<void> {
    await pgTool('pg_ctl', ['-D', this.dataDir, '-m', 'fast', '-w', 'stop']);
    live.delete(this);
  }

  /** Ends recovery: the standby becomes a primary (pg_ctl waits until it accepts writes). */
  async promote(): Promise<void> {
    await pgTool('pg_ctl', ['-D', this.dataDir, '-w', '-t', '60', 'promote']);
  }

  async query<T extends pg.QueryResultRow>(
    text: string,
    params: unknown[] = [],
    database = 'postgres',
  ): Promise<T[]> {
    const client = new pg.Client({ connectionString: this.url(database), connectionTimeoutMillis: 5000 });
    client.on('error', () => {});
    await client.connect();
    try {
      return (await client.query<T>(text, params)).rows;
    } finally {
      await client.end().catch(() => {});
    }
  }

  async isInRecovery(): Promise<boolean> {
    return (await this.query<{ recovery: boolean }>('select pg_is_in_recovery() as recovery'))[0]!.recovery;
  }

  /** Appends lines to postgresql.auto.conf (kept owned by the postgres user). */
  appendConfig(lines: string[]): void {
    const file = join(this.dataDir, 'postgresql.auto.conf');
    appendFileSync(file, `${lines.join('\n')}\n`);
    if (this.owner) chownSync(file, this.owner.uid, this.owner.gid);
  }

  /** Makes this (stopped) data directory a standby, streaming from 127.0.0.1:`port`, on its next start. */
  followOnStart(port: number): void {
    const signal = join(this.dataDir, 'standby.signal');
    writeFileSync(signal, '');
    if (this.owner) chownSync(signal, this.owner.uid, this.owner.gid);
    this.appendConfig([
      `primary_conninfo = 'host=127.0.0.1 port=${port} user=postgres application_name=${this.name}'`,
    ]);
  }

  tailLog(lines = 20): string {
    try {
      return readFileSync(join(this.dataDir, 'server.log'), 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }
}

export type StandbyMode = 'sync' | 'async' | 'none';

export interface PairOptions {
  /** sync: the standby must confirm every commit (synchronous_standby_names); async: it may lag; none: no standby. */
  mode: StandbyMode;
  /** synchronous_commit on the primary (sync mode: 'on' waits for the standby's flush; 'remote_apply' for replay). */
  synchronousCommit?: 'on' | 'remote_write' | 'remote_apply' | 'local' | 'off';
  /** fsync off makes the clusters faster on a slow disk; a process kill loses nothing either way (the OS survives). */
  fsync?: boolean;
  /** One-way delay of the replication link (see link.ts); 0 relays at once. */
  linkDelayMs?: number;
}

/**
 * A primary and (unless mode is none) one streaming standby. Node roles change with every failover, ports and
 * data directories do not: `primary` and `standby` say who is what right now.
 */
export class PgPair {
  primary: PgNode;
  standby: PgNode | undefined;
  /** The standby's replication connection to the primary goes through this. */
  private link: ReplicationLink | undefined;
  /** WAL bytes the last kill dropped from the link before the standby got them. */
  lastDroppedBytes = 0;

  private constructor(
    readonly root: string,
    readonly nodes: PgNode[],
    readonly options: PairOptions,
  ) {
    this.primary = nodes[0]!;
    this.standby = nodes[1];
  }

  static async create(options: PairOptions): Promise<PgPair> {
    const root = mkdtempSync(join(tmpdir(), 'mana-credits-failover-'));
    tempDirs.add(root);
    const owner = postgresOwner();
    if (owner) chownSync(root, owner.uid, owner.gid);
    const names = options.mode === 'none' ? ['node-a'] : ['node-a', 'node-b'];
    const nodes: PgNode[] = [];
    for (const name of names) nodes.push(new PgNode(name, join(root, name), await freePort(), root, owner));
    const pair = new PgPair(root, nodes, options);
    const primary = nodes[0]!;
    await pgTool('initdb', [
      '-D',
      primary.dataDir,
      '-U',
      'postgres',
      '--auth=trust',
      '-E',
      'UTF8',
      '--no-instructions',
      // The OS never crashes in this run: what initdb, pg_basebackup and pg_rewind write need not be fsynced.
      '--no-sync',
    ]);
    // Settings every node shares (pg_basebackup and pg_rewind copy this file). The sync standby is named by
    // '*' (any standby): that is the trap after a promotion, see promote().
    writeFileSync(
      join(primary.dataDir, 'postgresql.conf'),
      `${readFileSync(join(primary.dataDir, 'postgresql.conf'), 'utf8')}
# mana-credits failover run
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
wal_log_hints = on
wal_keep_size = '512MB'
shared_buffers = '32MB'
max_connections = 60
fsync = ${options.fsync === false ? 'off' : 'on'}
synchronous_commit = ${options.synchronousCommit ?? 'on'}
synchronous_standby_names = '${options.mode === 'sync' ? '*' : ''}'
wal_receiver_status_interval = '1s'
log_min_messages = warning
`,
    );
    await primary.start();
    const standby = nodes[1];
    if (standby) {
      mkdirSync(standby.dataDir, { mode: 0o700 });
      if (owner) chownSync(standby.dataDir, owner.uid, owner.gid);
      await pgTool('pg_basebackup', [
        '-h',
        '127.0.0.1',
        '-p',
        String(primary.port),
        '-U',
        'postgres',
        '-D',
        standby.dataDir,
        '-X',
        'stream',
        '-c',
        'fast',
        '--no-sync',
      ]);
      await pair.linkTo(primary, standby);
      await standby.start();
      await pair.waitForStandby();
    }
    return pair;
  }

  private async linkTo(primary: PgNode, standby: PgNode): Promise<void> {
    await this.link?.close();
    this.link = await ReplicationLink.start(
      { host: '127.0.0.1', port: primary.port },
      this.options.linkDelayMs ?? 0,
    );
    standby.followOnStart(this.link.port);
  }

  /** Until the standby streams (and, in sync mode, confirms commits synchronously). */
  async waitForStandby(timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const rows = await this.primary
        .query<{ state: string; sync_state: string }>('select state, sync_state from pg_stat_replication')
        .catch(() => []);
      if (
        rows.some((r) => r.state === 'streaming' && (this.options.mode !== 'sync' || r.sync_state === 'sync'))
      )
        return;
      if (Date.now() > deadline) {
        throw new Error(
          `standby did not start streaming: ${JSON.stringify(rows)}\n${this.standby?.tailLog()}`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** The failure: the primary dies (immediate mode) and the standby is left without one. */
  /**
   * The primary dies (`kill`): what its link to the standby still carried is lost with it. Or (`partition`) the
   * link goes down first and the primary lives on, cut off from its standby, for `partitionMs` before it dies.
   */
  async killPrimary(fault: 'kill' | 'partition' = 'kill', partitionMs = 1000): Promise<{ killedAt: number }> {
    const link = this.link;
    if (fault === 'partition') {
      link?.sever();
      await new Promise((r) => setTimeout(r, partitionMs));
    } else link?.dropOnPrimaryDeath();
    const killedAt = Date.now();
    await this.primary.killImmediate();
    this.lastDroppedBytes = link?.droppedBytes ?? 0;
    await link?.close();
    this.link = undefined;
    return { killedAt };
  }

  /**
   * Promotes the standby. It inherited synchronous_standby_names and, having no standby of its own, would block
   * every commit until that is cleared: the setting is overridden (ALTER SYSTEM) right after the promotion and
   * restored by rejoin() once a standby confirms again. Returns the milliseconds the promotion took.
   */
  async promote(): Promise<{ promoteMs: number }> {
    const standby = this.standby;
    if (!standby) throw new Error('no standby to promote');
    const started = performance.now();
    await standby.promote();
    const promoteMs = performance.now() - started;
    if (this.options.mode === 'sync') {
      await standby.query(`alter system set synchronous_standby_names = ''`);
      await standby.query('select pg_reload_conf()');
    }
    const old = this.primary;
    this.primary = standby;
    this.standby = old;
    return { promoteMs };
  }

  /**
   * The old primary comes back as a standby of the new one: pg_rewind discards what it wrote after the standby
   * stopped following it (its unconfirmed tail), then it streams again. In sync mode the new primary requires
   * it synchronously again once it streams. Returns the milliseconds each part took.
   */
  async rejoin(): Promise<{ rewindMs: number; catchUpMs: number }> {
    const old = this.standby;
    if (!old) throw new Error('no old primary to rejoin');
    const started = performance.now();
    // pg_rewind reads the timeline from the source's control file, which a checkpoint brings up to date.
    await this.primary.query('checkpoint');
    await pgTool('pg_rewind', [
      '-D',
      old.dataDir,
      `--source-server=host=127.0.0.1 port=${this.primary.port} user=postgres dbname=postgres`,
      '--no-sync',
    ]);
    await this.linkTo(this.primary, old);
    const rewindMs = performance.now() - started;
    const catchUpStarted = performance.now();
    await old.start();
    if (this.options.mode === 'sync') {
      await this.primary.query('alter system reset synchronous_standby_names');
      await this.primary.query('select pg_reload_conf()');
    }
    await this.waitForStandby();
    return { rewindMs, catchUpMs: performance.now() - catchUpStarted };
  }

  /** The libpq URL naming every node (the multi-host form), for one database. */
  multiHostUrl(database: string): string {
    return `postgres://postgres@${this.nodes.map((n) => n.hostPort).join(',')}/${database}?target_session_attrs=read-write`;
  }

  async destroy(): Promise<void> {
    await this.link?.close();
    for (const node of this.nodes) if (node.running) await node.killImmediate().catch(() => {});
    rmSync(this.root, { recursive: true, force: true });
    tempDirs.delete(this.root);
  }
}
