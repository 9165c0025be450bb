import { z } from 'zod';
import { transactionView } from './views.ts';

/**
 * Response bodies of the history reads (issue 18), as views.ts does for the rest: each is checked at compile
 * time against its procedure's output (routes.ts).
 */
const credits = z.int();
const timestamp = z.date();

export const balanceAtView = z.object({
  balance: credits.describe('Owned at `at` (holds included): balance after the last entry at or before it'),
  at: timestamp,
  lastTransactionId: z.uuid().nullable().describe('That entry; null before the first entry'),
});

const point = {
  start: timestamp.describe('Start of the UTC hour, day or month'),
  credits: credits.describe('Credits spent (usage entries; refunds are entries of their own)'),
  count: z.int().describe('Number of usage entries'),
};
const appIdOfGroup = z
  .string()
  .nullable()
  .optional()
  .describe('With groupBy=app (null: usage without an app)');
const userIdOfGroup = z.string().optional().describe('With groupBy=user or groupBy=member');

export const usageSeries = z.object({
  series: z
    .array(z.object({ ...point, appId: appIdOfGroup }))
    .describe('Buckets with usage, by start then group'),
});

export const groupedUsageSeries = z.object({
  series: z
    .array(z.object({ ...point, appId: appIdOfGroup, userId: userIdOfGroup }))
    .describe('Buckets with usage, by start then group; grouped: the `limit` groups that spent the most'),
});

export const statementPageView = z.object({
  from: timestamp,
  to: timestamp,
  openingBalance: credits.describe('Before `from`'),
  closingBalance: credits.describe('Before `to`: opening balance + every entry of [from, to)'),
  items: z.array(transactionView).describe('Entries of [from, to), oldest first'),
  nextCursor: z.uuid().nullable().describe('Pass as `cursor` for the next page; null on the last page'),
});
