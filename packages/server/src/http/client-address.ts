import { isIP, isIPv6 } from 'node:net';
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

/** The eight 16-bit groups of an IPv6 address (a zone dropped; an IPv4 tail as two groups). */
function ipv6Groups(address: string): number[] | undefined {
  let text = address.toLowerCase().replace(/%.*$/, '');
  const tail = /(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (tail) {
    const [a, b, c, d] = tail.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, tail.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', rest] = text.split('::');
  const before = head ? head.split(':') : [];
  const after = rest === undefined ? undefined : rest ? rest.split(':') : [];
  const groups =
    after === undefined
      ? before
      : [...before, ...Array(8 - before.length - after.length).fill('0'), ...after];
  return groups.length === 8 ? groups.map((group) => Number.parseInt(group, 16)) : undefined;
}

/**
 * Who a per-client limit counts: an IPv4 address, but an IPv6 client by its /64 — one subscriber's network,
 * inside which it may take a new address for every request — and an IPv4-mapped address as its IPv4 one.
 */
export function clientNetworkOf(address: string): string {
  if (!isIPv6(address)) return address;
  const groups = ipv6Groups(address);
  if (!groups) return address;
  const [g6 = 0, g7 = 0] = groups.slice(6);
  if (groups.slice(0, 5).every((group) => group === 0) && groups[5] === 0xffff)
    return `${g6 >> 8}.${g6 & 255}.${g7 >> 8}.${g7 & 255}`;
  return `${groups
    .slice(0, 4)
    .map((group) => group.toString(16))
    .join(':')}::/64`;
}
