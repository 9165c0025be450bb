import { z } from 'zod';
import { checkBuckets, checkRange, granularity, instant } from '../../domain/history/range.ts';
import { appId, guildId, userId, uuid } from '../../schemas.ts';

/**
 * Inputs of the history reads (issue 18): instants are Dates (tRPC) or ISO 8601 date-times with a zone (REST);
 * ranges are [from, to) with from < to; a usage range spans at most MAX_BUCKETS buckets, refused naming `to`.
 */

/** How many groups a grouped usage answer keeps: those that spent the most in the range. */
const groupLimit = z.int().min(1).max(1000).default(100);

export const balanceAtInput = z.strictObject({ at: instant });

export const usageInput = z
  .strictObject({ from: instant, to: instant, granularity, groupBy: z.enum(['app']).optional() })
  .superRefine(checkBuckets);

export const guildUsageInput = z
  .strictObject({
    guildId,
    from: instant,
    to: instant,
    granularity,
    groupBy: z.enum(['member', 'app']).optional(),
    limit: groupLimit,
  })
  .superRefine(checkBuckets);

export const internalUsageInput = z
  .strictObject({
    from: instant,
    to: instant,
    granularity,
    groupBy: z.enum(['app', 'user']).optional(),
    appId: appId.optional(),
    limit: groupLimit,
  })
  .superRefine(checkBuckets);

const statementFields = {
  from: instant,
  to: instant,
  limit: z.int().min(1).max(1000).default(100),
  cursor: uuid.optional(),
};

export const statementInput = z.strictObject(statementFields).superRefine(checkRange);

export const internalStatementInput = z.strictObject({ userId, ...statementFields }).superRefine(checkRange);

export const internalBalanceAtInput = z.strictObject({ userId, at: instant });
