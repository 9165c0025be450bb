export type {
  AppRouter,
  EventEnvelope,
  EventType,
  RouterInputs,
  RouterOutputs,
} from '@mana-credits/server/router';
export {
  AccountChangedError,
  type CreditsClient,
  type CreditsClientOptions,
  createCreditsClient,
  createInternalCreditsClient,
  type InternalCreditsClient,
  type InternalCreditsClientOptions,
} from './clients.ts';
export {
  type CreditsClientError,
  type CreditsErrorWith,
  creditsErrorReason,
  creditsRequestId,
  type IdempotencyConflictError,
  type InsufficientCreditsDetails,
  type InsufficientCreditsError,
  isIdempotencyConflict,
  isInsufficientCredits,
  isLimitExceeded,
  isOutcomeUnknown,
  isUnauthorized,
  type LimitExceededDetails,
  type LimitExceededError,
  mayHaveTakenEffect,
  type UnauthorizedError,
} from './errors.ts';
export { CreditsRequestError } from './request-error.ts';
export type { RetryOptions } from './retry.ts';
export {
  fetchInternalStatementCsv,
  fetchStatementCsv,
  type StatementRange,
} from './statement.ts';
export { CreditsTransportError } from './transport.ts';
