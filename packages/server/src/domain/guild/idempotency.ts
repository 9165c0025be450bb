import {
  type Database,
  findGuildEntryByKey,
  GUILD_IDEMPOTENCY_INDEX,
  type GuildLedgerRow,
  isUniqueViolation,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { DomainError, IdempotencyConflictError } from '../errors.ts';
import { markReplayed } from '../idempotency.ts';
import { certainlyNotCommitted, certainOrUnknown } from '../outcome.ts';

export interface GuildIdempotency {
  guildId: string;
  userId: string;
  key: string | undefined;
  hash: string;
}

/**
 * withLedgerIdempotency for the guild ledger: the key is scoped to (guild, member) by the unique index
 * GUILD_IDEMPOTENCY_INDEX, hit inside the operation's transaction. A replay (or a replay that now fails a
 * business rule) answers from the stored first row; a stored row with another fingerprint is a CONFLICT.
 */
export async function withGuildIdempotency<T>(
  db: Kysely<Database>,
  idempotency: GuildIdempotency,
  run: () => Promise<T>,
  replay: (first: GuildLedgerRow) => T | Promise<T>,
): Promise<T> {
  try {
    return await run();
  } catch (error) {
    const { key } = idempotency;
    if (!key) throw certainOrUnknown(error);
    const duplicate = isUniqueViolation(error, GUILD_IDEMPOTENCY_INDEX);
    // Only a certain failure (a refusal, or Postgres' own rollback) is looked up; an unknown outcome (a lost
    // connection, perhaps after the commit) is answered as unknown: the caller retries with the same key.
    if (!duplicate && !(error instanceof DomainError && certainlyNotCommitted(error)))
      throw certainOrUnknown(error);
    const first = await findGuildEntryByKey(db, idempotency.guildId, idempotency.userId, key);
    if (!first) {
      if (duplicate) throw new Error('idempotency key collided but no row was found', { cause: error });
      throw error;
    }
    if (first.request_hash !== idempotency.hash) throw new IdempotencyConflictError();
    return markReplayed(await replay(first));
  }
}
