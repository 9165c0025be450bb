/**
 * A refusal of the service in its REST error shape (4xx/5xx with { error: { message, reason, … } }): from the
 * statement CSV, or from a request the service refused before tRPC saw it (a body over the limit, a URL it
 * cannot read). Carries the same reason as a tRPC error would.
 */
export class CreditsRequestError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly reason: string,
    readonly details: unknown,
    readonly requestId: string | undefined,
    /** The answer's Retry-After in milliseconds, when it had one. */
    readonly retryAfterMs?: number | undefined,
  ) {
    super(message);
    this.name = 'CreditsRequestError';
  }
}
