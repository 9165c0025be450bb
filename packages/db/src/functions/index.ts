import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { type Kysely, sql } from 'kysely';

/**
 * The SQL functions, one readable file each beside this module: each file is the live body
 * (`create or replace function …`), so a reader finds a function in one place instead of in the last
 * migration that mentioned it. Listed in the order they are applied (a function before those that call it).
 * The production bundle carries the files next to itself (they are read relative to this module).
 */
export const SQL_FUNCTIONS = [
  'clock',
  'ids',
  'covers',
  'lots',
  'release_expired_holds',
  'release_expired_pool_holds',
  'refusals',
  'use_batch',
  'member_spending',
  'pool_use_batch',
  'balance_alerts',
  'auto_top_up',
  'reservation_events',
  'relay_events',
] as const;

export function functionSql(name: (typeof SQL_FUNCTIONS)[number]): string {
  return readFileSync(new URL(`./${name}.sql`, import.meta.url), 'utf8');
}

/**
 * A file's statements, one query each (the embedded database takes one statement per query): each starts at
 * a line that begins with `create` or `drop` — function bodies are indented, so only top-level statements
 * do. Usually one `create or replace function`; a `drop` before it when a result type changes.
 */
export function statementsOf(text: string): string[] {
  return text
    .split(/^(?=(?:create|drop) )/m)
    .filter((part) => part.split('\n').some((line) => line.trim() !== '' && !line.trim().startsWith('--')));
}

/**
 * Applies every function file whose text changed since it was last applied (credits.sql_functions keeps a
 * hash per name), after the dated migrations: like a repeatable migration, so a changed body needs no new
 * migration and the frozen ones stay frozen. One transaction under an advisory lock, so instances starting
 * together apply each change once. Returns the names applied.
 */
// biome-ignore lint/suspicious/noExplicitAny: runs beside the migrations, against Kysely<any> like them
export async function applySqlFunctions(db: Kysely<any>): Promise<string[]> {
  return db.transaction().execute(async (trx) => {
    await sql`select pg_advisory_xact_lock(hashtext('mana_credits.sql_functions'))`.execute(trx);
    const { rows } = await sql<{ name: string; sha256: string }>`
      select name, sha256 from credits.sql_functions`.execute(trx);
    const applied = new Map(rows.map((row) => [row.name, row.sha256]));
    const changed: string[] = [];
    for (const name of SQL_FUNCTIONS) {
      const text = functionSql(name);
      const hash = createHash('sha256').update(text).digest('hex');
      if (applied.get(name) === hash) continue;
      for (const statement of statementsOf(text)) await sql.raw(statement).execute(trx);
      await sql`
        insert into credits.sql_functions (name, sha256) values (${name}, ${hash})
        on conflict (name) do update set sha256 = excluded.sha256, applied_at = now()`.execute(trx);
      changed.push(name);
    }
    return changed;
  });
}
