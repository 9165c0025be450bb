import { internalProcedure, mergeRouters, router } from '../init.ts';
import { appRouter } from './_app.ts';

/**
 * The Node ceiling of `pnpm bench`: the same transport, tRPC pipeline and internal auth as
 * `internal.credits.use`, and no work. Mounted only when BENCH_NOOP=true, so a normal server has no such path
 * and `AppRouter` (the clients' type) never shows it.
 */
export const appRouterWithBench = mergeRouters(
  appRouter,
  router({ bench: router({ noop: internalProcedure.mutation(() => ({ ok: true })) }) }),
);
