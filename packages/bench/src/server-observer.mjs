// Preloaded into the bench's server (`node --import …/server-observer.mjs`; packages/bench/src/server.ts) when
// BENCH_OBSERVER_FILE is set: appends to that file, every 250 ms, one JSON line with the cumulative GC pause
// count and time (every entry; prom-client's own histogram keeps only the first of each observer callback)
// and the longest GC pause and event-loop delay since the last line, with the wall-clock time. The bench
// reads the lines of each step's window (server.ts, runtimeBetween). Plain JavaScript: the bundle runs on
// plain node.
import { appendFileSync } from 'node:fs';
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';

const file = process.env.BENCH_OBSERVER_FILE;
if (file) {
  let gcCount = 0;
  let gcMs = 0;
  let longestGcMs = 0;
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      gcCount++;
      gcMs += entry.duration;
      longestGcMs = Math.max(longestGcMs, entry.duration);
    }
  }).observe({ entryTypes: ['gc'] });
  const resolutionMs = 10;
  const loopDelay = monitorEventLoopDelay({ resolution: resolutionMs });
  loopDelay.enable();
  setInterval(() => {
    // The histogram holds the intervals between its timer's runs: the delay is what exceeds the resolution.
    const loopDelayMaxMs = loopDelay.count > 0 ? Math.max(0, loopDelay.max / 1e6 - resolutionMs) : 0;
    loopDelay.reset();
    appendFileSync(
      file,
      `${JSON.stringify({ at: Date.now(), gcCount, gcMs, longestGcMs, loopDelayMaxMs })}\n`,
    );
    longestGcMs = 0;
  }, 250).unref();
}
