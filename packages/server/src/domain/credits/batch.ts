import {
  type BatchDebit,
  type BatchOutcome,
  type Database,
  isUniqueViolation,
  LEDGER_IDEMPOTENCY_INDEX,
  postUsageBatch,
} from '@mana-credits/db';
import type { Kysely } from 'kysely';
import { z } from 'zod';
import { amount, appId, description, guildId, idempotencyKey, metadata, userId } from '../../schemas.ts';
import { effects } from '../effects.ts';
import { DomainError } from '../errors.ts';
import type { PoolUseResult } from '../guild/mappers.ts';
import { type GuildRole, requireRole } from '../guild/membership.ts';
import { spendFromPoolTogether } from '../guild/pool-coalescer.ts';
import { type GuildDeps, type PoolUseInput, spendFromPool } from '../guild/pools.ts';
import { isReplayed, markReplayed } from '../idempotency.ts';
import { type ItemOutcome, settleBatch, type Waiting } from '../lane-coalescer.ts';
import { certainlyNotCommitted, certainOrUnknown } from '../outcome.ts';
import { usageRequestHash } from './personal.ts';

export const MAX_BATCH_ITEMS = 1000;

/** One item of a batch; validated on its own, so one bad item fails only itself. */
export const batchItem = z.strictObject({
  userId,
  amount,
  appId,
  description,
  idempotencyKey,
  guildId: guildId.optional(),
  metadata: metadata.optional(),
});

export type BatchItemResult =
  | { idempotencyKey: string | null; ok: true; transactionId: string; balance: number }
  | { idempotencyKey: string | null; ok: false; error: { reason: string; message: string } };

const failed = (key: string | null, reason: string, message: string): BatchItemResult => ({
  idempotencyKey: key,
  ok: false,
  error: { reason, message },
});

/** The key an invalid item names, so its result can still be matched by key. */
function keyOf(raw: unknown): string | null {
  if (typeof raw !== 'object' || raw === null) return null;
  const key = (raw as { idempotencyKey?: unknown }).idempotencyKey;
  return typeof key === 'string' ? key : null;
}

function describeIssues(error: z.ZodError): string {
  const issues = error.issues.map(
    (issue) => `${issue.path.length > 0 ? issue.path.map(String).join('.') : '(item)'}: ${issue.message}`,
  );
  return `Invalid item: ${issues.join('; ')}`;
}

/**
 * One item checked on its own. Whatever is wrong with it — even something that makes a check throw rather
 * than report — fails this item alone, never the batch.
 */
function parseItem(
  raw: unknown,
): { success: true; data: z.output<typeof batchItem> } | { success: false; message: string } {
  try {
    const parsed = batchItem.safeParse(raw);
    return parsed.success
      ? { success: true, data: parsed.data }
      : { success: false, message: describeIssues(parsed.error) };
  } catch {
    return { success: false, message: 'Invalid item: (item): is not a valid item' };
  }
}

function toItemResult(debit: BatchDebit, outcome: BatchOutcome): BatchItemResult {
  const key = debit.idempotencyKey ?? null; // always set: batch items require a key
  switch (outcome.outcome) {
    case 'ok':
    case 'replay': {
      const applied: BatchItemResult = {
        idempotencyKey: key,
        ok: true,
        transactionId: outcome.transactionId,
        balance: outcome.available,
      };
      // A replayed item is counted by the metrics as a replay, not as credits spent again.
      return outcome.outcome === 'replay' ? markReplayed(applied) : applied;
    }
    case 'insufficient': {
      const refused = failed(
        key,
        'INSUFFICIENT_CREDITS',
        `Insufficient credits: ${debit.amount} required, ${outcome.available} available`,
      );
      // The key's recorded refusal answered again: a replay, which moved nothing.
      return outcome.replayed ? markReplayed(refused) : refused;
    }
    case 'conflict':
      return failed(
        key,
        'IDEMPOTENCY_CONFLICT',
        'This idempotency key was already used with a different request',
      );
  }
}

/**
 * Postgres refused the whole call (rolled back: nothing was written) for a reason a retry resolves: a key
 * taken by a concurrent call, or a deadlock. Any other failure is thrown; one whose outcome is unknown (a
 * lost connection) is answered OUTCOME_UNKNOWN, and as every item is keyed the caller's retry replays.
 */
function isRetryable(error: unknown): boolean {
  return (
    certainlyNotCommitted(error) &&
    (isUniqueViolation(error, LEDGER_IDEMPOTENCY_INDEX) || (error as { code?: string }).code === '40P01')
  );
}

async function postWithRetry(db: Kysely<Database>, debits: BatchDebit[]): Promise<BatchOutcome[]> {
  for (let attempt = 1; ; attempt++) {
    try {
      const { outcomes, holdsExpired } = await postUsageBatch(db, debits);
      effects.holdsExpired(holdsExpired);
      return outcomes;
    } catch (error) {
      if (attempt >= 3 || !isRetryable(error)) throw certainOrUnknown(error);
    }
  }
}

/**
 * Spends credits for many independent items: personal items in one database call (see credits.use_batch),
 * then guild items (`guildId` set) in one more (see spendPoolItems). Each item is validated, idempotent and
 * answered on its own, in input order: a bad, short, refused or conflicting item fails alone. Items share the
 * idempotency space of credits.use (and of guild.use for guild items), so an item replays a use with the
 * same key and request, and vice versa.
 */
export async function useCreditsBatch(
  deps: GuildDeps,
  items: readonly unknown[],
): Promise<{ results: BatchItemResult[] }> {
  const results: BatchItemResult[] = new Array(items.length);
  const debits: BatchDebit[] = [];
  const positions: number[] = [];
  const poolUses: PoolItem[] = [];
  items.forEach((raw, index) => {
    const parsed = parseItem(raw);
    if (!parsed.success) {
      results[index] = failed(keyOf(raw), 'VALIDATION', parsed.message);
      return;
    }
    const { guildId, ...item } = parsed.data;
    if (guildId !== undefined) {
      poolUses.push({ index, use: { ...item, guildId } });
      return;
    }
    debits.push({
      userId: item.userId,
      amount: item.amount,
      appId: item.appId,
      description: item.description,
      metadata: item.metadata,
      idempotencyKey: item.idempotencyKey,
      requestHash: usageRequestHash(item),
    });
    positions.push(index);
  });
  if (debits.length > 0) {
    const outcomes = await postWithRetry(deps.db, debits);
    outcomes.forEach((outcome, j) => {
      results[positions[j]!] = toItemResult(debits[j]!, outcome);
    });
  }
  if (poolUses.length > 0) await spendPoolItems(deps, poolUses, results);
  return { results };
}

interface PoolItem {
  index: number;
  use: PoolUseInput & { idempotencyKey: string };
}

/**
 * The guild items of a batch, answered into `results`: each member's role is asked once per (guild, member)
 * of the batch, and the spends of the members go to Postgres in one call of credits.pool_use_batch, in input
 * order — the statement the pool coalescer sends, deciding each item as guild.use would alone. When Postgres
 * refuses that call as a whole (nothing written) each item takes the single path on its own; when its outcome
 * is unknown, the call fails (settleBatch).
 */
async function spendPoolItems(deps: GuildDeps, poolUses: PoolItem[], results: BatchItemResult[]) {
  const roles = new Map<string, Promise<GuildRole>>();
  const admitted = await Promise.all(
    poolUses.map(async (item) => {
      const pair = JSON.stringify([item.use.guildId, item.use.userId]);
      let role = roles.get(pair);
      if (!role) {
        role = requireRole(deps.membership, item.use.guildId, item.use.userId);
        roles.set(pair, role);
      }
      try {
        await role;
        return true;
      } catch (error) {
        results[item.index] = refusedPoolItem(item, error);
        return false;
      }
    }),
  );
  const spends = poolUses.filter((_, i) => admitted[i]);
  // settleBatch answers every item before it returns (each as its result or its error)
  const answers: ItemOutcome<PoolUseResult>[] = new Array(spends.length);
  const waiting: Waiting<PoolUseInput, PoolUseResult>[] = spends.map((item, i) => ({
    input: item.use,
    resolve: (value) => {
      answers[i] = { ok: true, value };
    },
    reject: (error) => {
      answers[i] = { ok: false, error };
    },
  }));
  await settleBatch(
    waiting,
    (inputs) => spendFromPoolTogether(deps.db, inputs),
    // one after another in input order, the order the refused call would have decided them in
    async (rerun) => {
      for (const { input, resolve, reject } of rerun)
        await spendFromPool(deps.db, input).then(resolve, reject);
    },
  );
  for (const [i, item] of spends.entries()) {
    const answer = answers[i];
    if (!answer) throw new Error('a pool item of the batch was left unanswered');
    if (!answer.ok) {
      results[item.index] = refusedPoolItem(item, answer.error);
      continue;
    }
    const applied: BatchItemResult = {
      idempotencyKey: item.use.idempotencyKey,
      ok: true,
      transactionId: answer.value.transactionId,
      balance: answer.value.poolBalance,
    };
    results[item.index] = isReplayed(answer.value) ? markReplayed(applied) : applied;
  }
}

/**
 * A refusal fails its item alone. Anything else fails the call — an unknown outcome (perhaps applied) as
 * OUTCOME_UNKNOWN — which is safe to retry as a whole: every item is keyed, so applied ones replay.
 */
function refusedPoolItem(item: PoolItem, error: unknown): BatchItemResult {
  if (!(error instanceof DomainError) || !certainlyNotCommitted(error)) throw certainOrUnknown(error);
  const refused = failed(item.use.idempotencyKey, error.reason, error.message);
  return isReplayed(error) ? markReplayed(refused) : refused;
}
