import { type Kysely, type RawBuilder, sql } from 'kysely';
import type { Database, JsonObject, KeySpace, RefusalRow } from '../database.ts';

// Refused keyed requests take their key (functions/refusals.sql has the rule and why it is atomic).

/** The unique index of recorded refusals; credits.assert_not_refused reports a refused key as a violation of it. */
export const REFUSAL_KEY_INDEX = 'refusals_key';

/** A caller's idempotency key where it lives: its key space, the user it is scoped to, the guild (guild keys). */
export interface KeyRef {
  space: KeySpace;
  userId: string;
  organizationId: string | null;
  key: string;
}

/**
 * The RETURNING column a keyed debit or hold statement adds to its account UPDATE: asked after the UPDATE took
 * the account's row lock, it fails the statement (unique violation on REFUSAL_KEY_INDEX) when the key was
 * refused before. Nothing for a keyless statement.
 */
export function notRefused(ref: KeyRef | undefined): RawBuilder<unknown> {
  if (!ref) return sql``;
  return sql`, credits.assert_not_refused(${ref.space}, ${ref.userId}, ${ref.organizationId}::text, ${ref.key}) as not_refused`;
}

/**
 * Records a refusal under its key (credits.record_refusal): call it under the row lock of the account that
 * refused, in the transaction that decided it, and commit. False when the key was taken already (posted in its
 * space, or refused before): nothing recorded, the key's first result answers.
 */
export async function recordRefusal(
  db: Kysely<Database>,
  ref: KeyRef,
  refusal: { requestHash: string; reason: string; details: JsonObject },
): Promise<boolean> {
  const { rows } = await sql<{ recorded: boolean }>`
    select credits.record_refusal(${ref.space}, ${ref.userId}, ${ref.organizationId}::text, ${ref.key},
                                  ${refusal.requestHash}, ${refusal.reason}, ${JSON.stringify(refusal.details)}::jsonb)
           as recorded`.execute(db);
  return rows[0]?.recorded ?? false;
}

/** The refusal recorded under a key, if any: a first result, when no row was posted under the key. */
export async function findRefusal(db: Kysely<Database>, ref: KeyRef): Promise<RefusalRow | undefined> {
  return db
    .selectFrom('credits.refusals')
    .selectAll()
    .where('user_id', '=', ref.userId)
    .where('idempotency_key', '=', ref.key)
    .where('key_space', '=', ref.space)
    .where((eb) =>
      ref.organizationId === null
        ? eb('organization_id', 'is', null)
        : eb('organization_id', '=', ref.organizationId),
    )
    .executeTakeFirst();
}
