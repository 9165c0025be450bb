import type { Logger } from './deps.ts';

export interface PeriodicTask {
  /** Stops scheduling and waits for a run in progress, so nothing touches the database after it resolves. */
  stop(): Promise<void>;
}

/**
 * Runs `run` every `intervalMs`, never two runs at once (the next one is scheduled when the last one ends).
 * A failed run is logged and the schedule goes on. The timer does not keep the process alive.
 */
export function startPeriodicTask(options: {
  name: string;
  intervalMs: number;
  run: () => Promise<unknown>;
  log?: Logger | undefined;
}): PeriodicTask {
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let stopped = false;

  const tick = () => {
    running = options
      .run()
      .then(
        () => undefined,
        (error: unknown) => options.log?.warn({ err: error, task: options.name }, 'periodic task failed'),
      )
      .finally(() => {
        running = undefined;
        schedule();
      });
  };
  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(tick, options.intervalMs);
    timer.unref();
  };

  schedule();
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}
