import { randomUUID } from 'node:crypto';
import { type Database, runReconcileChecks } from '@mana-credits/db';
import { type Kysely, sql } from 'kysely';
import { expect } from 'vitest';
import type { TestServer } from './server.ts';

/** What a grant may say of the lot it makes. */
export type GrantExtra = {
  expiresAt?: Date;
  expiresInDays?: number;
  category?: 'paid' | 'promotional';
  priority?: number;
};

/** Grants `amount` credits in a lot of their own; returns the grant's answer and the lot it filled. */
export async function grantLot(server: TestServer, userId: string, amount: number, extra: GrantExtra = {}) {
  const credits = server.internalClient().internal.credits;
  const granted = await credits.grant.mutate({
    userId,
    amount,
    reason: 'lot test',
    idempotencyKey: `grant-${randomUUID()}`,
    ...extra,
  });
  const entry = await credits.transaction.query({ userId, transactionId: granted.transactionId });
  expect(entry.lots).toHaveLength(1);
  return { ...granted, lotId: entry.lots[0]!.lotId };
}

/** Makes a lot's time pass: the lot and its account's next_lot_expiry lie one second in the past. */
export async function lapseLot(db: Kysely<Database>, lotId: string) {
  await sql`update credits.lots set expires_at = now() - interval '1 second' where id = ${lotId}::uuid`.execute(
    db,
  );
  await sql`update credits.balances b set next_lot_expiry = least(b.next_lot_expiry, now() - interval '1 second')
             from credits.lots l where l.id = ${lotId}::uuid and l.account_kind = 'user' and b.user_id = l.account_id`.execute(
    db,
  );
  await sql`update credits.guild_pools p set next_lot_expiry = least(p.next_lot_expiry, now() - interval '1 second')
             from credits.lots l where l.id = ${lotId}::uuid and l.account_kind = 'guild' and p.organization_id = l.account_id`.execute(
    db,
  );
}

/** Every reconcile check (ledger = balance, lots = balance, pins = reserved, lot ledger, no spend after expiry). */
export async function expectReconciled(db: Kysely<Database>) {
  const { checks } = await runReconcileChecks(db, 5);
  expect(checks.filter((check) => check.violations > 0)).toEqual([]);
}
