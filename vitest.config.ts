import { defineConfig } from 'vitest/config';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/**
 * Small files that take long: chains of mostly serial work (builds, packing, installing, spawned servers).
 * They start first, so that they run beside the many short files instead of finishing the run on their own.
 * Without timings from an earlier run vitest starts the largest files first, and these are small.
 */
const LONG_CHAINS = [
  'packages/client/test/packed-client.test.ts',
  'packages/server/test/shutdown.test.ts',
  'packages/server/test/build.test.ts',
  'packages/server/test/concurrency.test.ts',
  'packages/server/test/embedded.test.ts',
];

class LongChainsFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const rank = (file: TestSpecification) => {
      const index = LONG_CHAINS.findIndex((name) => file.moduleId.endsWith(name));
      return index < 0 ? LONG_CHAINS.length : index;
    };
    const sorted = await super.sort(files);
    return sorted
      .map((file, index) => ({ file, index }))
      .sort((a, b) => rank(a.file) - rank(b.file) || a.index - b.index)
      .map(({ file }) => file);
  }
}

export default defineConfig({
  test: {
    include: ['packages/*/test/**/*.test.ts'],
    globalSetup: ['packages/server/test/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // One worker more than the machine's 2 cores: a good part of the suite waits (spawned servers starting,
    // leases, sweeps, retry schedules), and a third worker fills those waits. Warm runs on PGlite, quiet machine
    // (2026-12-04, load 1–5): 2 workers 67.4 / 68.3 / 68.9 s, 3 workers 60.2 / 60.7 s, 4 workers 61.8 s, at
    // 7–15 % more CPU. (In 2026-11, when the suite was mostly CPU, 2 won on a quiet machine: 125 against 131 s.)
    maxWorkers: 3,
    // Test files run one after another in each worker process, sharing its module cache: the server's module
    // graph (Fastify, tRPC, Kysely, PGlite, Stripe, zod…) is imported once per worker instead of once per file,
    // which was about a third of the suite's CPU time. Every file still starts its own server on its own
    // database (helpers/server.ts) and closes it; the server keeps no per-app state at module level (only the
    // process metrics registry, which is process-wide by design).
    isolate: false,
    // Modules as transformed for the workers are kept on disk between runs (keyed on their content and this
    // config; `vitest --clearCache` empties it), so a run transforms only what changed: ~2-3 s of CPU.
    experimental: { fsModuleCache: true },
    sequence: { sequencer: LongChainsFirst },
  },
});
