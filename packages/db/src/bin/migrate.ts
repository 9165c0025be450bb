import { createDb } from '../connect.ts';
import { migrateToLatest } from '../migrate.ts';

// `pnpm db:migrate`: the same migrations the server runs at start, for MIGRATE_ON_START=false deployments.
const handle = await createDb({
  databaseUrl: process.env.DATABASE_URL,
  dataDir: process.env.DATA_DIR ?? './.data',
});
try {
  const { results } = await migrateToLatest(handle.db);
  for (const result of results ?? []) console.log(`${result.status}: ${result.migrationName}`);
  if (!results?.length) console.log('schema is up to date');
} finally {
  await handle.close();
}
