import { randomUUID } from 'node:crypto';
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
