import { readFileSync } from 'node:fs';
import autocannon from 'autocannon';
import { type OpenLoopResult, runOpenLoop } from './open-loop.ts';
import { type LoadTarget, requestFactory } from './requests.ts';
import { type LatencySummary, summarize } from './stats.ts';

/**
 * The load generator: a process of its own (forked by run.ts), so its CPU is never the orchestrator's or the
 * server's. It stays up for the whole bench and runs one job per message, answering with a LoadResult;
 * starting it once saves a tsx start-up per step. Throughput steps are closed loop (autocannon, a fixed number
 * of connections each sending its next request when the last is answered); a job with a rate is open loop
 * (open-loop.ts: a constant arrival rate, latency from each request's intended send time).
 */
export interface LoadJob {
  url: string;
  target: Omit<LoadTarget, 'tokens'> & { tokensFile?: string };
  /** Closed loop only: autocannon's connections. */
  connections: number;
  warmupSeconds: number;
  seconds: number;
  /** Open loop at this many arrivals per second (connections then unused); unset = closed loop, flat out. */
  rate?: number;
}

export interface LoadResult {
  seconds: number;
  /** Responses by status, e.g. { "200": 51234 }. */
  statuses: Record<string, number>;
  ok: number;
  non2xx: number;
  /** Socket errors and timeouts, counted apart from HTTP answers. */
  errors: number;
  timeouts: number;
  okPerSecond: number;
  debitsPerSecond: number;
  /** Latency of 2xx responses in ms, measured per request (sub-millisecond resolution). */
  latency: LatencySummary;
  /** Open-loop jobs: the schedule's own figures (rate achieved, send lag, sockets). */
  openLoop?: Omit<OpenLoopResult, 'statuses' | 'ok' | 'non2xx' | 'errors' | 'timeouts' | 'latency'>;
}

async function runJob(job: LoadJob): Promise<LoadResult> {
  const tokens = job.target.tokensFile
    ? (JSON.parse(readFileSync(job.target.tokensFile, 'utf8')) as string[])
    : undefined;
  const factory = requestFactory({ ...job.target, tokens });
  // Tells the orchestrator that the warm-up is over (it reads CPU counters from here to the result).
  const onMeasuring = () => process.send?.({ measuring: true });
  if (job.rate) {
    const { statuses, ok, non2xx, errors, timeouts, latency, ...openLoop } = await runOpenLoop({
      url: job.url,
      path: factory.path,
      next: () => factory.next(),
      rate: job.rate,
      warmupSeconds: job.warmupSeconds,
      seconds: job.seconds,
      onMeasuring,
    });
    return {
      seconds: job.seconds,
      statuses,
      ok,
      non2xx,
      errors,
      timeouts,
      okPerSecond: ok / job.seconds,
      debitsPerSecond: (ok * factory.debitsPerRequest) / job.seconds,
      latency,
      openLoop,
    };
  }

  const latencies: number[] = [];
  const options = {
    url: job.url,
    connections: job.connections,
    duration: job.seconds,
    timeout: 30,
    ...(job.warmupSeconds > 0
      ? { warmup: { connections: job.connections, duration: job.warmupSeconds } }
      : {}),
    requests: [
      {
        method: 'POST' as const,
        path: factory.path,
        setupRequest: (request: autocannon.Request) => ({ ...request, ...factory.next() }),
      },
    ],
  };
  // Without a callback autocannon returns its event emitter, made thenable (the typings only say Promise).
  const instance = autocannon(options as autocannon.Options) as unknown as autocannon.Instance &
    PromiseLike<autocannon.Result>;
  // Only the main run (after the warm-up) emits on this instance.
  instance.on('start', onMeasuring);
  instance.on('response', (_client, statusCode: number, _bytes: number, responseTime: number) => {
    if (statusCode >= 200 && statusCode < 300) latencies.push(responseTime);
  });
  const result = await instance;

  const statuses: Record<string, number> = {};
  for (const [code, { count }] of Object.entries(result.statusCodeStats ?? {}))
    statuses[code] = Number(count);
  const ok = Object.entries(statuses)
    .filter(([code]) => code.startsWith('2'))
    .reduce((sum, [, count]) => sum + count, 0);
  const seconds = result.duration;
  const output: LoadResult = {
    seconds,
    statuses,
    ok,
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    okPerSecond: ok / seconds,
    debitsPerSecond: (ok * factory.debitsPerRequest) / seconds,
    latency: summarize(latencies),
  };
  return output;
}

// The orchestrator went away (finished or killed): so does the load.
process.on('disconnect', () => process.exit(0));
process.on('message', (job: LoadJob) => {
  runJob(job).then(
    (result) => process.send?.({ result }),
    (error: unknown) => process.send?.({ error: error instanceof Error ? error.message : String(error) }),
  );
});
