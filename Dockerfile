# syntax=docker/dockerfile:1
# The server image: compiled JavaScript, no TypeScript tooling at run time.
# Stage `build` installs the server's full dependency set and runs `pnpm build` (tsc on the shipped sources,
# so a type error fails the image, then tsup: packages/server/dist/{main,migrate,reconcile,seed}.js with
# source maps; @mana-credits/db is bundled in). Stage `deps` installs only the production dependencies of
# @mana-credits/server — every npm package the bundle imports is declared there, and the build fails if one
# is not. The runtime stage copies both, holds no sources, compiler or tsx, and runs as the unprivileged
# `node` user. Plain `node` is PID 1's only process, so SIGTERM reaches the server itself.
ARG NODE_VERSION=20.19

FROM node:${NODE_VERSION}-bookworm-slim AS base
RUN npm install --global pnpm@10.34.9
WORKDIR /app
COPY package.json pnpm-lock.yaml pnpm-workspace.yaml ./
COPY packages/db/package.json packages/db/
COPY packages/server/package.json packages/server/

FROM base AS build
RUN pnpm install --frozen-lockfile --filter @mana-credits/server...
COPY tsconfig.base.json ./
COPY packages/db/src packages/db/src
COPY packages/server/src packages/server/src
COPY packages/server/tsconfig.json packages/server/tsconfig.build.json packages/server/tsup.config.ts packages/server/
RUN pnpm build

FROM base AS deps
# typescript is a peer dependency of @trpc/server (for its types) that pnpm installs with it; nothing loads
# it at run time, and it is a quarter of the production node_modules (23 of 104 MB).
RUN pnpm install --frozen-lockfile --prod --filter @mana-credits/server \
 && rm -rf node_modules/.pnpm/typescript@*

FROM node:${NODE_VERSION}-bookworm-slim AS runtime
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=3060 \
    DATA_DIR=/app/data
WORKDIR /app
COPY --from=deps /app/node_modules node_modules
COPY --from=deps /app/packages/server/node_modules packages/server/node_modules
COPY --from=deps /app/packages/server/package.json packages/server/
COPY --from=build /app/packages/server/dist packages/server/dist
# Only the embedded database (no DATABASE_URL) writes here.
RUN mkdir -p /app/data && chown node:node /app/data
USER node
WORKDIR /app/packages/server
EXPOSE 3060
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3060) + '/health').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# Migrations separately (MIGRATE_ON_START=false): node --enable-source-maps dist/migrate.js
# (dist/reconcile.js checks the ledger the same way.)
# --max-old-space-size below 2 GB also makes V8 size the old generation at about 1.6x its live data, not 4x:
# peak RSS under load ~165 MB instead of ~300 MB (docs/benchmarks.md, "Memory of the server").
CMD ["node", "--enable-source-maps", "--max-old-space-size=1024", "dist/main.js"]
