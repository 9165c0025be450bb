import { createDb } from '../connect.ts';
import { migrateToLatest } from '../migrate.ts';

// `pnpm db:seed`: a few example packages; fixed ids make it safe to run twice.
const packages = [
  {
    id: '00000000-0000-4000-8000-000000000101',
    name: 'Starter',
    description: '100 credits to try things out',
    credits: 100,
    price_euro_cents: 199,
    sort_order: 1,
  },
  {
    id: '00000000-0000-4000-8000-000000000102',
    name: 'Standard',
    description: '500 credits',
    credits: 500,
    price_euro_cents: 799,
    sort_order: 2,
  },
  {
    id: '00000000-0000-4000-8000-000000000103',
    name: 'Pro',
    description: '2,000 credits',
    credits: 2000,
    price_euro_cents: 2499,
    sort_order: 3,
  },
  {
    id: '00000000-0000-4000-8000-000000000104',
    name: 'Studio',
    description: '10,000 credits',
    credits: 10000,
    price_euro_cents: 9999,
    sort_order: 4,
  },
];

const handle = await createDb({
  databaseUrl: process.env.DATABASE_URL,
  dataDir: process.env.DATA_DIR ?? './.data',
});
try {
  await migrateToLatest(handle.db);
  const inserted = await handle.db
    .insertInto('credits.packages')
    .values(packages)
    .onConflict((oc) => oc.column('id').doNothing())
    .returning('name')
    .execute();
  console.log(`seeded ${inserted.length} package(s)`);
} finally {
  await handle.close();
}
