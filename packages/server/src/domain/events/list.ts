import { type Database, type EventRow, listEvents } from '@mana-credits/db';
import type { Kysely } from 'kysely';
import type { EventEnvelope } from './types.ts';

export const toEnvelope = (row: EventRow): EventEnvelope => ({
  id: row.id,
  type: row.type,
  createdAt: row.created_at.toISOString(),
  data: row.data,
});

/**
 * internal.events.list: events in commit order after the cursor (pull delivery). `cursor` in the answer is
 * where the next call continues; an event appears once the relay has numbered it (within a delivery interval of
 * its commit), and a cursor never skips one that commits later.
 */
export async function eventList(
  db: Kysely<Database>,
  input: { after?: string | undefined; types?: string[] | undefined; limit: number },
): Promise<{ items: EventEnvelope[]; cursor: string }> {
  const page = await listEvents(db, {
    after: input.after === undefined ? undefined : Number(input.after),
    types: input.types,
    limit: input.limit,
  });
  return { items: page.items.map(toEnvelope), cursor: String(page.cursor) };
}
