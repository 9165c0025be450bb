import { execFile } from 'node:child_process';
import { cpSync, existsSync, readFileSync, realpathSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, parse } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cachedArtifact, inputsKey, ROOT } from '../../server/test/helpers/build-cache.ts';
import { newUser, SERVICE_KEY, startTestServer, type TestServer } from '../../server/test/helpers/server.ts';

/**
 * The proof that the published package stands alone: build it, pack it as it would be published (or take the
 * tarball an earlier run packed from the same inputs: packedTarball), install the tarball into a project
 * outside the workspace with only its peers (@trpc/client, @trpc/server, superjson) and TypeScript
 * (consumerModules), type-check a consumer under strict nodenext (and a file that must not compile), then run
 * the consumer against a live server.
 */
const run = promisify(execFile);
const packageDir = join(dirname(fileURLToPath(import.meta.url)), '..');

/** The child's environment without what pnpm exports to scripts, so npm behaves as in a fresh shell. */
const childEnv = Object.fromEntries(
  Object.entries(process.env).filter(
    ([name]) => !/^(npm_|pnpm_)/i.test(name) || name.toLowerCase() === 'npm_config_registry',
  ),
);

async function sh(command: string, args: string[], cwd: string, env: Record<string, string> = {}) {
  return run(command, args, { cwd, env: { ...childEnv, ...env }, maxBuffer: 16 * 1024 * 1024 });
}

/** The pnpm that runs this test (`pnpm test` says where it is in npm_execpath), or pnpm 10 through npx. */
const pnpm: [string, string[]] = /pnpm\.c?js$/.test(process.env.npm_execpath ?? '')
  ? [process.execPath, [process.env.npm_execpath!]]
  : ['npx', ['-y', 'pnpm@10']];

/** Runs a command that must fail and returns what it printed. */
async function shFailing(command: string, args: string[], cwd: string) {
  try {
    await sh(command, args, cwd);
  } catch (error) {
    const { stdout, stderr } = error as { stdout: string; stderr: string };
    return `${stdout}${stderr}`;
  }
  throw new Error(`${command} ${args.join(' ')} was expected to fail`);
}

const CONSUMER = `declare const process: { env: Record<string, string | undefined> };
import {
  createCreditsClient,
  createInternalCreditsClient,
  isIdempotencyConflict,
  isInsufficientCredits,
  type RouterOutputs,
} from '@mana-credits/client';

const url = process.env.CREDITS_URL!;
const userId = process.env.USER_ID!;
const service = createInternalCreditsClient({ url, serviceKey: process.env.SERVICE_KEY!, appId: 'consumer' });
const user = createCreditsClient({ url, getToken: async () => process.env.USER_TOKEN });

await service.internal.credits.grant.mutate({ userId, amount: 50, reason: 'welcome', idempotencyKey: 'welcome' });
const spent = await user.credits.use.mutate({ amount: 20, appId: 'consumer', description: 'one call', idempotencyKey: 'c1' });
const balance: RouterOutputs['credits']['balance'] = await user.credits.balance.query();
let shortBy = 0;
try {
  await user.credits.use.mutate({ amount: 1000, appId: 'consumer', description: 'too much' });
} catch (error) {
  if (isInsufficientCredits(error)) shortBy = error.data.details.required - error.data.details.available;
}
let conflict = false;
try {
  await user.credits.use.mutate({ amount: 21, appId: 'consumer', description: 'one call', idempotencyKey: 'c1' });
} catch (error) {
  conflict = isIdempotencyConflict(error);
}
console.log(JSON.stringify({ spent: spent.balance, balance: balance.balance, dated: balance.updatedAt instanceof Date, shortBy, conflict }));
`;

const MUST_NOT_COMPILE = `import { createCreditsClient } from '@mana-credits/client';

const user = createCreditsClient({ url: 'http://localhost:3060', getToken: () => 'token' });
await user.credits.use.mutate({ amount: '20', appId: 'a', description: 'x' });
await user.credits.usee.mutate({ amount: 20, appId: 'a', description: 'x' });
await user.internal.credits.balance.query({ userId: 'u' });
`;

const COMMONJS_CONSUMER = `const { createCreditsClient } = require('@mana-credits/client');
createCreditsClient({ url: process.env.CREDITS_URL, getToken: () => process.env.USER_TOKEN })
  .credits.balance.query()
  .then((balance) => console.log(JSON.stringify(balance)));
`;

const TSCONFIG = {
  compilerOptions: {
    strict: true,
    module: 'nodenext',
    moduleResolution: 'nodenext',
    target: 'es2022',
    // No @types/node: the package must not need it. @trpc/server's own types use Disposable.
    lib: ['es2023', 'esnext.disposable', 'dom'],
    types: [],
    skipLibCheck: false,
    outDir: 'out',
  },
  files: ['consumer.ts', 'wrong.ts'],
};

/**
 * Everything `npm run build` and `pnpm pack` read: the client, the server and database sources whose types
 * the declarations inline, the compiler settings, and the locked versions of every tool and type package.
 */
const PACK_INPUTS = [
  'packages/client/src',
  'packages/client/package.json',
  'packages/client/README.md',
  'packages/client/tsup.config.ts',
  'packages/client/rollup.dts.config.mjs',
  'packages/client/tsconfig.json',
  'packages/client/tsconfig.build.json',
  'packages/server/src',
  'packages/server/package.json',
  'packages/db/src',
  'packages/db/package.json',
  'tsconfig.base.json',
  'package.json',
  'pnpm-workspace.yaml',
  'pnpm-lock.yaml',
];

/**
 * The tarball `npm run build && pnpm pack` makes (about 10 s of CPU: bundling, declarations, packing), kept
 * between runs while none of its inputs changed (helpers/build-cache.ts); any change builds and packs again.
 */
async function packedTarball(): Promise<string> {
  const directory = await cachedArtifact(
    join(ROOT, 'node_modules/.cache/mana-credits-test-client-pack'),
    inputsKey(PACK_INPUTS),
    async (into) => {
      await sh('npm', ['run', 'build'], packageDir);
      await sh(pnpm[0], [...pnpm[1], 'pack', '--pack-destination', into], packageDir);
    },
  );
  const name = (await readdir(directory)).find((file) => file.endsWith('.tgz'));
  if (!name) throw new Error(`no tarball in ${directory}`);
  return join(directory, name);
}

/** Where `name` resolves from `from` as Node would look it up (node_modules of `from` and its parents). */
function installedPackage(name: string, from: string): string {
  for (let directory = from; ; directory = dirname(directory)) {
    const candidate = join(directory, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return realpathSync(candidate);
    if (directory === parse(directory).root) throw new Error(`${name} is not installed above ${from}`);
  }
}

interface Manifest {
  version: string;
  dependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
}
const manifestOf = (directory: string): Manifest =>
  JSON.parse(readFileSync(join(directory, 'package.json'), 'utf8')) as Manifest;

/** `version` satisfies `^X.Y.Z` (X > 0), the form of every peer range the package declares. */
function satisfiesCaret(version: string, range: string): boolean {
  const wanted = /^\^(\d+)\.(\d+)\.(\d+)$/.exec(range);
  const have = /^(\d+)\.(\d+)\.(\d+)$/.exec(version);
  if (!wanted || !have || wanted[1] === '0') throw new Error(`cannot compare ${version} with ${range}`);
  const [w, h] = [wanted.slice(1).map(Number), have.slice(1).map(Number)];
  return h[0] === w[0] && (h[1]! > w[1]! || (h[1] === w[1] && h[2]! >= w[2]!));
}

/**
 * The consumer's node_modules, flat as npm lays it out: the tarball unpacked as @mana-credits/client, its peers
 * (@trpc/client, @trpc/server, superjson: what the consumer installs) and their dependencies copied from this
 * workspace's install, at the versions pnpm-lock.yaml pins, and TypeScript, the consumer's compiler, linked.
 * Copies, not links: Node and TypeScript resolve from a file's real path, so everything the consumer and the
 * package load is looked up inside the project only, as after `npm install` (which took ~10 s, mostly
 * waiting on the disk and the registry). Each peer must be in the range the package declares.
 */
async function consumerModules(packed: string, project: string): Promise<void> {
  const modules = join(project, 'node_modules');
  const own = join(modules, '@mana-credits/client');
  await mkdir(own, { recursive: true });
  await sh('tar', ['xzf', packed, '--strip-components=1', '-C', own], project);
  await symlink(installedPackage('typescript', packageDir), join(modules, 'typescript'), 'dir');
  const copied = new Set(['@mana-credits/client', 'typescript']);
  const copy = (name: string, from: string) => {
    if (copied.has(name)) return;
    copied.add(name);
    const source = installedPackage(name, from);
    cpSync(source, join(modules, name), { recursive: true });
    const manifest = manifestOf(source);
    const peers = Object.keys(manifest.peerDependencies ?? {}).filter(
      (peer) => !manifest.peerDependenciesMeta?.[peer]?.optional,
    );
    for (const dependency of [...Object.keys(manifest.dependencies ?? {}), ...peers])
      copy(dependency, source);
  };
  const peers = manifestOf(own).peerDependencies ?? {};
  expect(Object.keys(peers).sort()).toEqual(['@trpc/client', '@trpc/server', 'superjson']);
  for (const [name, range] of Object.entries(peers)) {
    copy(name, packageDir);
    const { version } = manifestOf(join(modules, name));
    expect(satisfiesCaret(version, range), `${name}@${version} satisfies ${range}`).toBe(true);
  }
}

let scratch: string;
let tarball: string;
let server: TestServer;

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'mana-credits-consumer-'));
  const [started] = await Promise.all([
    startTestServer(),
    (async () => {
      const packed = await packedTarball();
      tarball = join(scratch, basename(packed));
      await copyFile(packed, tarball);
      await writeFile(
        join(scratch, 'package.json'),
        JSON.stringify({ name: 'consumer', private: true, type: 'module' }),
      );
      await consumerModules(packed, scratch);
    })(),
  ]);
  server = started;
}, 240_000);

afterAll(async () => {
  await server?.close();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe('the packed @mana-credits/client', () => {
  it('ships only dist, with declarations that import nothing of the server', async () => {
    const { stdout } = await sh('tar', ['tzf', tarball], scratch);
    expect(stdout.trim().split('\n').sort()).toEqual([
      'package/README.md',
      'package/dist/index.cjs',
      'package/dist/index.cjs.map',
      'package/dist/index.d.cts',
      'package/dist/index.d.ts',
      'package/dist/index.js',
      'package/dist/index.js.map',
      'package/package.json',
    ]);
    for (const file of ['index.d.ts', 'index.d.cts']) {
      const declarations = await readFile(
        join(scratch, 'node_modules/@mana-credits/client/dist', file),
        'utf8',
      );
      const imported = [...declarations.matchAll(/(?:from |import\()['"]([^'"]+)['"]/g)].map(
        (match) => match[1],
      );
      expect(new Set(imported)).toEqual(new Set(['@trpc/server', '@trpc/client']));
      // Imports are the proof; these names would only appear if a server type had been inlined.
      expect(declarations).not.toMatch(
        /\b(Kysely|ColumnType|FastifyBaseLogger|FastifyInstance|ZodType|PGlite)\b|@mana-credits\//,
      );
    }
    const manifest = JSON.parse(
      await readFile(join(scratch, 'node_modules/@mana-credits/client/package.json'), 'utf8'),
    );
    expect(Object.keys(manifest.dependencies ?? {})).toEqual([]);
    expect(manifest.version).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it('passes @arethetypeswrong/cli', async () => {
    const { stdout } = await sh(
      join(packageDir, 'node_modules/.bin/attw'),
      [tarball, '--format', 'json'],
      scratch,
    );
    const report = JSON.parse(stdout) as { analysis: { problems: unknown[] }; problems?: unknown[] };
    expect(report.analysis.problems).toEqual([]);
  });

  it('type-checks a consumer under strict nodenext and refuses a wrong one', async () => {
    // One compiler run for both files (checking @trpc/server's declarations, skipLibCheck off, is most of its
    // time): every error it reports must be one of wrong.ts's, so consumer.ts has none; it is emitted anyway.
    await writeFile(join(scratch, 'tsconfig.json'), JSON.stringify(TSCONFIG));
    await writeFile(join(scratch, 'consumer.ts'), CONSUMER);
    await writeFile(join(scratch, 'wrong.ts'), MUST_NOT_COMPILE);
    const output = await shFailing(
      process.execPath,
      [join(scratch, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'],
      scratch,
    );
    const errors = [...output.matchAll(/^(.*?error TS\d+)/gm)].map((match) => match[1]);
    expect(errors).toEqual([
      'wrong.ts(4,33): error TS2322',
      'wrong.ts(5,20): error TS2551',
      'wrong.ts(6,12): error TS2339',
    ]);
    expect(output).toContain("Type 'string' is not assignable to type 'number'");
    expect(output).toContain("Property 'usee' does not exist");
    expect(output).toContain("Property 'internal' does not exist on type 'CreditsClient'");
  });

  it('runs the consumer against a live server, as ESM and as CommonJS', async () => {
    const user = newUser();
    const env = {
      CREDITS_URL: server.url,
      SERVICE_KEY,
      USER_ID: user.id,
      USER_TOKEN: await server.auth.sign(user),
    };
    const { stdout } = await sh('node', ['out/consumer.js'], scratch, env);
    expect(JSON.parse(stdout)).toEqual({ spent: 30, balance: 30, dated: true, shortBy: 970, conflict: true });

    await writeFile(join(scratch, 'consumer.cjs'), COMMONJS_CONSUMER);
    const commonjs = await sh('node', ['consumer.cjs'], scratch, env);
    expect(JSON.parse(commonjs.stdout)).toMatchObject({ balance: 30, totalSpent: 20 });
  });
});
