import { setTimeout as sleep } from 'node:timers/promises';
import Fastify from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import type { AppDeps, Logger } from '../src/deps.ts';
import { periodicJobs } from '../src/jobs/index.ts';
import { drain, drainBudgetMs, type Job, registerScheduler, Scheduler } from '../src/jobs/scheduler.ts';
import { createMetrics } from '../src/metrics.ts';

const started: Scheduler[] = [];
afterEach(async () => {
  await Promise.all(started.splice(0).map((scheduler) => scheduler.stop()));
});

function newScheduler(options: ConstructorParameters<typeof Scheduler>[0] = {}) {
  const metrics = createMetrics({ poolStats: () => ({ total: 0, idle: 0, waiting: 0 }) });
  const scheduler = new Scheduler({ metrics, ...options });
  started.push(scheduler);
  const runs = async (job: string, outcome: 'ok' | 'error') =>
    (await metrics.jobRuns.get()).values.find((v) => v.labels.job === job && v.labels.outcome === outcome)
      ?.value ?? 0;
  return { scheduler, metrics, runs };
}

/** A job that records how many of its runs are in progress at once. */
function trackedJob(name: string, intervalMs: number, runMs: number) {
  const state = { runs: 0, active: 0, maxActive: 0 };
  const job: Job = {
    name,
    intervalMs,
    async run() {
      state.active++;
      state.maxActive = Math.max(state.maxActive, state.active);
      await sleep(runMs);
      state.active--;
      state.runs++;
    },
  };
  return { job, state };
}

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

describe('Scheduler', () => {
  it('runs each job again and again on its interval, counting the runs', async () => {
    const { scheduler, runs, metrics } = newScheduler();
    const { job, state } = trackedJob('often', 10, 0);
    scheduler.register(job);
    expect(state.runs).toBe(0);
    scheduler.start();
    await until('five runs', () => state.runs >= 5);
    await scheduler.stop();
    expect(await runs('often', 'ok')).toBe(state.runs);
    const duration = (await metrics.jobDuration.get()).values.find(
      (v) => v.metricName?.endsWith('_count') && v.labels.job === 'often',
    );
    expect(duration?.value).toBe(state.runs);
  });

  it('never overlaps two runs of one job, however much longer a run takes than the interval', async () => {
    const { scheduler } = newScheduler();
    const slow = trackedJob('slow', 1, 30);
    const other = trackedJob('other', 1, 30);
    scheduler.register(slow.job);
    scheduler.register(other.job);
    scheduler.start();
    await until('several runs', () => slow.state.runs >= 4 && other.state.runs >= 4);
    expect(slow.state.maxActive).toBe(1);
    expect(other.state.maxActive).toBe(1);
  });

  it('stop() waits for the run in progress (its signal aborted) and no run starts afterwards', async () => {
    const { scheduler } = newScheduler();
    let release: () => void = () => {};
    let finished = false;
    let runs = 0;
    let aborted: boolean | undefined;
    scheduler.register({
      name: 'long',
      intervalMs: 5,
      async run(signal) {
        runs++;
        await new Promise<void>((resolve) => {
          release = resolve;
        });
        aborted = signal.aborted;
        finished = true;
      },
    });
    scheduler.start();
    await until('the run to start', () => runs === 1);
    let stopped = false;
    const stopping = scheduler.stop().then(() => {
      stopped = true;
    });
    await sleep(30);
    expect(stopped).toBe(false);
    release();
    await stopping;
    expect(finished).toBe(true);
    expect(aborted).toBe(true);
    await sleep(30);
    expect(runs).toBe(1);
  });

  it('a failed run is logged and counted, and the schedule goes on', async () => {
    const errors: unknown[] = [];
    const log = { error: (entry: unknown) => errors.push(entry) } as unknown as Logger;
    const { scheduler, runs } = newScheduler({ log });
    let calls = 0;
    scheduler.register({
      name: 'flaky',
      intervalMs: 5,
      async run() {
        calls++;
        if (calls % 2 === 1) throw new Error(`failure ${calls}`);
      },
    });
    scheduler.start();
    await until('four runs', () => calls >= 4);
    await scheduler.stop();
    expect(await runs('flaky', 'error')).toBe(Math.ceil(calls / 2));
    expect(await runs('flaky', 'ok')).toBe(Math.floor(calls / 2));
    expect(errors.length).toBe(Math.ceil(calls / 2));
    expect(errors[0]).toMatchObject({ job: 'flaky' });
  });

  it('an interval of 0 turns a job off; names are unique', async () => {
    const { scheduler } = newScheduler();
    const off = trackedJob('off', 0, 0);
    scheduler.register(off.job);
    expect(() => scheduler.register(trackedJob('off', 10, 0).job)).toThrow(/twice/);
    expect(() => scheduler.register(trackedJob('bad', -1, 0).job)).toThrow(/interval/);
    scheduler.start();
    await sleep(50);
    expect(off.state.runs).toBe(0);
  });

  it('waits are jittered within ±jitter of the interval', async () => {
    const waits: number[] = [];
    const realSetTimeout = globalThis.setTimeout;
    const draws = [0, 0.999999, 0.5];
    const { scheduler } = newScheduler({ jitter: 0.2, random: () => draws.shift() ?? 0.5 });
    globalThis.setTimeout = ((fn: () => void, ms: number) => {
      waits.push(ms);
      return realSetTimeout(fn, 1_000_000);
    }) as typeof setTimeout;
    try {
      scheduler.register(trackedJob('a', 1000, 0).job);
      scheduler.register(trackedJob('b', 1000, 0).job);
      scheduler.register(trackedJob('c', 1000, 0).job);
      scheduler.start();
    } finally {
      globalThis.setTimeout = realSetTimeout;
    }
    expect(waits[0]).toBeCloseTo(800);
    expect(waits[1]).toBeCloseTo(1200, 0);
    expect(waits[2]).toBeCloseTo(1000);
  });

  it('skips due runs while paused (e.g. migrations running)', async () => {
    let paused = true;
    const { scheduler } = newScheduler({ paused: () => paused });
    const { job, state } = trackedJob('patient', 5, 0);
    scheduler.register(job);
    scheduler.start();
    await sleep(50);
    expect(state.runs).toBe(0);
    paused = false;
    await until('a run after the pause', () => state.runs >= 1);
  });
});

describe('drain (a sweep working off a backlog within one run)', () => {
  it('runs passes back to back while they find work and returns their sum', async () => {
    const backlog = [500, 500, 500, 120];
    const passes: number[] = [];
    const total = await drain(new AbortController().signal, 60_000, async () => {
      const done = backlog.shift() ?? 0;
      passes.push(done);
      return done;
    });
    expect(total).toBe(1620);
    // The last pass found nothing: that is what ends it.
    expect(passes).toEqual([500, 500, 500, 120, 0]);
  });

  it('stops after its budget, or when the scheduler stops, with the work so far', async () => {
    let passes = 0;
    const endless = async () => {
      passes++;
      await sleep(20);
      return 500;
    };
    const started = Date.now();
    expect(await drain(new AbortController().signal, 100, endless)).toBe(500 * passes);
    expect(Date.now() - started).toBeLessThan(2000);
    expect(passes).toBeGreaterThanOrEqual(2);

    const stopping = new AbortController();
    passes = 0;
    const stopped = drain(stopping.signal, 60_000, endless);
    await sleep(50);
    stopping.abort();
    expect(await stopped).toBe(500 * passes);
    expect(passes).toBeLessThan(10);
  });

  it('the budget is half the interval, at most 30 s', () => {
    expect(drainBudgetMs(30_000)).toBe(15_000);
    expect(drainBudgetMs(600_000)).toBe(30_000);
  });
});

describe('registerScheduler', () => {
  it('starts with the app, and closing the app waits for the run in progress', async () => {
    const metrics = createMetrics({ poolStats: () => ({ total: 0, idle: 0, waiting: 0 }) });
    const app = Fastify({ logger: false });
    app.decorate('deps', { metrics } as unknown as AppDeps);
    app.decorate('readiness', { accepting: true, migrating: false });
    const scheduler = registerScheduler(app);
    const events: string[] = [];
    scheduler.register({
      name: 'closing',
      intervalMs: 5,
      async run() {
        events.push('run started');
        await sleep(50);
        events.push('run ended');
      },
    });
    app.addHook('onClose', async () => {
      events.push('onClose');
    });
    await sleep(30);
    expect(events).toEqual([]);
    await app.ready();
    await until('a run', () => events.includes('run started'));
    await app.close();
    expect(events.indexOf('onClose')).toBeGreaterThan(events.lastIndexOf('run ended'));
    expect(events.at(-2)).toBe('run ended');
  });

  it('the app registers the gift expiry sweep, the reservation sweep, the lot expiry sweep, the rate-limit prune, webhook delivery and auto top-up', () => {
    const config = {
      giftExpirySweepSeconds: 0,
      reservationSweepSeconds: 15,
      lotExpirySweepSeconds: 30,
      autoTopUpIntervalMs: 2000,
      events: { deliveryIntervalMs: 1000 },
    } as AppDeps['config'];
    const jobs = periodicJobs({ config, db: {} as AppDeps['db'] });
    expect(jobs.map((job) => [job.name, job.intervalMs])).toEqual([
      ['gift-expiry', 0],
      ['reservation-sweep', 15_000],
      ['lot-expiry', 30_000],
      ['rate-limit-prune', 300_000],
      ['webhook-delivery', 1000],
      // Off without Stripe: there is nothing to pay with.
      ['auto-top-up', 0],
    ]);
    const withStripe = periodicJobs({ config, db: {} as AppDeps['db'], stripe: {} as AppDeps['stripe'] });
    expect(withStripe.find((job) => job.name === 'auto-top-up')?.intervalMs).toBe(2000);
  });
});
