import { PGlite } from '@electric-sql/pglite';
import { createDb, migrateToLatest } from '/work/main/packages/db/src/index.ts';

let t = performance.now();
const h = await createDb({ dataDir: 'memory://' });
console.log('boot', Math.round(performance.now() - t));
t = performance.now();
await migrateToLatest(h.db);
console.log('migrate', Math.round(performance.now() - t));
t = performance.now();
// @ts-expect-error
const pg: PGlite = (h.db as any).getExecutor().adapter ? null : null;
await h.close();
const p = new PGlite('memory://');
await p.waitReady;
console.log('plain boot', Math.round(performance.now() - t));
t = performance.now();
await p.exec('select 1');
const dump = await p.dumpDataDir('none');
console.log('dump', Math.round(performance.now() - t), dump.size);
t = performance.now();
const q = new PGlite('memory://', { loadDataDir: dump });
await q.waitReady;
console.log('load boot', Math.round(performance.now() - t));
