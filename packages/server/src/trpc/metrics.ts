import type { Database } from '@mana-credits/db';
import type { TRPCError } from '@trpc/server';
import type { Kysely } from 'kysely';
import { DomainError } from '../domain/errors.ts';
import { isReplayed } from '../domain/idempotency.ts';
import { OutcomeUnknownError } from '../domain/outcome.ts';
import type { Account, Movement, ReservationEvent } from '../metrics.ts';
import { type Context, serviceAppIdOf } from './context.ts';

/** An answered money call (first or replayed) as the metrics see it; `input` passed the procedure's validation. */
export interface MoneyCall {
  input: unknown;
  result: unknown;
  /** The calling service's X-App-Id (validated), for procedures whose app is the caller. */
  serviceAppId: string;
  db: Kysely<Database>;
}

/** What one answered money call is counted as. */
export interface Tally {
  /** Counted as the call was answered: `ok`, or `replay` for a replayed call. */
  movements?: Movement[];
  /** Counted for a first call only (a replayed hold is not a new one). */
  reservation?: ReservationEvent;
  /** Items of a batch answered with their stored first result: counted as replays. */
  replayedItems?: Movement[];
  /** Items of a batch answered with the refusal recorded under their key: replays that moved nothing. */
  replayedRefusals?: number;
  /** Items of a batch refused for lack of credits, by the app each named. */
  shortItems?: (string | undefined)[];
}

export interface MoneyProcedure {
  /** How an answered call is counted; a promise when only the database knows (the posted row, the hold). */
  measure(call: MoneyCall): Tally | Promise<Tally>;
  /**
   * What a call answered OUTCOME_UNKNOWN asked to move, from its raw input alone (the database is likely
   * away); absent where the input does not say how much or from where (counted then only as the call's
   * outcome in procedure_duration_seconds).
   */
  asked?(input: unknown, serviceAppId: string): Movement[];
}

/** A procedure whose input says all it moves: answered or not, it is counted from the input. */
const fromInput = (asked: (input: unknown, serviceAppId: string) => Movement[]): MoneyProcedure => ({
  measure: ({ input, serviceAppId }) => ({ movements: asked(input, serviceAppId) }),
  asked,
});

const field = (value: unknown, key: string): unknown =>
  typeof value === 'object' && value !== null ? (value as Record<string, unknown>)[key] : undefined;

const numberOf = (value: unknown, key: string): number | undefined => {
  const number = field(value, key);
  return typeof number === 'number' && Number.isSafeInteger(number) ? number : undefined;
};

const textOf = (value: unknown, key: string): string | undefined => {
  const text = field(value, key);
  return typeof text === 'string' ? text : undefined;
};

const accountOf = (input: unknown): Account => (textOf(input, 'guildId') ? 'pool' : 'personal');

/** credits.use and guild.use (and a batch item): the amount leaves the personal balance or, with a guildId, the pool. */
const usage = (input: unknown): Movement => ({
  kind: 'debited',
  account: accountOf(input),
  type: 'usage',
  amount: numberOf(input, 'amount'),
  app: textOf(input, 'appId'),
});

const spend = fromInput((input) => [usage(input)]);

/** Reads amount and app from the ledger row a refund posted (the input names no amount for a full refund). */
async function refundedUsage({ result, db }: MoneyCall): Promise<Tally> {
  const transactionId = textOf(result, 'transactionId');
  const row = transactionId
    ? await db
        .selectFrom('credits.transactions')
        .select(['amount', 'app_id'])
        .where('id', '=', transactionId)
        .executeTakeFirst()
    : undefined;
  if (!row) return {};
  return {
    movements: [
      { kind: 'refunded', type: 'usage', amount: Math.abs(row.amount), app: row.app_id ?? undefined },
    ],
  };
}

/** The hold a commit or release closed (they answer neither its account nor its app). */
async function heldReservation({ input, db }: MoneyCall) {
  const id = textOf(input, 'reservationId');
  if (!id) return undefined;
  return db
    .selectFrom('credits.reservations')
    .select(['app_id', 'organization_id', 'status'])
    .where('id', '=', id)
    .executeTakeFirst();
}

const SHORT_OF_CREDITS = new Set(['INSUFFICIENT_CREDITS', 'INSUFFICIENT_POOL_CREDITS']);

/** Each applied item of a batch is counted like the credits.use it stands for; replayed and short ones apart. */
function batchItems({ input, result }: MoneyCall): Tally {
  const items = field(input, 'items');
  const results = field(result, 'results');
  if (!Array.isArray(items) || !Array.isArray(results)) return {};
  const tally = {
    movements: [] as Movement[],
    replayedItems: [] as Movement[],
    replayedRefusals: 0,
    shortItems: [] as (string | undefined)[],
  };
  results.forEach((item: unknown, index) => {
    if (isReplayed(item) && field(item, 'ok') === true) tally.replayedItems.push(usage(items[index]));
    else if (isReplayed(item)) tally.replayedRefusals++;
    else if (field(item, 'ok') === true) tally.movements.push(usage(items[index]));
    else if (SHORT_OF_CREDITS.has(textOf(field(item, 'error'), 'reason') ?? '')) {
      tally.shortItems.push(textOf(items[index], 'appId'));
    }
  });
  return tally;
}

/**
 * Every tRPC procedure that moves credits or holds, by path → how a call is counted. Add a row with each new
 * money procedure. Each call's movements are counted once, labelled with its answer (MoneyOutcome): a first
 * answer as `ok`, a replay (see markReplayed) as `replay` (and in idempotent_replays_total), OUTCOME_UNKNOWN
 * as `unknown` (what it asked); a refused call moves nothing (only insufficient_credits_total). What a call
 * moves besides its own work (expired holds or gifts it came across) is reported by the domain code (see
 * domain/effects.ts), as is the work of the sweeps; the Stripe webhook counts its purchases and clawbacks.
 */
export const MONEY_PROCEDURES: Readonly<Record<string, MoneyProcedure>> = {
  'credits.use': spend,
  'internal.credits.use': spend,
  'guild.use': spend,
  'internal.credits.useBatch': {
    measure: batchItems,
    asked: (input) => {
      const items = field(input, 'items');
      return Array.isArray(items) ? items.map(usage) : [];
    },
  },
  'internal.credits.grant': fromInput((input, serviceAppId) => [
    {
      kind: 'credited',
      account: 'personal',
      type: 'grant',
      amount: numberOf(input, 'amount'),
      app: serviceAppId,
    },
  ]),
  // Asked: only a partial refund names its amount; the app is the refunded entry's, unknown from the input.
  'internal.credits.refund': {
    measure: refundedUsage,
    asked: (input) => [{ kind: 'refunded', type: 'usage', amount: numberOf(input, 'amount') }],
  },
  'internal.credits.reserve': { measure: () => ({ reservation: 'opened' }) },
  'internal.credits.commit': {
    async measure(call) {
      const hold = await heldReservation(call);
      const movement: Movement = {
        kind: 'debited',
        account: hold?.organization_id ? 'pool' : 'personal',
        type: 'usage',
        amount: numberOf(call.result, 'committed'),
        app: hold?.app_id,
      };
      return { reservation: 'committed', movements: [movement] };
    },
  },
  'internal.credits.release': {
    // A hold whose time was up when released is closed (and counted) as expired.
    async measure(call) {
      const hold = await heldReservation(call);
      return { reservation: hold?.status === 'expired' ? 'expired' : 'released' };
    },
  },
  'guild.fund': fromInput((input) => {
    const amount = numberOf(input, 'amount');
    return [
      { kind: 'debited', account: 'personal', type: 'guild_funding', amount },
      { kind: 'credited', account: 'pool', type: 'guild_funding', amount },
    ];
  }),
  'gifts.create': {
    measure: ({ result }) => ({
      movements: [
        {
          kind: 'debited',
          account: 'personal',
          type: 'gift',
          amount: (numberOf(result, 'creditsPerPortion') ?? 0) * (numberOf(result, 'totalPortions') ?? 0),
        },
      ],
    }),
  },
  'gifts.redeem': {
    measure: ({ input, result }) => ({
      movements: [
        {
          kind: 'credited',
          account: 'personal',
          type: 'gift',
          amount: numberOf(result, 'creditsReceived'),
          app: textOf(input, 'sourceAppId'),
        },
      ],
    }),
  },
  'internal.gifts.redeemPending': {
    measure: ({ result }) => ({
      movements: [
        { kind: 'credited', account: 'personal', type: 'gift', amount: numberOf(result, 'totalCredits') },
      ],
    }),
  },
  'gifts.cancel': {
    measure: ({ result }) => ({
      movements: [{ kind: 'refunded', type: 'gift', amount: numberOf(result, 'refunded') }],
    }),
  },
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
    const procedure = MONEY_PROCEDURES[path];
    if (!outcome.ok) {
      const cause = outcome.error.cause;
      // A refusal recorded under the key, answered again: a replay (it moved nothing, as the first time).
      if (isReplayed(cause)) metrics.idempotentReplays.inc({ procedure: path });
      else if (cause instanceof DomainError && cause.kind === 'payment_required') {
        const input = await call.getRawInput();
        const app = textOf(input, 'appId') ?? serviceAppId;
        metrics.insufficientCredits.inc({ procedure: path, app: metrics.appLabel(app) });
      }
      if (cause instanceof OutcomeUnknownError && procedure?.asked) {
        for (const movement of procedure.asked(await call.getRawInput(), serviceAppId)) {
          metrics.moved(movement, 'unknown');
        }
      }
      return;
    }
    const replayed = isReplayed(outcome.data);
    if (replayed) metrics.idempotentReplays.inc({ procedure: path });
    if (!procedure) return;
    const input = await call.getRawInput();
    const tally = await procedure.measure({ input, result: outcome.data, serviceAppId, db });
    for (const movement of tally.movements ?? []) metrics.moved(movement, replayed ? 'replay' : 'ok');
    if (tally.reservation && !replayed) metrics.reservations.inc({ event: tally.reservation });
    if (tally.replayedItems?.length) {
      metrics.idempotentReplays.inc({ procedure: path }, tally.replayedItems.length);
      for (const movement of tally.replayedItems) metrics.moved(movement, 'replay');
    }
    if (tally.replayedRefusals) metrics.idempotentReplays.inc({ procedure: path }, tally.replayedRefusals);
    for (const app of tally.shortItems ?? []) {
      metrics.insufficientCredits.inc({ procedure: path, app: metrics.appLabel(app) });
    }
  } catch (error) {
    ctx.log?.warn({ err: error, path }, 'could not record metrics');
  }
}
