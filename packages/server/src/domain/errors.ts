/**
 * Domain errors: small, transport-free, each with a stable machine-readable `reason`. The tRPC layer and the
 * REST layer map `kind` to their own status codes in one place each.
 */
export type DomainErrorKind =
  | 'bad_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'conflict'
  | 'payment_required'
  | 'precondition_failed'
  | 'too_many_requests'
  | 'unavailable';

export type ErrorDetails = Record<string, unknown>;

export class DomainError extends Error {
  constructor(
    readonly kind: DomainErrorKind,
    readonly reason: string,
    message: string,
    readonly details?: ErrorDetails,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'DomainError';
  }
}

export class InsufficientCreditsError extends DomainError {
  constructor(required: number, available: number, reason = 'INSUFFICIENT_CREDITS') {
    super('payment_required', reason, `Insufficient credits: ${required} required, ${available} available`, {
      required,
      available,
    });
  }
}

export class IdempotencyConflictError extends DomainError {
  constructor() {
    super(
      'conflict',
      'IDEMPOTENCY_CONFLICT',
      'This idempotency key was already used with a different request',
    );
  }
}

export class NotFoundError extends DomainError {
  constructor(what: string, reason = 'NOT_FOUND') {
    super('not_found', reason, `${what} not found`);
  }
}

export class ForbiddenError extends DomainError {
  constructor(message = 'Not allowed', reason = 'FORBIDDEN') {
    super('forbidden', reason, message);
  }
}

export class InvalidRequestError extends DomainError {
  constructor(message: string, reason = 'VALIDATION', details?: ErrorDetails) {
    super('bad_request', reason, message, details);
  }
}

export class ConflictError extends DomainError {
  constructor(message: string, reason: string, details?: ErrorDetails) {
    super('conflict', reason, message, details);
  }
}

export class PreconditionFailedError extends DomainError {
  constructor(message: string, reason: string, details?: ErrorDetails) {
    super('precondition_failed', reason, message, details);
  }
}

export class TooManyRequestsError extends DomainError {
  constructor(
    message = 'Too many requests, try again later',
    reason = 'TOO_MANY_REQUESTS',
    details?: ErrorDetails,
  ) {
    super('too_many_requests', reason, message, details);
  }
}

export class ServiceUnavailableError extends DomainError {
  constructor(message: string, reason = 'SERVICE_UNAVAILABLE', options?: { cause?: unknown }) {
    super('unavailable', reason, message, undefined, options);
  }
}

/** A page cursor that names no row the listing could show: the one refusal of every paginated listing. */
export class InvalidCursorError extends InvalidRequestError {
  constructor(what: string) {
    super(`cursor: does not name ${what}`, 'INVALID_CURSOR', { field: 'cursor' });
  }
}
