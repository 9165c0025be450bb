import { isIP } from 'node:net';
import type { FastifyRequest } from 'fastify';

/** An address as some proxies forward it: with a port ("203.0.113.7:51234") or bracketed ("[2001:db8::1]:443"). */
const WITH_PORT = /^(?:\[([0-9A-Fa-f:.]+)\]|(\d{1,3}(?:\.\d{1,3}){3}))(?::\d{1,5})?$/;

/**
 * The client's address, the key of per-address limits. With TRUST_PROXY, Fastify's request.ip is whatever the
 * trusted hop's X-Forwarded-For says: an address, an address with a port (Azure, IIS ARR), or anything a
 * client wrote, of any length. What is not an address counts as the connection's own address (the proxy's).
 */
export function clientAddressOf(request: FastifyRequest): string {
  const forwarded = request.ip;
  if (isIP(forwarded)) return forwarded;
  const match = WITH_PORT.exec(forwarded);
  const address = match?.[1] ?? match?.[2];
  if (address && isIP(address)) return address;
  return request.socket.remoteAddress ?? 'unknown';
}
