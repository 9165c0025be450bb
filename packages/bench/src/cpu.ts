import { readFileSync } from 'node:fs';
import pg from 'pg';

/**
 * CPU time spent by the server process and by the Postgres client backends of the bench database (not
 * autovacuum's, which comes when it likes), read from /proc/<pid>/stat (Linux). Per request it is far
 * steadier than throughput on a shared, loaded machine: other work takes cores away (throughput drops) but
 * does not make our work cost much more CPU.
 * Backends that exit during a step (pgbench's, a dropped pool connection) are not counted, so the steps
 * that use it are the server's, whose pool keeps its connections.
 */
export interface CpuSnapshot {
  serverMs: number;
  backends: Map<number, number>;
}

export interface CpuSpent {
  serverMs: number;
  databaseMs: number;
}

/** Linux's USER_HZ: /proc reports CPU times in ticks of 1/100 s on every common platform. */
const TICKS_PER_SECOND = 100;

/** utime + stime of a process in ms, or undefined when it is gone (or not on Linux). */
export function processCpuMs(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces; fields 14 and 15 counted from after its closing paren.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS_PER_SECOND;
  } catch {
    return undefined;
  }
}

export class CpuMeter {
  private constructor(
    private readonly client: pg.Client,
    private readonly database: string,
    private readonly serverPid: number,
  ) {}

  static async open(databaseUrl: string, serverPid: number): Promise<CpuMeter> {
    const client = new pg.Client({ connectionString: databaseUrl, application_name: 'bench cpu meter' });
    await client.connect();
    return new CpuMeter(client, new URL(databaseUrl).pathname.slice(1), serverPid);
  }

  private async backendPids(): Promise<number[]> {
    const { rows } = await this.client.query<{ pid: number }>(
      `select pid from pg_stat_activity
        where datname = $1 and backend_type = 'client backend' and pid <> pg_backend_pid()`,
      [this.database],
    );
    return rows.map((row) => row.pid);
  }

  async snapshot(): Promise<CpuSnapshot> {
    const backends = new Map<number, number>();
    for (const pid of await this.backendPids()) {
      const ms = processCpuMs(pid);
      if (ms !== undefined) backends.set(pid, ms);
    }
    return { serverMs: processCpuMs(this.serverPid) ?? 0, backends };
  }

  /** CPU spent since `before`; backends that appeared since count from zero. */
  async since(before: CpuSnapshot): Promise<CpuSpent> {
    const after = await this.snapshot();
    let databaseMs = 0;
    for (const [pid, ms] of after.backends) databaseMs += ms - (before.backends.get(pid) ?? 0);
    return { serverMs: after.serverMs - before.serverMs, databaseMs };
  }

  close(): Promise<void> {
    return this.client.end();
  }
}
