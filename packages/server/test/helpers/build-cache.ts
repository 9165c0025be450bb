import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
} from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository's root. */
export const ROOT = fileURLToPath(new URL('../../../..', import.meta.url));

/**
 * A digest of files and directories (paths relative to ROOT; directories walked in name order, without
 * node_modules and dist): the key of an artifact made from them, so that any change to an input makes a new one.
 */
export function inputsKey(paths: readonly string[]): string {
  const hash = createHash('sha256');
  const add = (path: string) => {
    hash.update(`${relative(ROOT, path)}\0`);
    hash.update(readFileSync(path));
  };
  const walk = (directory: string) => {
    for (const entry of readdirSync(directory, { withFileTypes: true }).sort((a, b) =>
      a.name < b.name ? -1 : 1,
    )) {
      if (entry.name === 'node_modules' || entry.name === 'dist') continue;
      const path = join(directory, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.isFile()) add(path);
    }
  };
  for (const path of paths) {
    const absolute = join(ROOT, path);
    if (statSync(absolute).isDirectory()) walk(absolute);
    else add(absolute);
  }
  return hash.digest('hex').slice(0, 24);
}

/** A run that died while making an artifact leaves its partial directory; one this old is not being made. */
const ABANDONED_MS = 30 * 60_000;

/**
 * The directory holding what `make` builds from inputs whose digest is `key` (see inputsKey), kept in
 * `cacheDir` between runs: made once per key (into a directory of its own, renamed into place whole, so no
 * run ever sees half of it), then reused; a new key replaces the artifacts of older ones. Two runs making the
 * same key at once both succeed (the second to finish keeps the first one's).
 */
export async function cachedArtifact(
  cacheDir: string,
  key: string,
  make: (directory: string) => Promise<void>,
): Promise<string> {
  const done = join(cacheDir, key);
  if (existsSync(done)) return done;
  mkdirSync(cacheDir, { recursive: true });
  const partial = mkdtempSync(join(cacheDir, `${key}.partial-`));
  try {
    await make(partial);
    for (const entry of readdirSync(cacheDir)) {
      const path = join(cacheDir, entry);
      const abandoned = entry.includes('.partial-') && Date.now() - statSync(path).mtimeMs > ABANDONED_MS;
      if (abandoned || (entry !== key && !entry.includes('.partial-'))) {
        rmSync(path, { recursive: true, force: true });
      }
    }
    renameSync(partial, done);
  } catch (error) {
    rmSync(partial, { recursive: true, force: true });
    if (existsSync(done)) return done; // another run made it meanwhile
    throw error;
  }
  return done;
}
