import { createServer } from 'node:net';
import { createDb, type DbHandle } from '@mana-credits/db';
import { sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InsufficientCreditsError, ServiceUnavailableError } from '../src/domain/errors.ts';
import {
  certainlyNotCommitted,
  certainOrUnknown,
  isConnectionFailure,
  OutcomeUnknownError,
} from '../src/domain/outcome.ts';
import { createTestDatabase } from './helpers/database.ts';

/** What node-pg throws for an ErrorResponse: a DatabaseError with the response's fields. */
function pgError(severity: string, code: string, message = 'x'): Error {
  const error = new pg.DatabaseError(message, 0, 'error');
  Object.assign(error, { severity, code });
  return error;
}

/** The error a real query fails with (PGlite, or Postgres when DATABASE_URL is set). */
async function queryError(handle: DbHandle, query: ReturnType<typeof sql>): Promise<unknown> {
  return query.execute(handle.db).then(
    () => {
      throw new Error('expected the query to fail');
    },
    (error: unknown) => error,
  );
}

/** What node-pg throws when connecting to `port` fails. */
async function connectError(port: number): Promise<unknown> {
  const client = new pg.Client({
    host: '127.0.0.1',
    port,
    user: 'x',
    database: 'x',
    connectionTimeoutMillis: 2000,
  });
  client.on('error', () => {});
  return client.connect().then(
    async () => {
      await client.end();
      throw new Error('expected the connection to fail');
    },
    (error: unknown) => error,
  );
}

let handle: DbHandle;
beforeAll(async () => {
  handle = await createDb(
    process.env.DATABASE_URL
      ? { databaseUrl: process.env.DATABASE_URL, poolSize: 1 }
      : { dataDir: 'memory://', pgliteSnapshot: (await createTestDatabase({ empty: true })).pgliteSnapshot },
  );
});
afterAll(async () => {
  await handle.close();
});

describe('certainlyNotCommitted: only a proven rollback may be run again', () => {
  it('a Postgres error response of severity ERROR is certain (the statement was rolled back)', async () => {
    for (const query of [
      sql`select 1 / 0`,
      sql`select 'x'::int4`,
      sql`do $$ begin raise exception 'refused'; end $$`,
      sql`select * from no_such_table`,
    ]) {
      const error = await queryError(handle, query);
      expect(error).toMatchObject({ severity: 'ERROR' });
      expect(certainlyNotCommitted(error)).toBe(true);
      expect(isConnectionFailure(error)).toBe(false);
    }
    for (const code of ['23505', '23514', '40P01', '40001', '22003', 'P0001', '57014']) {
      expect(certainlyNotCommitted(pgError('ERROR', code)), code).toBe(true);
    }
  });

  it('a domain refusal is certain; an unknown outcome is not', () => {
    expect(certainlyNotCommitted(new InsufficientCreditsError(5, 1))).toBe(true);
    expect(certainlyNotCommitted(new ServiceUnavailableError('auth down'))).toBe(true);
    expect(certainlyNotCommitted(new OutcomeUnknownError(new Error('Connection terminated')))).toBe(false);
  });

  it('FATAL and PANIC are unknown (57P01 admin_shutdown can follow a commit), as are errors without a SQLSTATE', () => {
    for (const error of [
      pgError('FATAL', '57P01', 'terminating connection due to administrator command'),
      pgError('PANIC', 'XX000'),
      pgError('FATAL', '08006'),
      new Error('Connection terminated unexpectedly'),
      Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }),
      new Error('timeout exceeded when trying to connect'),
      new TypeError('cannot read properties of undefined'),
      { code: '23505' },
      'a string',
      null,
      undefined,
    ]) {
      expect(certainlyNotCommitted(error), String((error as Error)?.message ?? error)).toBe(false);
    }
  });

  it('real connection failures of node-pg are unknown and read as connection failures', async () => {
    // Nothing listens: ECONNREFUSED.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const { port: closedPort } = probe.address() as { port: number };
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    // Accepts and hangs up at once: "Connection terminated unexpectedly".
    const hangUp = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => hangUp.listen(0, '127.0.0.1', resolve));
    const { port: hangUpPort } = hangUp.address() as { port: number };
    try {
      for (const error of [await connectError(closedPort), await connectError(hangUpPort)]) {
        expect(certainlyNotCommitted(error)).toBe(false);
        expect(isConnectionFailure(error)).toBe(true);
      }
    } finally {
      await new Promise<void>((resolve) => hangUp.close(() => resolve()));
    }
  });
});

describe('isConnectionFailure: what answers 503 instead of 500', () => {
  it('reads network errors, node-pg connection messages, FATAL/PANIC, SQLSTATE classes 08 and 57P, and 25006', () => {
    for (const error of [
      Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }),
      new Error('Connection terminated unexpectedly'),
      new Error('Client has encountered a connection error and is not queryable'),
      new Error('Client was closed and is not queryable'),
      new Error('timeout exceeded when trying to connect'),
      pgError('FATAL', '57P01'),
      pgError('FATAL', '53300'),
      pgError('ERROR', '25006', 'cannot execute INSERT in a read-only transaction'),
    ]) {
      expect(isConnectionFailure(error), error.message).toBe(true);
    }
    for (const error of [
      pgError('ERROR', '23505'),
      pgError('ERROR', '57014'),
      new Error('something else'),
      // Not ours to read: e.g. a failed fetch to another service, whose cause is a socket error.
      new TypeError('fetch failed', { cause: Object.assign(new Error('x'), { code: 'ECONNREFUSED' }) }),
      new TypeError('x is undefined'),
      Object.assign(new Error('Connection terminated'), { code: 'SOMETHING' }),
    ]) {
      expect(isConnectionFailure(error), error.message).toBe(false);
    }
  });

  it('certainOrUnknown keeps a certain error and wraps anything else, keeping the cause', () => {
    const refused = pgError('ERROR', '23505');
    expect(certainOrUnknown(refused)).toBe(refused);
    const lost = new Error('Connection terminated unexpectedly');
    const unknown = certainOrUnknown(lost);
    expect(unknown).toBeInstanceOf(OutcomeUnknownError);
    expect((unknown as OutcomeUnknownError).cause).toBe(lost);
    expect((unknown as OutcomeUnknownError).reason).toBe('OUTCOME_UNKNOWN');
    expect(certainOrUnknown(unknown)).toBe(unknown);
  });
});
