import { randomBytes } from 'node:crypto';
import { createDb, type DbHandle } from '@mana-credits/db';
import { type Kysely, sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// Named (prepared) statements on a real Postgres (DATABASE_URL); the embedded database never uses them.
const adminUrl = process.env.DATABASE_URL;

describe.runIf(adminUrl)('prepared statements (DB_PREPARED_STATEMENTS)', () => {
  const database = `mana_credits_prepared_${Date.now()}_${randomBytes(3).toString('hex')}`;
  const urlOf = (suffix = '') => {
    const url = new URL(adminUrl!);
    url.pathname = `/${database}`;
    return `${url}${suffix}`;
  };

  beforeAll(async () => {
    const admin = new pg.Client({ connectionString: adminUrl });
    await admin.connect();
    await admin.query(`create database ${database}`);
    await admin.end();
  });
  afterAll(async () => {
    const admin = new pg.Client({ connectionString: adminUrl });
    await admin.connect();
    await admin.query(`drop database if exists ${database} with (force)`);
    await admin.end();
  });

  // The plain pool and the multi-host one (a list of one host with target_session_attrs) name alike.
  describe.each([
    ['plain pool', ''],
    ['multi-host pool', '?target_session_attrs=read-write'],
  ])('%s', (_label, suffix) => {
    let handle: DbHandle;
    let db: Kysely<unknown>;
    // Unique per describe: texts are "seen" process-wide.
    const tag = randomBytes(4).toString('hex');
    const table = `t_${tag}`;
    const prepared = async () =>
      (
        await sql<{ name: string; statement: string }>`
          select name, statement from pg_prepared_statements order by statement`.execute(db)
      ).rows;

    beforeAll(async () => {
      // One connection, so that pg_prepared_statements is the pool's; at most three statements on it.
      handle = await createDb({
        databaseUrl: urlOf(suffix),
        poolSize: 1,
        preparedStatements: true,
        preparedStatementsPerConnection: 3,
      });
      db = handle.db as unknown as Kysely<unknown>;
      await sql.raw(`create table ${table} (id int primary key, a int)`).execute(db);
      await sql.raw(`insert into ${table} values (1, 10), (2, 20)`).execute(db);
    });
    afterAll(async () => {
      await handle?.close();
    });

    it('prepares a text from its second call on, once, and keeps at most the limit per connection', async () => {
      const one = (value: number) =>
        sql<{ x: number }>`select ${value}::int + 1 as x /* ${sql.raw(tag)} one */`;
      expect((await one(1).execute(db)).rows).toEqual([{ x: 2 }]);
      expect(await prepared()).toEqual([]);
      expect((await one(2).execute(db)).rows).toEqual([{ x: 3 }]);
      expect((await one(3).execute(db)).rows).toEqual([{ x: 4 }]);
      const [statement] = await prepared();
      expect(statement?.name).toMatch(/^mc_/);
      expect(statement?.statement).toContain(`${tag} one`);
      expect(await prepared()).toHaveLength(1);

      // Statements without values stay unnamed (simple protocol).
      await sql.raw(`select 1 /* ${tag} no values */`).execute(db);
      await sql.raw(`select 1 /* ${tag} no values */`).execute(db);
      expect(await prepared()).toHaveLength(1);

      // Five more texts, each used twice: never more than three kept, every answer right.
      for (let i = 0; i < 5; i++) {
        for (let round = 0; round < 2; round++) {
          const { rows } = await sql<{ x: number }>`
            select ${i}::int * 10 as x /* ${sql.raw(`${tag} text ${i}`)} */`.execute(db);
          expect(rows).toEqual([{ x: i * 10 }]);
        }
        expect((await prepared()).length).toBeLessThanOrEqual(3);
      }
      expect((await prepared()).map((row) => row.statement).join()).toContain(`${tag} text 4`);
      // The evicted one is prepared again when it comes back.
      expect((await one(5).execute(db)).rows).toEqual([{ x: 6 }]);
      expect((await prepared()).map((row) => row.statement).join()).toContain(`${tag} one`);
    });

    it('answers right under concurrency, with eviction going on', async () => {
      const results = await Promise.all(
        Array.from({ length: 120 }, (_, i) =>
          sql<{ x: number }>`select ${i}::int as x /* ${sql.raw(`${tag} parallel ${i % 6}`)} */`
            .execute(db)
            .then(({ rows }) => rows[0]!.x),
        ),
      );
      expect(results).toEqual(Array.from({ length: 120 }, (_, i) => i));
      expect((await prepared()).length).toBeLessThanOrEqual(3);
    });

    it('a result type changed by a migration: sent again outside a transaction, one failed transaction inside', async () => {
      const byId = (id: number) => sql<Record<string, number>>`
        select * from ${sql.table(table)} where id = ${id} /* ${sql.raw(tag)} by id */`;
      expect((await byId(1).execute(db)).rows).toEqual([{ id: 1, a: 10 }]);
      expect((await byId(1).execute(db)).rows).toEqual([{ id: 1, a: 10 }]);
      expect((await prepared()).map((row) => row.statement).join()).toContain('by id');

      await sql.raw(`alter table ${table} add column b int default 7`).execute(db);
      // Outside a transaction: refused before it ran (0A000), sent again unnamed: the caller sees the new row.
      expect((await byId(2).execute(db)).rows).toEqual([{ id: 2, a: 20, b: 7 }]);
      // Prepared afresh (the connection deallocated what it had, when idle).
      expect((await byId(2).execute(db)).rows).toEqual([{ id: 2, a: 20, b: 7 }]);
      expect((await prepared()).map((row) => row.statement).join()).toContain('by id');

      await sql.raw(`alter table ${table} add column c int default 8`).execute(db);
      // Inside a transaction the refusal goes up (the transaction is lost; nothing ran)…
      const failed = await db
        .transaction()
        .execute((trx) => byId(1).execute(trx))
        .catch((error: unknown) => error);
      expect(failed).toMatchObject({ code: '0A000' });
      // …and the next transaction works.
      const rows = await db.transaction().execute(async (trx) => (await byId(1).execute(trx)).rows);
      expect(rows).toEqual([{ id: 1, a: 10, b: 7, c: 8 }]);
    });

    it('statements deallocated behind its back (DISCARD ALL): sent again, prepared again', async () => {
      const plusTwo = (value: number) =>
        sql<{ x: number }>`select ${value}::int + 2 as x /* ${sql.raw(tag)} discard */`;
      await plusTwo(1).execute(db);
      await plusTwo(1).execute(db);
      expect((await prepared()).map((row) => row.statement).join()).toContain('discard');
      await sql.raw('discard all').execute(db);
      expect(await prepared()).toEqual([]);
      expect((await plusTwo(2).execute(db)).rows).toEqual([{ x: 4 }]);
      expect((await plusTwo(3).execute(db)).rows).toEqual([{ x: 5 }]);
      expect((await prepared()).map((row) => row.statement).join()).toContain('discard');
    });
  });
});
