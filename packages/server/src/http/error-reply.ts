import type { FastifyReply, FastifyRequest } from 'fastify';

/** What every error answer outside tRPC's own envelope says: the one error body of the REST surface. */
export interface ErrorBody {
  message: string;
  /** A stable, machine-readable code (INSUFFICIENT_CREDITS, VALIDATION, …). */
  reason: string;
  details?: unknown;
}

/**
 * Answers `status` with `{ error: { message, reason, details?, requestId } }`: the shape of every REST,
 * webhook, metrics and Fastify-level error, so a caller parses one body wherever it fails.
 */
export function sendError(request: FastifyRequest, reply: FastifyReply, status: number, error: ErrorBody) {
  const { message, reason, details } = error;
  return reply.status(status).send({
    error: { message, reason, ...(details === undefined ? {} : { details }), requestId: request.id },
  });
}
