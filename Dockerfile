# syntax=docker/dockerfile:1
# The server image. The server runs its TypeScript through tsx, which is a runtime dependency of
# @mana-credits/server: there is no compile step, so the image holds exactly the sources that the tests ran.
# Stage 1 installs the production dependencies of the server and the packages it uses; stage 2 copies them
# with the sources and runs as the unprivileged `node` user. `pnpm start` runs `tsx src/main.ts`; the image
# runs the same loader as `node --import tsx`, one process fewer, so SIGTERM reaches the server itself.
ARG NODE_VERSION=20.19

FROM node:${NODE_VERSION}-bookworm-slim AS deps
WORKDIR /app
RUN npm install --global pnpm@10.34.9
COPY package.json pnpm-lock.yaml pnpm-workspace.yaml ./
COPY packages/db/package.json packages/db/
COPY packages/server/package.json packages/server/
COPY packages/client/package.json packages/client/
RUN pnpm install --frozen-lockfile --prod --filter @mana-credits/server...

FROM node:${NODE_VERSION}-bookworm-slim AS runtime
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=3060 \
    DATA_DIR=/app/data
WORKDIR /app
COPY --from=deps /app /app
COPY packages/db/src packages/db/src
COPY packages/server/src packages/server/src
# Only the embedded database (no DATABASE_URL) writes here.
RUN mkdir -p /app/data && chown node:node /app/data
USER node
WORKDIR /app/packages/server
EXPOSE 3060
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3060) + '/health').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# Migrations separately (MIGRATE_ON_START=false): node --import tsx ../db/src/bin/migrate.ts
CMD ["node", "--import", "tsx", "src/main.ts"]
