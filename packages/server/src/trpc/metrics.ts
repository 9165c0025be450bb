import type { Database } from '@mana-credits/db';
import type { TRPCError } from '@trpc/server';
import type { Kysely } from 'kysely';
import { DomainError } from '../domain/errors.ts';
import { isReplayed } from '../domain/idempotency.ts';
import type { MoneyCounter } from '../metrics.ts';
import { type Context, serviceAppIdOf } from './context.ts';

/** A successful money call as the metrics see it; `input` passed the procedure's validation. */
export interface MoneyCall {
  input: unknown;
  result: unknown;
  /** The calling service's X-App-Id (validated), for procedures whose app is the caller. */
  serviceAppId: string;
  db: Kysely<Database>;
}

export interface Movement {
  amount: number | undefined;
  app: string | undefined;
}

export interface MoneyProcedure {
  counter: MoneyCounter;
  /** How many credits moved and for which app; a promise when only the posted ledger row knows. */
  measure(call: MoneyCall): Movement | Promise<Movement>;
}

const field = (value: unknown, key: string): unknown =>
  typeof value === 'object' && value !== null ? (value as Record<string, unknown>)[key] : undefined;

const amountOf = (value: unknown): number | undefined => {
  const amount = field(value, 'amount');
  return typeof amount === 'number' && Number.isSafeInteger(amount) && amount > 0 ? amount : undefined;
};

const textOf = (value: unknown, key: string): string | undefined => {
  const text = field(value, key);
  return typeof text === 'string' ? text : undefined;
};

const spentByInput = ({ input }: MoneyCall): Movement => ({
  amount: amountOf(input),
  app: textOf(input, 'appId'),
});

/** Reads amount and app from the ledger row a call posted (when the input does not say, e.g. a full refund). */
async function postedEntry({ result, db }: MoneyCall): Promise<Movement> {
  const transactionId = textOf(result, 'transactionId');
  if (!transactionId) return { amount: undefined, app: undefined };
  const row = await db
    .selectFrom('credits.transactions')
    .select(['amount', 'app_id'])
    .where('id', '=', transactionId)
    .executeTakeFirst();
  return { amount: row ? Math.abs(row.amount) : undefined, app: row?.app_id ?? undefined };
}

/**
 * Every tRPC procedure that moves credits, by path → the counter it feeds. Add a row with each new money
 * procedure (guild, gifts, reservations, …). Replays (see markReplayed) are counted as replays, never as
 * money, so a retried call is counted once. Code outside tRPC (webhooks, sweepers) uses deps.metrics directly.
 */
export const MONEY_PROCEDURES: Readonly<Record<string, MoneyProcedure>> = {
  'credits.use': { counter: 'creditsDebited', measure: spentByInput },
  'internal.credits.use': { counter: 'creditsDebited', measure: spentByInput },
  'internal.credits.grant': {
    counter: 'creditsCredited',
    measure: ({ input, serviceAppId }) => ({ amount: amountOf(input), app: serviceAppId }),
  },
  'internal.credits.refund': { counter: 'creditsRefunded', measure: postedEntry },
  'guild.use': { counter: 'creditsDebited', measure: spentByInput },
};

export interface ProcedureCall {
  path: string;
  type: 'query' | 'mutation' | 'subscription';
  seconds: number;
  getRawInput: () => Promise<unknown>;
  outcome: { ok: true; data: unknown } | { ok: false; error: TRPCError };
}

/** Times and counts one call. Metrics never fail a request: a problem here is logged and dropped. */
export async function recordProcedureCall(ctx: Context, call: ProcedureCall): Promise<void> {
  const { metrics, db } = ctx.deps;
  const { path, outcome } = call;
  try {
    metrics.procedureDuration.observe(
      { procedure: path, type: call.type, outcome: outcome.ok ? 'ok' : outcome.error.code },
      call.seconds,
    );
    const serviceAppId = ctx.service?.appId ?? serviceAppIdOf(ctx.appId);
    if (!outcome.ok) {
      const cause = outcome.error.cause;
      if (cause instanceof DomainError && cause.kind === 'payment_required') {
        const input = await call.getRawInput();
        const app = textOf(input, 'appId') ?? serviceAppId;
        metrics.insufficientCredits.inc({ procedure: path, app: metrics.appLabel(app) });
      }
      return;
    }
    if (isReplayed(outcome.data)) {
      metrics.idempotentReplays.inc({ procedure: path });
      return;
    }
    const procedure = MONEY_PROCEDURES[path];
    if (!procedure) return;
    const input = await call.getRawInput();
    const { amount, app } = await procedure.measure({ input, result: outcome.data, serviceAppId, db });
    if (amount !== undefined) metrics[procedure.counter].inc({ app: metrics.appLabel(app) }, amount);
  } catch (error) {
    ctx.log?.warn({ err: error, path }, 'could not record metrics');
  }
}
