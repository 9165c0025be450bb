import { execFile } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Database } from '@mana-credits/db';
import {
  type CompiledQuery,
  DummyDriver,
  Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
} from 'kysely';
import { spendCredits } from '../../server/src/domain/credits/personal.ts';
import { type LatencySummary, summarize } from './stats.ts';

const run = promisify(execFile);

const USER = 'bench-sentinel-user';
const KEY = 'bench-sentinel-key';

/**
 * The statement one `credits.use` sends, taken from the code rather than retyped: spendCredits runs against
 * a Kysely whose driver executes nothing and whose logger keeps every compiled query. The first query is the
 * debit (the dummy driver answers "no row", so the insufficient-balance path follows; it is ignored).
 */
export async function captureUseStatement(): Promise<CompiledQuery> {
  const queries: CompiledQuery[] = [];
  const db = new Kysely<Database>({
    dialect: {
      createAdapter: () => new PostgresAdapter(),
      createDriver: () => new DummyDriver(),
      createIntrospector: (kysely) => new PostgresIntrospector(kysely),
      createQueryCompiler: () => new PostgresQueryCompiler(),
    },
    log: (event) => {
      if (event.level === 'query') queries.push(event.query);
    },
  });
  await spendCredits(db, {
    userId: USER,
    amount: 1,
    appId: 'bench',
    description: 'bench call',
    idempotencyKey: KEY,
  }).catch(() => undefined);
  const debit = queries[0];
  if (!debit || !/update credits\.balances/i.test(debit.sql)) {
    throw new Error('could not capture the debit statement of credits.use');
  }
  return debit;
}

/**
 * Turns the captured statement into a pgbench script: the user and the idempotency key become pgbench
 * variables, the other parameters keep their captured values (-D), NULLs become literals (pgbench variables
 * cannot be NULL). With -M prepared every :variable is sent as a bind parameter, like the pg driver does.
 */
export function pgbenchScript(
  statement: CompiledQuery,
  user: { random: number } | { fixed: string },
): { script: string; defines: string[] } {
  const defines: string[] = [];
  const names = statement.parameters.map((value, index) => {
    if (value === USER) return ':uid';
    if (value === KEY) return ':key';
    if (value === null || value === undefined) return 'NULL';
    defines.push(`p${index + 1}=${String(value)}`);
    return `:p${index + 1}`;
  });
  const used = new Set<number>();
  const sql = statement.sql.replace(/\$(\d+)/g, (_, digits: string) => {
    const index = Number(digits) - 1;
    used.add(index);
    const name = names[index];
    if (!name) throw new Error(`statement names $${digits} but has ${names.length} parameters`);
    return name;
  });
  if (used.size !== names.length) throw new Error('captured statement does not use every parameter');
  if ('fixed' in user) defines.push(`uid=${user.fixed}`);
  const lines = [
    ...('random' in user ? [`\\set uid random(1, ${user.random})`] : []),
    '\\set key random(1, 9000000000000000000)',
    `${sql.trim()};`,
  ];
  return { script: `${lines.join('\n')}\n`, defines };
}

export interface PgbenchResult {
  tps: number;
  transactions: number;
  failed: number;
  aborted: boolean;
  latency: LatencySummary;
}

export interface PgbenchJob {
  databaseUrl: string;
  script: string;
  defines: string[];
  clients: number;
  /** 'prepared' for the ceiling; 'extended' sends unnamed statements, parsed and planned every time, as node-pg does. */
  protocol?: 'prepared' | 'extended';
  warmupSeconds: number;
  seconds: number;
  workDir: string;
  /**
   * Open loop (`-R`): transactions scheduled at this rate, each latency from its scheduled start (pgbench's
   * schedule lag added), as step 6 measures the server.
   */
  rate?: number;
}

/** One warm-up run, then the measured run with a per-transaction log for exact latency percentiles. */
export async function runPgbench(job: PgbenchJob): Promise<PgbenchResult> {
  mkdirSync(job.workDir, { recursive: true });
  const scriptFile = join(job.workDir, 'use.sql');
  writeFileSync(scriptFile, job.script);
  const common = [
    '-n',
    '-M',
    job.protocol ?? 'prepared',
    '-c',
    String(job.clients),
    '-j',
    String(Math.min(job.clients, 2)),
    '-f',
    scriptFile,
    ...job.defines.flatMap((define) => ['-D', define]),
    ...(job.rate ? ['-R', String(job.rate)] : []),
  ];
  if (job.warmupSeconds > 0) {
    await pgbench([...common, '-T', String(job.warmupSeconds), job.databaseUrl]);
  }
  const logDir = join(job.workDir, 'log');
  rmSync(logDir, { recursive: true, force: true });
  mkdirSync(logDir);
  const { stdout, code } = await pgbench([
    ...common,
    '-T',
    String(job.seconds),
    '-l',
    '--log-prefix',
    join(logDir, 'tx'),
    job.databaseUrl,
  ]);
  const tps = Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(stdout)?.[1] ?? Number.NaN);
  const transactions = Number(/number of transactions actually processed: (\d+)/.exec(stdout)?.[1] ?? 0);
  const failed = Number(/number of failed transactions: (\d+)/.exec(stdout)?.[1] ?? 0);
  const latencies: number[] = [];
  for (const file of readdirSync(logDir)) {
    for (const line of readFileSync(join(logDir, file), 'utf8').split('\n')) {
      // client_id transaction_no time(µs) script_no time_epoch time_us [schedule_lag(µs) with -R]
      const fields = line.split(' ');
      if (fields[2]) latencies.push((Number(fields[2]) + Number(fields[6] ?? 0)) / 1000);
    }
  }
  rmSync(logDir, { recursive: true, force: true });
  if (!Number.isFinite(tps)) throw new Error(`pgbench printed no tps:\n${stdout}`);
  return { tps, transactions, failed, aborted: code !== 0, latency: summarize(latencies) };
}

async function pgbench(args: string[]): Promise<{ stdout: string; code: number }> {
  try {
    const { stdout } = await run('pgbench', args, { maxBuffer: 16 * 1024 * 1024 });
    return { stdout, code: 0 };
  } catch (error) {
    const failure = error as { stdout?: string; stderr?: string; code?: number };
    // pgbench exits 2 when some clients aborted but still prints its summary.
    if (failure.stdout?.includes('tps =')) return { stdout: failure.stdout, code: failure.code ?? 1 };
    throw new Error(`pgbench failed: ${failure.stderr ?? String(error)}`);
  }
}

export async function pgbenchVersion(): Promise<string> {
  const { stdout } = await run('pgbench', ['--version']);
  return stdout.trim();
}
