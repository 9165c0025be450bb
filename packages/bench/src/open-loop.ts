import { Agent, request } from 'node:http';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { BenchRequest } from './requests.ts';
import { type LatencySummary, summarize } from './stats.ts';

/**
 * Open-loop load at a constant arrival rate, for latency (step 6). Request i is due at start + i/rate, from a
 * fixed schedule: it is sent when due whether or not earlier ones have been answered (a new keep-alive socket
 * is opened when every open one is busy), so a slow answer never holds back the next send. Each latency runs
 * from the request's *intended* send time, not from when it actually went out: if the generator itself falls
 * behind (a busy machine), that delay is counted against the answer, as a user arriving on schedule would see
 * it — the correction for coordinated omission that a closed-loop or self-pacing tool leaves out.
 */
export interface OpenLoopJob {
  /** Base URL of the server, e.g. http://127.0.0.1:3060. */
  url: string;
  path: string;
  next(): BenchRequest;
  /** Arrivals per second. */
  rate: number;
  /** Scheduled like the rest, answers not counted. */
  warmupSeconds: number;
  seconds: number;
  timeoutMs?: number;
  /** Sockets at most; past it a request waits for a socket (its wait still counts, from its intended time). */
  maxSockets?: number;
  /** Called as the first measured request (the first after the warm-up) is sent. */
  onMeasuring?: () => void;
}

export interface OpenLoopResult {
  targetRate: number;
  seconds: number;
  /** Requests of the measured window actually sent, per second of the window. */
  sentRate: number;
  statuses: Record<string, number>;
  ok: number;
  non2xx: number;
  /** Socket errors and timeouts (timeouts are counted in both). */
  errors: number;
  timeouts: number;
  /** 2xx answers, from the intended send time to the end of the answer (corrected for coordinated omission). */
  latency: LatencySummary;
  /** 2xx answers, from the actual send time: what an uncorrected tool would report. */
  serviceTime: LatencySummary;
  /** How late the generator sent each measured request (actual − intended send time). */
  sendLag: LatencySummary;
  /** Most requests in flight at once, and sockets opened in all. */
  peakInFlight: number;
  socketsOpened: number;
}

/** When request `index` is due, in performance.now() milliseconds. */
export function intendedTime(start: number, rate: number, index: number): number {
  return start + (index * 1000) / rate;
}

/** How many requests of the schedule are due at `now` (the first `dueCount` indices, 0-based). */
export function dueCount(start: number, rate: number, now: number): number {
  if (now < start) return 0;
  return Math.floor(((now - start) * rate) / 1000) + 1;
}

export async function runOpenLoop(job: OpenLoopJob): Promise<OpenLoopResult> {
  if (!(job.rate > 0)) throw new Error('open loop: rate must be positive');
  const target = new URL(job.url);
  const timeoutMs = job.timeoutMs ?? 30_000;
  const agent = new Agent({
    keepAlive: true,
    maxSockets: job.maxSockets ?? 4096,
    maxFreeSockets: job.maxSockets ?? 4096,
    scheduling: 'lifo',
  });
  const warmupCount = Math.ceil(job.rate * job.warmupSeconds);
  const total = warmupCount + Math.ceil(job.rate * job.seconds);

  const statuses: Record<string, number> = {};
  const latencies: number[] = [];
  const serviceTimes: number[] = [];
  const sendLags: number[] = [];
  let errors = 0;
  let timeouts = 0;
  let inFlight = 0;
  let peakInFlight = 0;
  const sockets = new WeakSet<Socket>();
  let socketsOpened = 0;
  const pending = new Set<Promise<void>>();

  const send = (index: number, intended: number) => {
    const measured = index >= warmupCount;
    if (index === warmupCount) job.onMeasuring?.();
    const { headers, body } = job.next();
    const sentAt = performance.now();
    if (measured) sendLags.push(sentAt - intended);
    inFlight++;
    peakInFlight = Math.max(peakInFlight, inFlight);
    const answered = new Promise<void>((resolve) => {
      let settled = false;
      const settle = (status: number | undefined, timedOut = false) => {
        if (settled) return;
        settled = true;
        inFlight--;
        if (measured) {
          if (status === undefined) {
            errors++;
            if (timedOut) timeouts++;
          } else {
            statuses[status] = (statuses[status] ?? 0) + 1;
            if (status >= 200 && status < 300) {
              const end = performance.now();
              latencies.push(end - intended);
              serviceTimes.push(end - sentAt);
            }
          }
        }
        resolve();
      };
      const req = request(
        {
          agent,
          host: target.hostname,
          port: target.port,
          path: job.path,
          method: 'POST',
          headers: { ...headers, 'content-length': Buffer.byteLength(body) },
        },
        (res) => {
          res.on('end', () => settle(res.statusCode));
          res.on('error', () => settle(undefined));
          res.resume();
        },
      );
      req.on('socket', (socket) => {
        if (sockets.has(socket)) return;
        sockets.add(socket);
        socketsOpened++;
      });
      req.setTimeout(timeoutMs, () => {
        settle(undefined, true);
        req.destroy();
      });
      req.on('error', () => settle(undefined));
      req.end(body);
    });
    pending.add(answered);
    void answered.then(() => pending.delete(answered));
  };

  const start = performance.now() + 10;
  let sent = 0;
  await new Promise<void>((resolve) => {
    const tick = () => {
      const due = Math.min(total, dueCount(start, job.rate, performance.now()));
      for (; sent < due; sent++) send(sent, intendedTime(start, job.rate, sent));
      if (sent >= total) return resolve();
      // Timers fire at 1 ms granularity at best; whatever is due by then goes out together, on its own times.
      setTimeout(tick, Math.max(0, intendedTime(start, job.rate, sent) - performance.now()));
    };
    tick();
  });
  const lastMeasuredSend = performance.now();
  await Promise.all(pending);
  agent.destroy();

  const ok = Object.entries(statuses)
    .filter(([code]) => code.startsWith('2'))
    .reduce((sum, [, count]) => sum + count, 0);
  const windowStart = intendedTime(start, job.rate, warmupCount);
  // The window is the schedule's; when the generator fell behind, its sends took longer than that.
  const windowSeconds = Math.max(job.seconds, (lastMeasuredSend - windowStart) / 1000);
  return {
    targetRate: job.rate,
    seconds: job.seconds,
    sentRate: (total - warmupCount) / windowSeconds,
    statuses,
    ok,
    non2xx: Object.entries(statuses)
      .filter(([code]) => !code.startsWith('2'))
      .reduce((sum, [, count]) => sum + count, 0),
    errors,
    timeouts,
    latency: summarize(latencies),
    serviceTime: summarize(serviceTimes),
    sendLag: summarize(sendLags),
    peakInFlight,
    socketsOpened,
  };
}
