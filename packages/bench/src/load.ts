import { readFileSync } from 'node:fs';
import autocannon from 'autocannon';
import { type LoadTarget, requestFactory } from './requests.ts';
import { summarize } from './stats.ts';

/**
 * The load generator: a process of its own (forked by run.ts), so its CPU is never the orchestrator's or the
 * server's. It stays up for the whole bench and runs one autocannon job per message, answering with a
 * LoadResult; starting it once saves a tsx start-up per step.
 */
export interface LoadJob {
  url: string;
  target: Omit<LoadTarget, 'tokens'> & { tokensFile?: string };
  connections: number;
  warmupSeconds: number;
  seconds: number;
  /** Requests per second over all connections; unset = as fast as the server answers. */
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
  latency: { p50: number; p99: number; max: number; mean: number };
}

async function runJob(job: LoadJob): Promise<LoadResult> {
  const tokens = job.target.tokensFile
    ? (JSON.parse(readFileSync(job.target.tokensFile, 'utf8')) as string[])
    : undefined;
  const factory = requestFactory({ ...job.target, tokens });

  const latencies: number[] = [];
  const options = {
    url: job.url,
    connections: job.connections,
    duration: job.seconds,
    timeout: 30,
    ...(job.rate ? { overallRate: job.rate } : {}),
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
