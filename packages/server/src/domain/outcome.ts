import { DomainError } from './errors.ts';

/**
 * The unknown-outcome rule (issue 13). A call that failed may still have committed: Postgres can commit and
 * then lose the connection before the answer arrives. Such work must never be run again as if nothing was
 * written; only keyed work may be repeated, because its unique index turns a repeat into a replay.
 *
 * - Certain (nothing was committed, a fallback or retry may run it again): a DomainError (a refusal we
 *   raised ourselves), or a Postgres error response of severity ERROR with a SQLSTATE (23505, 40P01, 22xxx,
 *   P0001, …): Postgres rolled back the statement and its transaction.
 * - Unknown (everything else): a lost, reset, refused or timed-out connection, FATAL or PANIC (57P01
 *   admin_shutdown can arrive after a commit), an error without a SQLSTATE, a JS error after the query ran.
 *   It is answered with OutcomeUnknownError (or, for a bare lost connection, mapped to it in trpc/init.ts).
 *
 * A localised server (lc_messages ≠ English) reports a translated severity; its errors then count as
 * unknown, which is safe (no fallback, the caller is told to retry with its key).
 */
export function certainlyNotCommitted(error: unknown): boolean {
  if (error instanceof OutcomeUnknownError) return false;
  if (error instanceof DomainError) return true;
  if (typeof error !== 'object' || error === null) return false;
  const { severity, code } = error as { severity?: unknown; code?: unknown };
  return severity === 'ERROR' && typeof code === 'string' && SQLSTATE.test(code);
}

const SQLSTATE = /^[0-9A-Z]{5}$/;

/** read_only_sql_transaction. */
const READ_ONLY = '25006';

/** Socket errors of Node (error.code) that mean the database could not be reached or the link broke. */
const NETWORK_ERRNOS = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

/** What node-pg and pg-pool say (without any code) when a connection is lost, closed or never made. */
const PG_CONNECTION_MESSAGES =
  /^(Connection terminated|Client has encountered a connection error|Client was closed and is not queryable|timeout exceeded when trying to connect|Query read timeout|timeout expired)/;

/**
 * True when `error` says the database connection failed (rather than Postgres refusing a statement, or a
 * bug): a network error, node-pg's connection messages, a FATAL/PANIC response, SQLSTATE class 08
 * (connection exception) or 57P (shutdown, crash, cannot connect now), or 25006 (read_only_sql_transaction:
 * the connection is on a standby, the old primary after a failover; the pool drops it and finds the new
 * one). Such errors answer 503, never 500.
 */
export function isConnectionFailure(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const { code, severity } = error as { code?: unknown; severity?: unknown };
  if (severity === 'FATAL' || severity === 'PANIC') return true;
  if (typeof code === 'string') {
    if (NETWORK_ERRNOS.has(code)) return true;
    if (SQLSTATE.test(code)) return code.startsWith('08') || code.startsWith('57P') || code === READ_ONLY;
  }
  return code === undefined && PG_CONNECTION_MESSAGES.test(error.message);
}

/**
 * The call may or may not have taken effect. Retryable (503): a caller that sent an idempotency key retries
 * with the same key and gets the first result if it was applied; a caller without one cannot know.
 */
export class OutcomeUnknownError extends DomainError {
  constructor(cause: unknown) {
    super(
      'unavailable',
      'OUTCOME_UNKNOWN',
      'The connection to the database was lost; this call may or may not have taken effect. Retry it with the same idempotency key (a call without one cannot be checked: look at the balance or transactions first)',
      undefined,
      { cause },
    );
  }
}

/** The database cannot be reached for a call that writes nothing: retry later. */
export class DatabaseUnavailableError extends DomainError {
  constructor(cause: unknown) {
    super(
      'unavailable',
      'DATABASE_UNAVAILABLE',
      'The database is unavailable, try again shortly',
      undefined,
      {
        cause,
      },
    );
  }
}

/** `error` when it is certain (nothing was written), otherwise an OutcomeUnknownError carrying it. */
export function certainOrUnknown(error: unknown): unknown {
  return certainlyNotCommitted(error) || error instanceof OutcomeUnknownError
    ? error
    : new OutcomeUnknownError(error);
}
