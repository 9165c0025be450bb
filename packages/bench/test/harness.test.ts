import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDb } from '@mana-credits/db';
import { sql } from 'kysely';
import { describe, expect, it } from 'vitest';
import { processCpuMs } from '../src/cpu.ts';
import { checkLedger, createBenchDatabase, LOT_MIX, seed } from '../src/database.ts';
import { captureUseStatement, pgbenchScript, runPgbench } from '../src/pgbench.ts';
import { writeDocs } from '../src/report.ts';
import { requestFactory } from '../src/requests.ts';
import { OBSERVER, PRODUCTION_NODE_FLAGS, readRuntime } from '../src/server.ts';
import { summarize } from '../src/stats.ts';

const pgbenchAvailable = spawnSync('pgbench', ['--version']).status === 0;

describe('the captured debit statement', () => {
  it('is the update + ledger insert of credits.use, with user and key as pgbench variables', async () => {
    const statement = await captureUseStatement();
    expect(statement.sql).toMatch(/update credits\.balances/);
    expect(statement.sql).toMatch(/insert into credits\.transactions/);

    const { script, defines } = pgbenchScript(statement, { random: 1000 });
    expect(script).toContain('\\set uid random(1, 1000)');
    expect(script).toMatch(/where user_id = :uid/);
    expect(script).not.toMatch(/\$\d/);
    expect(script.trimEnd().endsWith(';')).toBe(true);
    expect(defines.filter((define) => define.endsWith('=usage'))).toHaveLength(1);

    const hot = pgbenchScript(statement, { fixed: 'hot-user' });
    expect(hot.script).not.toContain('\\set uid');
    expect(hot.defines).toContain('uid=hot-user');
  });

  // pgbench needs a Postgres server; with PGlite only the script itself is checked (above).
  it.runIf(process.env.DATABASE_URL && pgbenchAvailable)(
    'debits exactly once per pgbench transaction, ledger included',
    async () => {
      const database = await createBenchDatabase(process.env.DATABASE_URL!);
      const workDir = mkdtempSync(join(tmpdir(), 'bench-test-'));
      try {
        await seed(database.url, {
          users: 3,
          credits: 1_000_000_000,
          hotUserId: 'hot',
          guildId: 'guild',
          guildMembers: [],
        });
        const { script, defines } = pgbenchScript(await captureUseStatement(), { fixed: 'hot' });
        // -T with a short run: the statement must run without errors and move exactly one credit each time.
        const result = await runPgbench({
          databaseUrl: database.url,
          script,
          defines,
          clients: 2,
          warmupSeconds: 0,
          seconds: 1,
          workDir,
        });
        expect(result.failed).toBe(0);
        expect(result.aborted).toBe(false);
        expect(result.transactions).toBeGreaterThan(0);
        const ledger = await checkLedger(database.url);
        expect(ledger.mismatched).toBe(0);
        // 3 + 1 seeded balances and the pool, each with its seed row, plus one row per pgbench debit.
        expect(ledger.accounts).toBe(5);
        expect(ledger.ledgerRows).toBe(5 + result.transactions);
        expect(ledger.lotsMismatched).toBe(0);
      } finally {
        rmSync(workDir, { recursive: true, force: true });
        await database.drop();
      }
    },
  );

  it.runIf(process.env.DATABASE_URL && pgbenchAvailable)(
    'burns a 10-lot account from the first lot in burn order, lots and ledger in step',
    async () => {
      const database = await createBenchDatabase(process.env.DATABASE_URL!);
      const workDir = mkdtempSync(join(tmpdir(), 'bench-test-'));
      try {
        await seed(database.url, {
          users: 2,
          credits: 1_000_000_000,
          hotUserId: 'hot',
          guildId: 'guild',
          guildMembers: [],
          lotsUsers: 2,
          hotLotsUserId: 'hot10',
        });
        const { script, defines } = pgbenchScript(await captureUseStatement(), { fixed: 'hot10' });
        const result = await runPgbench({
          databaseUrl: database.url,
          script,
          defines,
          clients: 2,
          warmupSeconds: 0,
          seconds: 1,
          workDir,
        });
        expect(result.failed).toBe(0);
        expect(result.transactions).toBeGreaterThan(0);
        const ledger = await checkLedger(database.url);
        expect(ledger.mismatched).toBe(0);
        expect(ledger.lotsMismatched).toBe(0);
        // 2 + 1 one-lot users, 2 + 1 ten-lot users, the pool.
        expect(ledger.accounts).toBe(7);
        expect(ledger.ledgerRows).toBe(3 + 30 + 1 + result.transactions);
        const handle = await createDb({ databaseUrl: database.url, poolSize: 1 });
        try {
          const { rows } = await sql<{ priority: number; days: number | null; used: number }>`
            select priority, round(extract(epoch from expires_at - created_at) / 86400)::int as days,
                   (amount - remaining)::int8 as used
              from credits.lots where account_id = 'hot10' order by priority, expires_at`.execute(handle.db);
          expect(rows).toHaveLength(LOT_MIX.length);
          // Only the first lot in burn order (priority 10, 200 days) paid: it covers every debit.
          expect(rows.filter((row) => row.used > 0)).toEqual([
            { priority: 10, days: 200, used: result.transactions },
          ]);
        } finally {
          await handle.close();
        }
      } finally {
        rmSync(workDir, { recursive: true, force: true });
        await database.drop();
      }
    },
  );
});

describe('load requests', () => {
  const target = {
    serviceKey: 'k',
    users: 100,
    hotUserId: 'hot',
    lotsUsers: 7,
    hotLotsUserId: 'hot10',
    guildId: 'g',
    guildMembers: [],
    batchSize: 2,
  };
  const userOf = (kind: 'hot-user-lots' | 'internal-use-lots') => {
    const factory = requestFactory({ ...target, kind });
    expect(factory.path).toBe('/trpc/internal.credits.use');
    return (JSON.parse(factory.next().body) as { json: { userId: string } }).json.userId;
  };

  it('sends the 10-lot steps to the 10-lot users', () => {
    expect(userOf('hot-user-lots')).toBe('hot10');
    for (let i = 0; i < 50; i++) expect(userOf('internal-use-lots')).toMatch(/^lots-[1-7]$/);
  });
});

describe('report helpers', () => {
  it('computes nearest-rank percentiles', () => {
    const values = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(summarize(values)).toEqual({ p50: 50, p99: 99, p999: 100, max: 100, mean: 50.5 });
    const thousands = Array.from({ length: 2000 }, (_, i) => 2000 - i);
    expect(summarize(thousands)).toMatchObject({ p50: 1000, p99: 1980, p999: 1998, max: 2000 });
    expect(summarize([])).toEqual({ p50: 0, p99: 0, p999: 0, max: 0, mean: 0 });
  });

  it.runIf(process.platform === 'linux')('reads a process CPU time from /proc', () => {
    const before = processCpuMs(process.pid)!;
    const until = Date.now() + 100;
    while (Date.now() < until) {}
    expect(processCpuMs(process.pid)!).toBeGreaterThan(before);
    expect(processCpuMs(2 ** 22 + 1)).toBeUndefined();
  });

  it('replaces only its own block of docs/benchmarks.md', () => {
    const dir = mkdtempSync(join(tmpdir(), 'bench-docs-'));
    const file = join(dir, 'benchmarks.md');
    try {
      writeFileSync(
        file,
        'intro by hand\n<!-- bench:full:begin -->\nold full\n<!-- bench:full:end -->\n' +
          '<!-- bench:quick:begin -->\nold quick\n<!-- bench:quick:end -->\nnotes by hand\n',
      );
      writeDocs(file, 'quick', 'new quick');
      const text = readFileSync(file, 'utf8');
      expect(text).toContain('intro by hand');
      expect(text).toContain('old full');
      expect(text).toContain('new quick');
      expect(text).not.toContain('old quick');
      expect(text).toContain('notes by hand');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('starts the server with the node flags of the image and `pnpm start`', () => {
    const root = join(import.meta.dirname, '../../..');
    const cmd = /^CMD (\[.*\])$/m.exec(readFileSync(join(root, 'Dockerfile'), 'utf8'))?.[1];
    expect(JSON.parse(cmd ?? '[]')).toEqual(['node', ...PRODUCTION_NODE_FLAGS, 'dist/main.js']);
    const scripts = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).scripts;
    expect(scripts.start).toContain(`node ${PRODUCTION_NODE_FLAGS.join(' ')} packages/server/dist/main.js`);
  });

  it('reads GC pauses and event-loop delays from the server observer', () => {
    const dir = mkdtempSync(join(tmpdir(), 'bench-observer-'));
    const file = join(dir, 'runtime.jsonl');
    try {
      const from = Date.now();
      // Garbage for a few scavenges, later the loop blocked for 150 ms, then time for the next line: counted
      // from the block (a fixed exit time could come before the next line when the garbage took long, on a
      // busy machine, and the line with the block was never written).
      const script =
        'let keep = []; for (let i = 0; i < 2e5; i++) keep.push({ i }); keep = null;' +
        'setTimeout(() => { const until = Date.now() + 150; while (Date.now() < until) {} setTimeout(() => {}, 700); }, 300);';
      const child = spawnSync(process.execPath, ['--import', OBSERVER, '-e', script], {
        env: { ...process.env, BENCH_OBSERVER_FILE: file },
      });
      expect(child.status, child.stderr.toString()).toBe(0);
      // Every line the child wrote (a window ending earlier could end before the line of the block on a busy machine).
      const figures = readRuntime(file, from, Date.now())!;
      expect(figures.gcPauses).toBeGreaterThan(0);
      expect(figures.gcMs).toBeGreaterThan(0);
      expect(figures.longestGcMs).toBeGreaterThan(0);
      expect(figures.loopDelayMaxMs).toBeGreaterThanOrEqual(100);
      expect(figures.loopDelayMaxMs).toBeLessThan(1000);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
