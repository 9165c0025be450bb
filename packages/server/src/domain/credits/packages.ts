import { type Database, savePackage } from '@mana-credits/db';
import type { Kysely } from 'kysely';
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
  validityDays?: number | null | undefined;
}

/**
 * Creates a package, or replaces the one with this id: the stored package becomes exactly the input (an
 * omitted description or Stripe price is cleared). Purchases keep the credits and price they were bought at.
 */
export async function upsertPackage(db: Kysely<Database>, input: PackageInput): Promise<StoredPackageView> {
  const row = await savePackage(db, input.id, {
    name: input.name,
    description: input.description ?? null,
    credits: input.credits,
    priceEuroCents: input.priceEuroCents,
    stripePriceId: input.stripePriceId ?? null,
    active: input.active,
    sortOrder: input.sortOrder,
    validityDays: input.validityDays ?? null,
  });
  return toStoredPackageView(row);
}
