import type { FastifyInstance } from 'fastify';
import type { Logger } from '../deps.ts';
import { reportingEffectsTo } from '../domain/effects.ts';
import type { Metrics } from '../metrics.ts';

/**
 * One periodic job. Jobs must be safe to run on every instance at once (they claim their rows in Postgres,
 * e.g. with SKIP LOCKED or a conditional update), since every instance runs every job: the scheduler only
 * keeps one process from overlapping itself.
 */
export interface Job {
  /** Fixed by the code: the `job` label of the job metrics and the name in log lines. */
  name: string;
  /** Between the end of one run and the start of the next (jittered), in milliseconds; 0 turns the job off. */
  intervalMs: number;
  /** One run. `signal` aborts when the scheduler stops, so a long run may end early (its work so far kept). */
  run(signal: AbortSignal): Promise<unknown>;
}

/**
 * Runs a sweep's `pass` (which handles a bounded batch and returns how much it did) again while it finds work,
 * within one run: a backlog — a promotion's lots or a day's gifts all lapsing at once — is worked off in
 * passes back to back, not one batch per interval. Ends when a pass finds nothing, after `budgetMs`, or when
 * the scheduler stops; returns the sum of the passes.
 */
export async function drain(
  signal: AbortSignal,
  budgetMs: number,
  pass: () => Promise<number>,
): Promise<number> {
  const until = Date.now() + budgetMs;
  let total = 0;
  for (;;) {
    const done = await pass();
    total += done;
    if (done === 0 || signal.aborted || Date.now() >= until) return total;
  }
}

/** The budget of one draining run: half the job's interval, at most 30 s (it never holds its next run back long). */
export const drainBudgetMs = (intervalMs: number) => Math.min(intervalMs / 2, 30_000);

export interface SchedulerOptions {
  log?: Logger | undefined;
  metrics?: Pick<Metrics, 'jobRuns' | 'jobDuration'> | undefined;
  /**
   * Each wait is intervalMs × (1 ± jitter), so instances started together (a rollout) drift apart instead of
   * sweeping in lockstep. Default 0.1.
   */
  jitter?: number;
  /** [0, 1); Math.random unless a test fixes it. */
  random?: () => number;
  /** Every run goes through this (the app: to report the run's side effects into its metrics). */
  around?: <T>(run: () => Promise<T>) => Promise<T>;
  /** While it says true, a due run is skipped and the next one scheduled (e.g. while migrations run). */
  paused?: () => boolean;
}

interface Entry {
  job: Job;
  timer?: NodeJS.Timeout | undefined;
  running?: Promise<void> | undefined;
}

export const DEFAULT_JITTER = 0.1;

/**
 * Runs every registered job on its own interval, in this process, from start() until stop(). A run of a job
 * never overlaps another run of the same job: the next one is scheduled when the last one has ended. A
 * failed run is logged and counted (job_runs_total{outcome="error"}) and the schedule goes on. Timers do not
 * keep the process alive. Nothing here is durable: a run cut off by a crash is simply run again later, which
 * is why every job must be safe to repeat.
 */
export class Scheduler {
  private readonly entries = new Map<string, Entry>();
  private state: 'idle' | 'started' | 'stopped' = 'idle';
  private readonly stopping = new AbortController();
  private readonly jitter: number;
  private readonly random: () => number;
  private readonly around: <T>(run: () => Promise<T>) => Promise<T>;

  constructor(private readonly options: SchedulerOptions = {}) {
    this.jitter = Math.min(Math.max(options.jitter ?? DEFAULT_JITTER, 0), 1);
    this.random = options.random ?? Math.random;
    this.around = options.around ?? ((run) => run());
  }

  /** Adds a job; registered after start(), it is scheduled at once. Names are unique. */
  register(job: Job): void {
    if (this.state === 'stopped') throw new Error(`job ${job.name}: the scheduler has stopped`);
    if (this.entries.has(job.name)) throw new Error(`job ${job.name} is registered twice`);
    if (!Number.isFinite(job.intervalMs) || job.intervalMs < 0) {
      throw new Error(`job ${job.name}: interval must be 0 (off) or a positive number of milliseconds`);
    }
    const entry: Entry = { job };
    this.entries.set(job.name, entry);
    if (this.state === 'started') this.schedule(entry);
  }

  /** The registered jobs and their intervals (0 = off). */
  jobs(): { name: string; intervalMs: number }[] {
    return [...this.entries.values()].map(({ job }) => ({ name: job.name, intervalMs: job.intervalMs }));
  }

  start(): void {
    if (this.state !== 'idle') return;
    this.state = 'started';
    for (const entry of this.entries.values()) this.schedule(entry);
  }

  /**
   * Stops scheduling, aborts the signal of runs in progress and waits for them to end, so nothing the jobs do
   * touches the database after this resolves.
   */
  async stop(): Promise<void> {
    this.state = 'stopped';
    this.stopping.abort();
    for (const entry of this.entries.values()) clearTimeout(entry.timer);
    await Promise.all([...this.entries.values()].map((entry) => entry.running));
  }

  private schedule(entry: Entry): void {
    if (this.state !== 'started' || entry.job.intervalMs === 0) return;
    const wait = entry.job.intervalMs * (1 - this.jitter + 2 * this.jitter * this.random());
    entry.timer = setTimeout(() => this.due(entry), wait);
    entry.timer.unref();
  }

  private due(entry: Entry): void {
    entry.timer = undefined;
    if (this.state !== 'started') return;
    if (this.options.paused?.()) {
      this.schedule(entry);
      return;
    }
    entry.running = this.runOnce(entry.job).finally(() => {
      entry.running = undefined;
      this.schedule(entry);
    });
  }

  private async runOnce(job: Job): Promise<void> {
    const started = performance.now();
    let outcome: 'ok' | 'error' = 'ok';
    try {
      await this.around(() => job.run(this.stopping.signal));
    } catch (error) {
      outcome = 'error';
      this.options.log?.error({ err: error, job: job.name }, 'periodic job failed');
    }
    this.options.metrics?.jobRuns.inc({ job: job.name, outcome });
    this.options.metrics?.jobDuration.observe({ job: job.name }, (performance.now() - started) / 1000);
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The app's periodic jobs: started when the app is ready, stopped (runs awaited) as it starts closing. */
    scheduler: Scheduler;
  }
}

/**
 * The app's one scheduler, as a decorator: it starts on onReady and stops in preClose, which runs before
 * every onClose hook (the database is still open while a run in progress finishes). Runs report their side
 * effects into the app's metrics and are skipped while migrations run.
 */
export function registerScheduler(app: FastifyInstance): Scheduler {
  const { metrics } = app.deps;
  const scheduler = new Scheduler({
    log: app.log,
    metrics,
    around: (run) => reportingEffectsTo(metrics.effects, run),
    paused: () => app.readiness.migrating,
  });
  app.decorate('scheduler', scheduler);
  app.addHook('onReady', async () => {
    scheduler.start();
    app.log.debug({ jobs: scheduler.jobs() }, 'periodic jobs scheduled');
  });
  app.addHook('preClose', async () => {
    await scheduler.stop();
  });
  return scheduler;
}
