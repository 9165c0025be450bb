import { type SelectQueryBuilder, sql } from 'kysely';

export interface PageRequest {
  limit: number;
  /** The id of the last row of the previous page. */
  cursor?: string | undefined;
}

export interface Page<T> {
  items: T[];
  /** Pass as `cursor` for the next page; null on the last page. */
  nextCursor: string | null;
}

/**
 * The one keyset pagination of every listing: newest first by (created_at, id). `listing` is the listing's
 * query — its rows filtered to what the caller may see, with its selection; `table` names the listed table
 * (and `alias` how the query refers to it). A cursor must be a row the listing itself could show, else the
 * answer is undefined (the caller says INVALID_CURSOR); the keyset is compared inside Postgres, so
 * microsecond timestamps stay exact. `idOf` reads a row's id as the listing names it.
 */
export async function newestFirst<DB, TB extends keyof DB, O>(
  listing: SelectQueryBuilder<DB, TB, O>,
  keyset: { table: string; alias?: string; idOf: (row: O) => string },
  page: PageRequest,
): Promise<Page<O> | undefined> {
  const column = (name: string) => sql.ref(keyset.alias ? `${keyset.alias}.${name}` : name);
  let query = listing;
  if (page.cursor) {
    const anchor = await listing
      .clearSelect()
      .select(sql<number>`1`.as('visible'))
      .where(column('id'), '=', page.cursor)
      .executeTakeFirst();
    if (!anchor) return undefined;
    query = query.where(
      sql<boolean>`(${column('created_at')}, ${column('id')}) < (select c.created_at, c.id from ${sql.table(keyset.table)} c where c.id = ${page.cursor}::uuid)`,
    );
  }
  const rows = await query
    .orderBy(column('created_at'), 'desc')
    .orderBy(column('id'), 'desc')
    .limit(page.limit + 1)
    .execute();
  const items = rows.slice(0, page.limit);
  const last = items[items.length - 1];
  return { items, nextCursor: rows.length > page.limit && last ? keyset.idOf(last) : null };
}
