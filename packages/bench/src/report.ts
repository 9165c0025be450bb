import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import type { ProfileSummary } from './profile.ts';
import type { RuntimeFigures } from './server.ts';
import type { LatencySummary } from './stats.ts';

export interface StepRow {
  id: string;
  title: string;
  status: 'ok' | 'skipped' | 'failed';
  note?: string;
  connections?: number;
  throughput?: number;
  unit?: string;
  ratio?: { value: number; of: string };
  latency?: LatencySummary;
  errors?: number;
  non2xx?: number;
  statuses?: Record<string, number>;
  rssMb?: number;
  /** CPU time per request (per debit for batches) of the server process and of its database backends. */
  cpuPerOperation?: { serverUs: number; databaseUs: number };
  /** The server's GC pauses and event-loop delay over the measured window (server-observer.mjs). */
  runtime?: RuntimeFigures;
  /** The machine's 1-minute load average when the step started and when it ended. */
  load?: { before: number; after: number };
}

export interface Goal {
  id: string;
  text: string;
  measured: string;
  verdict: 'pass' | 'FAIL' | 'n/a';
}

export interface Machine {
  cpus: number;
  cpuModel: string;
  memoryGb: number;
  node: string;
  postgres: string;
  pgbench: string;
  autocannon: string;
  commit: string;
  loadBefore: string;
  loadAfter?: string;
}

export function machineInfo(postgres: string, pgbench: string, root: string): Machine {
  const require = createRequire(import.meta.url);
  const autocannon = (require('autocannon/package.json') as { version: string }).version;
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
    // The results file itself is rewritten by every run, so it does not count as a local change.
    const dirty = execFileSync('git', ['status', '--porcelain', '--', '.', ':!docs/benchmarks.md'], {
      cwd: root,
      encoding: 'utf8',
    }).trim();
    if (dirty) commit += ' (uncommitted changes)';
  } catch {}
  return {
    cpus: availableParallelism(),
    cpuModel: cpus()[0]?.model.trim() ?? 'unknown',
    memoryGb: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    postgres,
    pgbench,
    autocannon,
    commit,
    loadBefore: loadText(),
  };
}

export const loadText = () =>
  loadavg()
    .map((value) => value.toFixed(2))
    .join(' / ');

const num = (value: number | undefined, digits = 0) =>
  value === undefined || !Number.isFinite(value)
    ? ''
    : value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
const ms = (value: number | undefined) => (value === undefined ? '' : value.toFixed(value < 10 ? 2 : 1));

function cells(row: StepRow): string[] {
  if (row.status !== 'ok') {
    return [
      row.id,
      row.title,
      '',
      row.status === 'skipped' ? 'skipped' : 'FAILED',
      '',
      '',
      '',
      '',
      '',
      '',
      '',
      '',
      '',
      loadCell(row),
    ];
  }
  const problems = (row.errors ?? 0) + (row.non2xx ?? 0);
  return [
    row.id,
    row.title,
    num(row.connections),
    `${num(row.throughput)} ${row.unit ?? ''}`.trim(),
    row.ratio ? `${row.ratio.value.toFixed(2)}× ${row.ratio.of}` : '',
    ms(row.latency?.p50),
    ms(row.latency?.p99),
    ms(row.latency?.p999),
    ms(row.latency?.max),
    problems === 0 ? '0' : `${num(row.errors)} err / ${num(row.non2xx)} non-2xx`,
    row.rssMb === undefined ? '' : num(row.rssMb),
    row.cpuPerOperation
      ? `${num(row.cpuPerOperation.serverUs)} + ${num(row.cpuPerOperation.databaseUs)}`
      : '',
    runtimeCell(row.runtime),
    loadCell(row),
  ];
}

/** Share of the window spent in GC pauses · the longest pause / the longest event-loop delay, in ms. */
const runtimeCell = (runtime: RuntimeFigures | undefined) =>
  runtime && runtime.seconds > 0
    ? `${((runtime.gcMs / (runtime.seconds * 1000)) * 100).toFixed(1)} % · ${runtime.longestGcMs.toFixed(0)} / ${runtime.loopDelayMaxMs.toFixed(0)}`
    : '';

const loadCell = (row: StepRow) =>
  row.load ? `${row.load.before.toFixed(1)} → ${row.load.after.toFixed(1)}` : '';

const HEADER = [
  'step',
  'what',
  'conns',
  'throughput',
  'ratio',
  'p50 ms',
  'p99 ms',
  'p99.9 ms',
  'max ms',
  'errors',
  'RSS MB',
  'CPU µs/op node + pg',
  'GC % · max pause / loop delay ms',
  'load 1m',
];

/** The table for the terminal: aligned columns, then the notes of skipped or failed steps. */
export function textTable(rows: StepRow[]): string {
  const body = rows.map(cells);
  const widths = HEADER.map((title, column) =>
    Math.max(title.length, ...body.map((line) => line[column]!.length)),
  );
  const line = (values: string[]) =>
    values.map((value, column) =>
      column < 2 ? value.padEnd(widths[column]!) : value.padStart(widths[column]!),
    );
  const text = [HEADER, ...body].map((values) => line(values).join('  ').trimEnd());
  text.splice(1, 0, widths.map((width) => '-'.repeat(width)).join('  '));
  return [...text, ...notes(rows)].join('\n');
}

function notes(rows: StepRow[]): string[] {
  return rows
    .filter((row) => row.note)
    .map((row) => `  step ${row.id} ${row.status === 'ok' ? '' : `${row.status}: `}${row.note}`);
}

/** A Markdown table padded the way the formatter (Biome) prints it, so the generated file stays clean. */
function markdown(header: string[], body: string[][], rightAligned: (column: number) => boolean): string {
  const widths = header.map((title, column) =>
    Math.max(3, title.length, ...body.map((line) => line[column]!.length)),
  );
  const row = (values: string[]) =>
    `| ${values
      .map((value, column) =>
        rightAligned(column) ? value.padStart(widths[column]!) : value.padEnd(widths[column]!),
      )
      .join(' | ')} |`;
  const rule = `| ${widths
    .map((width, column) => (rightAligned(column) ? `${'-'.repeat(width - 1)}:` : '-'.repeat(width)))
    .join(' | ')} |`;
  return [row(header), rule, ...body.map(row)].join('\n');
}

export function markdownTable(rows: StepRow[]): string {
  const table = markdown(HEADER, rows.map(cells), (column) => column >= 2);
  const extra = notes(rows).map((note) => `-${note.slice(1)}`);
  return [table, ...(extra.length ? ['', ...extra] : [])].join('\n');
}

export function goalsText(goals: Goal[]): string {
  return goals
    .map((goal) => `${goal.verdict.padEnd(4)}  ${goal.id} ${goal.text}: ${goal.measured}`)
    .join('\n');
}

export interface Report {
  mode: 'full' | 'quick';
  date: string;
  machine: Machine;
  settings: string;
  rows: StepRow[];
  goals: Goal[];
  ledger: string;
  profile?: ProfileSummary;
}

export function markdownReport(report: Report): string {
  const { machine } = report;
  const lines = [
    `### ${report.mode === 'full' ? 'Full run' : 'Quick run (`--quick`)'}: ${report.date}`,
    '',
    `Machine: ${machine.cpus} CPUs (${machine.cpuModel}), ${machine.memoryGb} GiB; Node ${machine.node}, ` +
      `PostgreSQL ${machine.postgres}, ${machine.pgbench}, autocannon ${machine.autocannon}; commit ${machine.commit}. ` +
      `Load average (1/5/15 min) before: ${machine.loadBefore}, after: ${machine.loadAfter ?? '?'}.`,
    '',
    `Settings: ${report.settings}`,
    '',
    markdownTable(report.rows),
    '',
    markdown(
      ['goal', 'target', 'measured', 'verdict'],
      report.goals.map((goal) => [goal.id, goal.text, goal.measured, goal.verdict]),
      () => false,
    ),
    '',
    `Ledger after the run: ${report.ledger}`,
  ];
  if (report.profile) {
    const profile = report.profile;
    const list = (items: { name: string; percent: number }[]) =>
      items.map((item) => `  - ${item.percent.toFixed(1)}% ${item.name}`);
    lines.push(
      '',
      `CPU profile of the server under step 3a (\`--cpu-prof\`): ${profile.busyMs.toFixed(0)} ms busy, ` +
        `${profile.idlePercent.toFixed(0)}% idle. Shares of busy time:`,
      '',
      '- self time by origin:',
      ...list(profile.byOrigin),
      '- inclusive time by area:',
      ...list(profile.byArea),
      '- self time, top functions:',
      ...list(profile.byFunction),
    );
  }
  return lines.join('\n');
}

const TEMPLATE = `# Benchmarks

\`pnpm bench\` (full) and \`pnpm bench --quick\` write their latest results between the markers below; the rest
of this file is written by hand.

## Latest full run

<!-- bench:full:begin -->
<!-- bench:full:end -->

## Latest quick run

<!-- bench:quick:begin -->
<!-- bench:quick:end -->
`;

/** Replaces the block of this mode in docs/benchmarks.md, keeping everything written by hand. */
export function writeDocs(file: string, mode: 'full' | 'quick', block: string) {
  let text = existsSync(file) ? readFileSync(file, 'utf8') : TEMPLATE;
  const begin = `<!-- bench:${mode}:begin -->`;
  const end = `<!-- bench:${mode}:end -->`;
  if (!text.includes(begin) || !text.includes(end)) text += `\n${begin}\n${end}\n`;
  const start = text.indexOf(begin) + begin.length;
  const stop = text.indexOf(end);
  text = `${text.slice(0, start)}\n${block}\n${text.slice(stop)}`;
  writeFileSync(file, text);
}
