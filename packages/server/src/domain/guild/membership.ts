import { z } from 'zod';
import { ForbiddenError, ServiceUnavailableError } from '../errors.ts';

export type GuildRole = 'owner' | 'admin' | 'member';

/** Who may do what in a guild. */
export const ANY_MEMBER: readonly GuildRole[] = ['owner', 'admin', 'member'];
export const MANAGERS: readonly GuildRole[] = ['owner', 'admin'];

export interface MembershipClient {
  /** The user's role in the guild, or null when not a member. Throws SERVICE_UNAVAILABLE when unsure. */
  roleOf(guildId: string, userId: string): Promise<GuildRole | null>;
}

export interface MembershipClientOptions {
  authUrl: string | undefined;
  serviceKey: string | undefined;
  /** 0 disables the cache. */
  cacheSeconds: number;
  timeoutMs?: number;
  maxCacheEntries?: number;
  now?: () => number;
}

const answerSchema = z.union([
  z.object({ isMember: z.literal(true), role: z.enum(['owner', 'admin', 'member']) }),
  z.object({ isMember: z.literal(false) }),
]);

const isDotSegment = (id: string) => id === '.' || id === '..';

const unavailable = (cause?: unknown) =>
  new ServiceUnavailableError(
    'Guild membership cannot be checked right now; try again shortly',
    'MEMBERSHIP_UNAVAILABLE',
    { cause },
  );

/**
 * Asks the auth service who is in a guild. Fails closed: anything but a well-formed answer is
 * SERVICE_UNAVAILABLE, never access. Answers (members and non-members alike) are cached briefly; failures
 * never are. While the cache is on, concurrent questions about one pair share one request.
 */
export function createMembershipClient(options: MembershipClientOptions): MembershipClient {
  const timeoutMs = options.timeoutMs ?? 5000;
  const maxEntries = options.maxCacheEntries ?? 10_000;
  const now = options.now ?? Date.now;
  const ttlMs = options.cacheSeconds * 1000;
  const cache = new Map<string, { expiresAt: number; answer: Promise<GuildRole | null> }>();

  async function ask(guildId: string, userId: string): Promise<GuildRole | null> {
    // Input ids are validated (schemas.ts, isPathSafeId); a token subject is not. encodeURIComponent keeps
    // "/", "?", "#", "%" and spaces inside their segment, but not a dot segment: "." or ".." would be resolved
    // away by the URL parser and the request would name another resource. Such an id names no member.
    if (isDotSegment(guildId) || isDotSegment(userId)) return null;
    if (!options.authUrl || !options.serviceKey) throw unavailable();
    const url = `${options.authUrl}/api/v1/internal/org/${encodeURIComponent(guildId)}/member/${encodeURIComponent(userId)}`;
    let body: unknown;
    try {
      const response = await fetch(url, {
        headers: { 'x-service-key': options.serviceKey, accept: 'application/json' },
        // Never followed: fetch keeps custom headers across origins, so the service key would go wherever a
        // redirect pointed, and that origin's answer would decide who is a member.
        redirect: 'manual',
        signal: AbortSignal.timeout(timeoutMs),
      });
      if (response.status !== 200) {
        await response.body?.cancel();
        throw new Error(`auth service answered ${response.status}`);
      }
      body = await response.json();
    } catch (error) {
      throw unavailable(error);
    }
    const parsed = answerSchema.safeParse(body);
    if (!parsed.success) throw unavailable(parsed.error);
    return parsed.data.isMember ? parsed.data.role : null;
  }

  function remember(key: string, answer: Promise<GuildRole | null>) {
    if (cache.size >= maxEntries) {
      const at = now();
      for (const [oldKey, entry] of cache) if (entry.expiresAt <= at) cache.delete(oldKey);
      // Still full: drop the oldest entry (a Map iterates in insertion order).
      if (cache.size >= maxEntries) cache.delete(cache.keys().next().value as string);
    }
    cache.set(key, { expiresAt: now() + ttlMs, answer });
    answer.catch(() => {
      if (cache.get(key)?.answer === answer) cache.delete(key);
    });
  }

  return {
    roleOf(guildId, userId) {
      if (ttlMs === 0) return ask(guildId, userId);
      const key = JSON.stringify([guildId, userId]);
      const cached = cache.get(key);
      if (cached && cached.expiresAt > now()) return cached.answer;
      if (cached) cache.delete(key);
      const answer = ask(guildId, userId);
      remember(key, answer);
      return answer;
    },
  };
}

/** The caller's role when it is one of `allowed`; FORBIDDEN otherwise. */
export async function requireRole(
  membership: MembershipClient,
  guildId: string,
  userId: string,
  allowed: readonly GuildRole[] = ANY_MEMBER,
): Promise<GuildRole> {
  const role = await membership.roleOf(guildId, userId);
  if (!role) throw new ForbiddenError('You are not a member of this guild', 'NOT_A_GUILD_MEMBER');
  if (!allowed.includes(role)) {
    throw new ForbiddenError('Only guild owners and admins may do this', 'GUILD_ROLE_REQUIRED');
  }
  return role;
}
