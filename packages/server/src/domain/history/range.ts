import { z } from 'zod';

/**
 * Time ranges of the history reads: instants, half-open ranges [from, to) and UTC buckets. Pure: the bucket
 * arithmetic here is the one the input schemas bound and the tests check; Postgres buckets the rows
 * (date_trunc … 'UTC') the same way.
 */

export const GRANULARITIES = ['hour', 'day', 'month'] as const;
export type Granularity = (typeof GRANULARITIES)[number];

/** The most buckets one usage call may span: 1,000 hours (~41 days), days (~2.7 years) or months. */
export const MAX_BUCKETS = 1000;

const EARLIEST = Date.UTC(1970, 0, 1);
const LATEST = Date.UTC(10_000, 0, 1);
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

/** The start of the UTC bucket that holds `instant`. */
export function bucketStart(instant: Date, granularity: Granularity): Date {
  const t = instant.getTime();
  if (granularity === 'hour') return new Date(t - (((t % HOUR) + HOUR) % HOUR));
  if (granularity === 'day') return new Date(t - (((t % DAY) + DAY) % DAY));
  return new Date(Date.UTC(instant.getUTCFullYear(), instant.getUTCMonth(), 1));
}

/** How many buckets [from, to) touches (from < to): the partly covered first and last ones included. */
export function bucketCount(from: Date, to: Date, granularity: Granularity): number {
  const first = bucketStart(from, granularity);
  const last = bucketStart(new Date(to.getTime() - 1), granularity);
  if (granularity === 'month') {
    return (
      (last.getUTCFullYear() - first.getUTCFullYear()) * 12 + (last.getUTCMonth() - first.getUTCMonth()) + 1
    );
  }
  return (last.getTime() - first.getTime()) / (granularity === 'hour' ? HOUR : DAY) + 1;
}

const INSTANT_MESSAGE = 'must be an ISO 8601 date-time with a time zone, e.g. 2026-01-31T00:00:00Z';

/**
 * An instant: a Date (tRPC with superjson) or an ISO 8601 date-time with `Z` or an offset (REST, JSON),
 * between 1970 and 9999.
 */
export const instant = z
  .union([z.date(), z.iso.datetime({ offset: true, error: INSTANT_MESSAGE })], { error: INSTANT_MESSAGE })
  .transform((value) => new Date(value))
  .refine((value) => value.getTime() >= EARLIEST && value.getTime() < LATEST, {
    error: 'must be between 1970-01-01 and 9999-12-31',
  });

export const granularity = z.enum(GRANULARITIES);

/** Both ends parsed: a range check after a field's own refusal would only add noise (or fail). */
const parsed = (value: { from: unknown; to: unknown }) =>
  value.from instanceof Date && value.to instanceof Date;

/** [from, to): `from` must come before `to`. */
export function checkRange(value: { from: Date; to: Date }, ctx: z.RefinementCtx) {
  if (!parsed(value)) return;
  if (value.from.getTime() >= value.to.getTime()) {
    ctx.addIssue({ code: 'custom', path: ['to'], message: 'must be after from' });
  }
}

/** [from, to) in buckets of `granularity`: at most MAX_BUCKETS of them. */
export function checkBuckets(
  value: { from: Date; to: Date; granularity: Granularity },
  ctx: z.RefinementCtx,
) {
  if (!parsed(value) || !GRANULARITIES.includes(value.granularity)) return;
  if (value.from.getTime() >= value.to.getTime()) return checkRange(value, ctx);
  const count = bucketCount(value.from, value.to, value.granularity);
  if (count > MAX_BUCKETS) {
    ctx.addIssue({
      code: 'custom',
      path: ['to'],
      message: `the range spans ${count} ${value.granularity} buckets; at most ${MAX_BUCKETS}: shorten it or choose a coarser granularity`,
    });
  }
}
