import { copyFileSync, cpSync, readdirSync, readFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { defineConfig, type Options } from 'tsup';

type Plugin = NonNullable<Options['esbuildPlugins']>[number];

/**
 * The production build of the server: one ESM file per entry point in dist/, with source maps (run with
 * `node --enable-source-maps`). Workspace packages (@mana-credits/db) are bundled in; every npm package stays
 * external and is loaded from node_modules at run time — PGlite must, it reads its wasm and data files from
 * next to its own module. Type checking is not done here: `pnpm build` runs tsc first.
 */
export const entry = {
  main: 'src/main.ts',
  migrate: '../db/src/bin/migrate.ts',
  reconcile: 'src/bin/reconcile.ts',
  seed: '../db/src/bin/seed.ts',
};

const manifest = JSON.parse(readFileSync(new URL('./package.json', import.meta.url), 'utf8')) as {
  dependencies?: Record<string, string>;
};
const declared = new Set(Object.keys(manifest.dependencies ?? {}));
const builtins = new Set(builtinModules);

/** `@scope/name/sub/path` → `@scope/name`, `name/sub` → `name`. */
const packageName = (specifier: string) =>
  specifier
    .split('/')
    .slice(0, specifier.startsWith('@') ? 2 : 1)
    .join('/');

/**
 * Keeps npm packages external and fails the build when the bundle imports one that is not among the server's
 * `dependencies`: the image installs only those (`pnpm install --prod --filter @mana-credits/server`), so an
 * undeclared one would be missing there and nowhere else.
 */
const declaredExternals: Plugin = {
  name: 'declared-externals',
  setup(build) {
    build.onResolve({ filter: /^[^./]/ }, (args) => {
      if (args.path.startsWith('node:') || builtins.has(args.path)) return { external: true };
      const name = packageName(args.path);
      if (name.startsWith('@mana-credits/')) return undefined; // workspace sources: bundled
      if (!declared.has(name)) {
        return {
          errors: [
            {
              text: `${name} is imported by ${args.importer} but is not in the dependencies of packages/server/package.json`,
            },
          ],
        };
      }
      return { external: true };
    });
  },
};

export default defineConfig({
  entry,
  outDir: 'dist',
  format: ['esm'],
  platform: 'node',
  target: 'node20',
  sourcemap: true,
  splitting: false,
  clean: true,
  dts: false,
  removeNodeProtocol: false,
  noExternal: [/^@mana-credits\//],
  esbuildPlugins: [declaredExternals],
  async onSuccess() {
    copyRuntimeFiles(new URL('./dist/', import.meta.url));
  },
});

/** The files the bundle reads beside itself at run time, copied into `outDir` (a directory URL) after a build. */
export function copyRuntimeFiles(outDir: URL) {
  // The SQL function files are read next to the module that applies them (packages/db/src/functions), which
  // in the bundle is any entry in dist/: they travel beside it.
  const functions = new URL('../db/src/functions/', import.meta.url);
  for (const file of readdirSync(functions).filter((name) => name.endsWith('.sql'))) {
    copyFileSync(new URL(file, functions), new URL(file, outDir));
  }
  // The operator console's stylesheet and script, read beside the module that serves them (http/admin).
  cpSync(new URL('./src/http/admin/admin-static/', import.meta.url), new URL('admin-static/', outDir), {
    recursive: true,
  });
}
