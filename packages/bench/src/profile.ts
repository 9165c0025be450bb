import { readFileSync, statSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** The profile of the main thread: with tsx's loader a second, mostly idle thread writes one too. */
export function mainThreadProfile(files: string[]): string | undefined {
  return files.map((file) => ({ file, size: statSync(file).size })).sort((a, b) => b.size - a.size)[0]?.file;
}

export interface CostLine {
  name: string;
  /** Share of the busy (non-idle) time, in percent. */
  percent: number;
}

export interface ProfileSummary {
  busyMs: number;
  idlePercent: number;
  /** Self time grouped by where the code lives: a package, node internals, our own files, GC. */
  byOrigin: CostLine[];
  /** Self time of single functions. */
  byFunction: CostLine[];
  /** Inclusive time of frames we care about (JWT, superjson, zod, pg, fastify, …). */
  byArea: CostLine[];
}

/** Where a frame's code lives, e.g. "pg", "@trpc/server", "node:internal", "packages/server". */
export function originOf(url: string, functionName: string): string {
  if (!url) return functionName.startsWith('(') ? functionName : '(native)';
  if (url.startsWith('node:')) return 'node:internal';
  const modules = url.lastIndexOf('/node_modules/');
  if (modules >= 0) {
    const parts = url.slice(modules + '/node_modules/'.length).split('/');
    return parts[0]?.startsWith('@') ? `${parts[0]}/${parts[1]}` : (parts[0] ?? url);
  }
  const packages = /\/(packages\/[^/]+)\//.exec(url);
  return packages ? packages[1]! : url;
}

const AREAS: [string, RegExp][] = [
  ['jose (JWT verify)', /\/node_modules\/jose\//],
  ['superjson', /\/node_modules\/superjson\//],
  ['zod', /\/node_modules\/zod\//],
  ['pg + pg-protocol', /\/node_modules\/pg(-protocol|-pool|-types)?\//],
  ['kysely', /\/node_modules\/kysely\//],
  ['fastify + find-my-way', /\/node_modules\/(fastify|find-my-way|light-my-request|avvio|@fastify\/[^/]+)\//],
  ['pino (logging)', /\/node_modules\/pino[^/]*\//],
  ['@trpc/server', /\/node_modules\/@trpc\/server\//],
];

/**
 * Reads a .cpuprofile and sums self time by origin and function, and inclusive time by area. Samples of the
 * first `skipMs` (start-up, module loading, warm-up) are left out.
 */
export function summarizeProfile(file: string, skipMs = 0, top = 15): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);

  const self = new Map<number, number>();
  let elapsed = 0;
  profile.samples.forEach((id, index) => {
    const delta = profile.timeDeltas[index] ?? 0;
    elapsed += delta;
    if (elapsed >= skipMs * 1000) self.set(id, (self.get(id) ?? 0) + delta);
  });

  let idle = 0;
  let busy = 0;
  const origins = new Map<string, number>();
  const functions = new Map<string, number>();
  const areas = new Map<string, number>();
  for (const [id, micros] of self) {
    const node = byId.get(id);
    if (!node) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    if (functionName === '(idle)') {
      idle += micros;
      continue;
    }
    busy += micros;
    const origin = originOf(url, functionName);
    origins.set(origin, (origins.get(origin) ?? 0) + micros);
    const where = url
      ? `${origin}${url.includes('/node_modules/') ? '' : `:${url.split('/').pop()}`}`
      : origin;
    const name = `${functionName || '(anonymous)'} (${where}:${lineNumber + 1})`;
    functions.set(name, (functions.get(name) ?? 0) + micros);
    // Inclusive: charge each area once per sample path.
    const seen = new Set<string>();
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const frameUrl = byId.get(at)?.callFrame.url ?? '';
      for (const [area, pattern] of AREAS) {
        if (!seen.has(area) && pattern.test(frameUrl)) seen.add(area);
      }
    }
    for (const area of seen) areas.set(area, (areas.get(area) ?? 0) + micros);
  }
  const lines = (map: Map<string, number>, limit: number): CostLine[] =>
    [...map.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, limit)
      .map(([name, micros]) => ({ name, percent: (100 * micros) / Math.max(busy, 1) }));
  return {
    busyMs: busy / 1000,
    idlePercent: (100 * idle) / Math.max(idle + busy, 1),
    byOrigin: lines(origins, 12),
    byFunction: lines(functions, top),
    byArea: lines(areas, AREAS.length),
  };
}
