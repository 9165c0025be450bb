import { pruneRateLimits } from '@mana-credits/db';
import type { FastifyInstance } from 'fastify';
import { expireDueGifts } from '../domain/gifts/escrow.ts';

/** Rate-limit counters older than this are dropped by the sweep (the longest window is a minute). */
const RATE_LIMIT_RETENTION_SECONDS = 3600;

/**
 * The periodic expiry sweep: starts when the app is ready, stops (and waits for a pass in progress) as it
 * starts closing. Every instance may run it; expireDueGifts is safe to run concurrently. Interval 0 turns it off.
 */
export function registerGiftExpirySweep(app: FastifyInstance): void {
  const intervalMs = app.deps.config.giftExpirySweepSeconds * 1000;
  if (intervalMs === 0) return;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let stopped = false;

  const pass = async () => {
    try {
      const expired = await expireDueGifts(app.deps.db);
      if (expired > 0) app.log.info({ expired }, 'expired gifts refunded');
      await pruneRateLimits(app.deps.db, RATE_LIMIT_RETENTION_SECONDS);
    } catch (error) {
      app.log.error({ err: error }, 'gift expiry sweep failed');
    }
  };
  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      running = pass().finally(() => {
        running = undefined;
        schedule();
      });
    }, intervalMs);
    timer.unref();
  };

  app.addHook('onReady', async () => {
    schedule();
  });
  // preClose runs before every onClose hook (those run last-added first), so the database is still open.
  app.addHook('preClose', async () => {
    stopped = true;
    clearTimeout(timer);
    await running;
  });
}
