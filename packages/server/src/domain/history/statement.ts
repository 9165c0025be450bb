import { type Database, statementPage } from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { toTransactionView } from '../credits/mappers.ts';
import { InvalidCursorError } from '../errors.ts';

export interface StatementRequest {
  from: Date;
  to: Date;
  limit: number;
  cursor?: string | undefined;
}

/**
 * One page of a user's statement of [from, to): the opening balance (before `from`), the entries of the
 * range oldest first, and the closing balance (before `to`), all read in one snapshot. Page on with
 * `nextCursor` (keyset: later pages cost the same as the first).
 */
export async function statement(db: Kysely<Database>, userId: string, request: StatementRequest) {
  const page = await statementPage(db, { userId, ...request });
  if (!page) throw new InvalidCursorError('an entry of this statement');
  return {
    from: request.from,
    to: request.to,
    openingBalance: page.openingBalance,
    closingBalance: page.closingBalance,
    items: page.items.map(toTransactionView),
    nextCursor: page.nextCursor,
  };
}

export type StatementPageView = Awaited<ReturnType<typeof statement>>;
