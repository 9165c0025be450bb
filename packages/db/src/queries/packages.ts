import { type Kysely, sql } from 'kysely';
import type { Database, PackageRow } from '../database.ts';

// The credit packages on sale: what a purchase is priced from and what operators manage.

/** A package by id, on sale or not (the caller refuses an inactive one). */
export async function findPackage(db: Kysely<Database>, packageId: string): Promise<PackageRow | undefined> {
  return db.selectFrom('credits.packages').selectAll().where('id', '=', packageId).executeTakeFirst();
}

/** The packages on sale, in the order shops show them (sort_order, then name). */
export async function listActivePackages(db: Kysely<Database>): Promise<PackageRow[]> {
  return db
    .selectFrom('credits.packages')
    .selectAll()
    .where('active', '=', true)
    .orderBy('sort_order')
    .orderBy('name')
    .execute();
}

export interface PackageFields {
  name: string;
  description: string | null;
  credits: number;
  priceEuroCents: number;
  stripePriceId: string | null;
  active: boolean;
  sortOrder: number;
  /** Days the credits of a purchase stay valid; null = never expire. */
  validityDays: number | null;
}

/**
 * Creates a package (a new id when `id` is absent), or makes the one with this id exactly `fields`. Purchases
 * copied the credits and price they were bought at, so changing a package never changes them.
 */
export async function savePackage(
  db: Kysely<Database>,
  id: string | undefined,
  fields: PackageFields,
): Promise<PackageRow> {
  const columns = {
    name: fields.name,
    description: fields.description,
    credits: fields.credits,
    price_euro_cents: fields.priceEuroCents,
    stripe_price_id: fields.stripePriceId,
    active: fields.active,
    sort_order: fields.sortOrder,
    validity_days: fields.validityDays,
  };
  return db
    .insertInto('credits.packages')
    .values({ ...(id ? { id } : {}), ...columns })
    .onConflict((oc) => oc.column('id').doUpdateSet({ ...columns, updated_at: sql<Date>`now()` }))
    .returningAll()
    .executeTakeFirstOrThrow();
}
