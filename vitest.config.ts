import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['packages/*/test/**/*.test.ts'],
    globalSetup: ['packages/server/test/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 2,
    // Test files run one after another in each worker process, sharing its module cache: the server's module
    // graph (Fastify, tRPC, Kysely, PGlite, Stripe, zod…) is imported once per worker instead of once per file,
    // which was about a third of the suite's CPU time. Every file still starts its own server on its own
    // database (helpers/server.ts) and closes it; the server keeps no per-app state at module level (only the
    // process metrics registry, which is process-wide by design).
    isolate: false,
  },
});
