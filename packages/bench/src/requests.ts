import { randomBytes } from 'node:crypto';

/** What one load step sends; shared by the load process and the orchestrator's probe. */
export type LoadKind =
  | 'noop'
  | 'internal-use'
  | 'internal-use-lots'
  | 'user-use'
  | 'hot-user'
  | 'hot-user-lots'
  | 'hot-guild'
  | 'use-batch';

export interface LoadTarget {
  kind: LoadKind;
  serviceKey: string;
  /** Users of the seeded population are '1' … String(users). */
  users: number;
  hotUserId: string;
  /** Users 'lots-1' … `lots-${lotsUsers}` have ten lots each, as does the hot user `hotLotsUserId`. */
  lotsUsers: number;
  hotLotsUserId: string;
  guildId: string;
  guildMembers: readonly string[];
  /** Bearer tokens of the user-use step, one per user (user i+1 ↔ tokens[i]). */
  tokens?: readonly string[];
  batchSize: number;
}

export interface BenchRequest {
  headers: Record<string, string>;
  body: string;
}

export interface RequestFactory {
  /** tRPC path, e.g. /trpc/internal.credits.use */
  path: string;
  /** Debits one response stands for (the batch size for useBatch, else 1). */
  debitsPerRequest: number;
  next(): BenchRequest;
}

const APP_ID = 'bench';
const DESCRIPTION = 'bench call';

/** A tRPC (superjson) mutation body: plain JSON values need no superjson meta. */
const trpcBody = (input: unknown) => JSON.stringify({ json: input });

/** Unique idempotency keys: a random prefix per process, then a counter. */
function keySource(): () => string {
  const prefix = randomBytes(6).toString('hex');
  let counter = 0;
  return () => `${prefix}-${++counter}`;
}

export function requestFactory(target: LoadTarget): RequestFactory {
  const nextKey = keySource();
  const randomUser = () => String(1 + Math.floor(Math.random() * target.users));
  const internalHeaders = {
    'content-type': 'application/json',
    'x-service-key': target.serviceKey,
    'x-app-id': APP_ID,
  };
  const use = (userId: string, extra: Record<string, unknown> = {}) => ({
    userId,
    amount: 1,
    appId: APP_ID,
    description: DESCRIPTION,
    idempotencyKey: nextKey(),
    ...extra,
  });
  const fixed = (path: string, next: () => BenchRequest, debitsPerRequest = 1): RequestFactory => ({
    path,
    debitsPerRequest,
    next,
  });

  switch (target.kind) {
    case 'noop':
      // The same body as a use, so the transport carries the same bytes; the procedure ignores it.
      return fixed('/trpc/bench.noop', () => ({
        headers: internalHeaders,
        body: trpcBody(use(randomUser())),
      }));
    case 'internal-use':
      return fixed('/trpc/internal.credits.use', () => ({
        headers: internalHeaders,
        body: trpcBody(use(randomUser())),
      }));
    case 'internal-use-lots':
      return fixed('/trpc/internal.credits.use', () => ({
        headers: internalHeaders,
        body: trpcBody(use(`lots-${1 + Math.floor(Math.random() * target.lotsUsers)}`)),
      }));
    case 'hot-user':
      return fixed('/trpc/internal.credits.use', () => ({
        headers: internalHeaders,
        body: trpcBody(use(target.hotUserId)),
      }));
    case 'hot-user-lots':
      return fixed('/trpc/internal.credits.use', () => ({
        headers: internalHeaders,
        body: trpcBody(use(target.hotLotsUserId)),
      }));
    case 'hot-guild': {
      const members = target.guildMembers;
      return fixed('/trpc/internal.credits.use', () => ({
        headers: internalHeaders,
        body: trpcBody(
          use(members[Math.floor(Math.random() * members.length)]!, { guildId: target.guildId }),
        ),
      }));
    }
    case 'user-use': {
      const tokens = target.tokens ?? [];
      if (tokens.length === 0) throw new Error('user-use needs tokens');
      return fixed('/trpc/credits.use', () => {
        const { userId: _, ...input } = use('');
        return {
          headers: {
            'content-type': 'application/json',
            authorization: `Bearer ${tokens[Math.floor(Math.random() * tokens.length)]}`,
          },
          body: trpcBody(input),
        };
      });
    }
    case 'use-batch':
      return fixed(
        '/trpc/internal.credits.useBatch',
        () => ({
          headers: internalHeaders,
          body: trpcBody({ items: Array.from({ length: target.batchSize }, () => use(randomUser())) }),
        }),
        target.batchSize,
      );
  }
}
