// Bundles the declarations that `tsc -p tsconfig.build.json` emits (into node_modules/.cache, out of git's
// and Biome's way) into dist/index.d.ts and dist/index.d.cts, inlining the server's router types so that a
// consumer needs only this package, @trpc/client (with its peer @trpc/server) and superjson.
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { dts } from 'rollup-plugin-dts';

const types = resolve('node_modules/.cache/declarations');
const WORKSPACE = {
  '@mana-credits/server/router': `${types}/server/src/trpc/routers/_app.d.ts`,
  '@mana-credits/db': `${types}/db/src/index.d.ts`,
};
/** The server's request context (database, logger, config) means nothing to a client; the router type
 * carries it only as `ctx`, which clients never read. */
const SERVER_CONTEXT = `${types}/server/src/trpc/context.d.ts`;
const OPAQUE_CONTEXT = '\0opaque-server-context.d.ts';
const ALLOWED_IMPORTS = new Set(['@trpc/client', '@trpc/server', 'superjson']);

const workspaceTypes = {
  name: 'workspace-types',
  resolveId(source, importer) {
    if (source in WORKSPACE) return WORKSPACE[source];
    if (!importer || !source.startsWith('.')) return null;
    const target = resolve(dirname(importer), source).replace(/\.ts$/, '.d.ts');
    if (target === SERVER_CONTEXT) return OPAQUE_CONTEXT;
    return existsSync(target) ? target : null;
  },
  load(id) {
    return id === OPAQUE_CONTEXT ? 'export interface Context {}\n' : null;
  },
  generateBundle(_options, bundle) {
    for (const chunk of Object.values(bundle)) {
      const foreign = (chunk.imports ?? []).filter(
        (name) => ![...ALLOWED_IMPORTS].some((allowed) => name === allowed || name.startsWith(`${allowed}/`)),
      );
      if (foreign.length > 0) this.error(`${chunk.fileName} would import ${foreign.join(', ')}`);
    }
  },
};

export default {
  input: `${types}/client/src/index.d.ts`,
  output: [
    { file: 'dist/index.d.ts', format: 'es' },
    { file: 'dist/index.d.cts', format: 'es' },
  ],
  // Packages stay imports (those the bundle keeps are checked above); only the workspace is inlined.
  external: (id) => !id.startsWith('.') && !id.startsWith('/') && !id.startsWith('\0') && !(id in WORKSPACE),
  plugins: [workspaceTypes, dts()],
};
