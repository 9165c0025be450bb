import {
  allUsage,
  type Database,
  findGuildPool,
  guildUsage,
  type UsageBucketRow,
  type UsageQuery,
  userUsage,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { poolNotFound } from '../guild/limits.ts';
import { MANAGERS, type MembershipClient, requireRole } from '../guild/membership.ts';

/**
 * Usage over time, in UTC buckets: gross credits spent (−Σ amount of `usage` ledger entries) and the number
 * of entries per bucket. Refunds are entries of their own (see the statement) and do not lower the usage
 * they refund, so a past bucket never changes. Buckets without usage are left out; the series is ordered by
 * start, then group.
 */
export interface UsagePoint {
  start: Date;
  credits: number;
  count: number;
}

const point = (row: UsageBucketRow): UsagePoint => ({
  start: row.start,
  credits: row.credits,
  count: row.entries,
});

/** credits.usage: the caller's own usage, optionally per app. */
export async function myUsage(
  db: Kysely<Database>,
  userId: string,
  query: UsageQuery & { groupBy?: 'app' | undefined },
): Promise<{ series: (UsagePoint & { appId?: string | null })[] }> {
  const rows = await userUsage(db, userId, query);
  return {
    series: rows.map((row) => (query.groupBy === 'app' ? { ...point(row), appId: row.group } : point(row))),
  };
}

/** internal.usage: everyone's usage (or one app's), optionally per app or per user (the top spenders). */
export async function serviceUsage(
  db: Kysely<Database>,
  query: UsageQuery & { groupBy?: 'app' | 'user' | undefined; appId?: string | undefined },
): Promise<{ series: (UsagePoint & { appId?: string | null; userId?: string })[] }> {
  const rows = await allUsage(db, query);
  return {
    series: rows.map((row) => {
      if (query.groupBy === 'app') return { ...point(row), appId: row.group };
      if (query.groupBy === 'user') return { ...point(row), userId: row.group ?? '' };
      return point(row);
    }),
  };
}

/** guild.usage: a pool's usage, optionally per member or per app; owners and admins only. */
export async function poolUsage(
  deps: { db: Kysely<Database>; membership: MembershipClient },
  actorId: string,
  query: UsageQuery & { guildId: string; groupBy?: 'member' | 'app' | undefined },
): Promise<{ series: (UsagePoint & { appId?: string | null; userId?: string })[] }> {
  await requireRole(deps.membership, query.guildId, actorId, MANAGERS);
  if (!(await findGuildPool(deps.db, query.guildId))) throw poolNotFound();
  const rows = await guildUsage(deps.db, query.guildId, query);
  return {
    series: rows.map((row) => {
      if (query.groupBy === 'app') return { ...point(row), appId: row.group };
      if (query.groupBy === 'member') return { ...point(row), userId: row.group ?? '' };
      return point(row);
    }),
  };
}
