export { buildApp } from './app.ts';
export { type Config, ConfigError, configFrom, loadConfig } from './config.ts';
export { type AppDeps, createAppDeps } from './deps.ts';
export type { AppRouter, RouterInputs, RouterOutputs } from './trpc/routers/_app.ts';
