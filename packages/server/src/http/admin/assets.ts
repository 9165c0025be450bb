import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { FastifyInstance } from 'fastify';

/**
 * The console's static files, all served by this server (no CDN): its stylesheet and script (files beside
 * this module in admin-static/; the production bundle carries them in dist/admin-static/, copied by tsup's
 * onSuccess) and the chart library uPlot, read from node_modules where the server's dependency installed it.
 */
const require = createRequire(import.meta.url);

const own = (file: string) => readFileSync(new URL(`./admin-static/${file}`, import.meta.url), 'utf8');
const fromPackage = (specifier: string) => readFileSync(require.resolve(specifier), 'utf8');

interface Asset {
  path: string;
  type: string;
  load: () => string;
}

export const ASSETS: readonly Asset[] = [
  { path: '/assets/console.css', type: 'text/css; charset=utf-8', load: () => own('console.css') },
  { path: '/assets/console.js', type: 'text/javascript; charset=utf-8', load: () => own('console.js') },
  {
    path: '/assets/uplot.js',
    type: 'text/javascript; charset=utf-8',
    load: () => fromPackage('uplot/dist/uPlot.iife.min.js'),
  },
  {
    path: '/assets/uplot.css',
    type: 'text/css; charset=utf-8',
    load: () => fromPackage('uplot/dist/uPlot.min.css'),
  },
];

/** Registers every asset (read once, at start: a missing file fails the start, not a page). */
export function registerAssets(admin: FastifyInstance): void {
  for (const asset of ASSETS) {
    const body = asset.load();
    admin.get(asset.path, async (_request, reply) =>
      reply
        .headers({
          'content-type': asset.type,
          'x-content-type-options': 'nosniff',
          'cache-control': 'private, max-age=300',
        })
        .send(body),
    );
  }
}
