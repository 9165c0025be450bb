import { isIP } from 'node:net';
import type { FastifyRequest } from 'fastify';

/**
 * The client's address, the key of per-address limits. With TRUST_PROXY, Fastify's request.ip is whatever the
 * trusted hop's X-Forwarded-For says, which a client can fill with anything of any length; what is not an IP
 * address counts as the connection's own address (the proxy's) instead.
 */
export function clientAddressOf(request: FastifyRequest): string {
  if (isIP(request.ip)) return request.ip;
  return request.socket.remoteAddress ?? 'unknown';
}
