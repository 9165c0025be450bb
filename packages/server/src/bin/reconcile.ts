import { createDb } from '@mana-credits/db';
import { reconcile } from '../domain/audit/reconcile.ts';

// `pnpm reconcile`: checks the database named by DATABASE_URL (or the embedded one in DATA_DIR) and exits
// non-zero on any drift. `--json` prints the whole report.
const handle = await createDb({
  databaseUrl: process.env.DATABASE_URL,
  dataDir: process.env.DATA_DIR ?? './.data',
});
try {
  const report = await reconcile(handle.db);
  if (process.argv.includes('--json')) {
    console.log(JSON.stringify(report, null, 2));
  } else {
    for (const check of report.checks) {
      console.log(
        `${check.ok ? 'ok  ' : 'FAIL'} ${check.name} — ${check.description}${check.ok ? '' : ` (${check.violations})`}`,
      );
      for (const sample of check.samples) console.log(`       ${JSON.stringify(sample)}`);
    }
    console.log(`totals: ${JSON.stringify(report.totals)}`);
    console.log(`${report.ok ? 'no drift' : 'DRIFT FOUND'} (${report.durationMs} ms)`);
  }
  process.exitCode = report.ok ? 0 : 1;
} finally {
  await handle.close();
}
