import type { Database } from '@mana-credits/db';
import { type Kysely, sql } from 'kysely';
import { type StoredPackageView, toStoredPackageView } from './mappers.ts';

export interface PackageInput {
  id?: string | undefined;
  name: string;
  description?: string | undefined;
  credits: number;
  priceEuroCents: number;
  stripePriceId?: string | undefined;
  active: boolean;
  sortOrder: number;
}

/**
 * Creates a package, or replaces the one with this id: the stored package becomes exactly the input (an
 * omitted description or Stripe price is cleared). Purchases keep the credits and price they were bought at.
 */
export async function upsertPackage(db: Kysely<Database>, input: PackageInput): Promise<StoredPackageView> {
  const fields = {
    name: input.name,
    description: input.description ?? null,
    credits: input.credits,
    price_euro_cents: input.priceEuroCents,
    stripe_price_id: input.stripePriceId ?? null,
    active: input.active,
    sort_order: input.sortOrder,
  };
  const row = await db
    .insertInto('credits.packages')
    .values({ ...(input.id ? { id: input.id } : {}), ...fields })
    .onConflict((oc) => oc.column('id').doUpdateSet({ ...fields, updated_at: sql<Date>`now()` }))
    .returningAll()
    .executeTakeFirstOrThrow();
  return toStoredPackageView(row);
}
