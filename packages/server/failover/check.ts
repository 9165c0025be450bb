import type { Database } from '@mana-credits/db';
import { type Kysely, sql } from 'kysely';
import type { TimedOperation } from '../chaos/protocol.ts';
import { reconcile } from '../src/domain/audit/reconcile.ts';

/**
 * What the database (the last promoted primary) must hold after the run, given what callers were told:
 * - every acknowledged operation is there — its ledger row under its key with the id it answered, its
 *   reservation, gift, redemption or cancel — or else it is counted as lost;
 * - no refused operation left a ledger row under its key;
 * - no unknown outcome is left (each was retried with its key until it settled);
 * - every balance equals the initial credits plus the effects of the acknowledged operations that are there,
 *   each counted once, and the guild pool likewise: so nothing was applied twice, nor without being answered;
 * - reconcile finds no drift (Σ ledger = balance, holds = reserved, pools likewise).
 * With a synchronous standby any lost operation is a violation; with an asynchronous one the lost are counted
 * (the measured price of that choice) and everything else must still hold.
 */
export interface CheckInput {
  db: Kysely<Database>;
  operations: TimedOperation[];
  users: string[];
  initialCredits: number;
  guildId: string;
}

export interface CheckResult {
  violations: string[];
  /** Acknowledged operations the database does not have. */
  lost: TimedOperation[];
  /** Acknowledged operations found (each checked). */
  present: number;
  reconcileOk: boolean;
  ledgerRows: number;
}

export async function checkDatabase(input: CheckInput): Promise<CheckResult> {
  const { db, operations } = input;
  const violations: string[] = [];
  const lost: TimedOperation[] = [];
  let present = 0;

  const ledger = await sql<{ id: string; user_id: string; idempotency_key: string | null; amount: number }>`
    select id, user_id, idempotency_key, amount from credits.transactions`.execute(db);
  const ledgerByKey = new Map<string, { id: string; amount: number }[]>();
  const ledgerById = new Map<string, { user_id: string; amount: number }>();
  for (const row of ledger.rows) {
    ledgerById.set(row.id, row);
    if (row.idempotency_key === null) continue;
    const key = `${row.user_id}/${row.idempotency_key}`;
    ledgerByKey.set(key, [...(ledgerByKey.get(key) ?? []), row]);
  }
  const guildRows = await db
    .selectFrom('credits.guild_transactions')
    .select(['id', 'user_id', 'idempotency_key', 'amount'])
    .where('organization_id', '=', input.guildId)
    .execute();
  const guildByKey = new Map<string, { id: string; amount: number }[]>();
  for (const row of guildRows) {
    if (row.idempotency_key === null) continue;
    const key = `${row.user_id}/${row.idempotency_key}`;
    guildByKey.set(key, [...(guildByKey.get(key) ?? []), row]);
  }
  const reservations = new Map(
    (await db.selectFrom('credits.reservations').select(['id', 'status', 'transaction_id']).execute()).map(
      (r) => [r.id, r],
    ),
  );
  const gifts = await db.selectFrom('gifts.gift_codes').selectAll().execute();
  const giftsById = new Map(gifts.map((gift) => [gift.id, gift]));
  const redemptions = await db
    .selectFrom('gifts.gift_redemptions')
    .innerJoin('gifts.gift_codes', 'gifts.gift_codes.id', 'gifts.gift_redemptions.gift_code_id')
    .select(['code', 'redeemer_user_id', 'credits_received'])
    .where('gifts.gift_redemptions.status', '=', 'success')
    .execute();
  const normalCode = (code: unknown) =>
    String(code)
      .replace(/[^0-9a-z]/gi, '')
      .toUpperCase();
  const redemptionOf = new Map(redemptions.map((r) => [`${normalCode(r.code)}/${r.redeemer_user_id}`, r]));

  const expected = new Map(input.users.map((user) => [user, input.initialCredits]));
  const adjust = (userId: string, delta: number) => expected.set(userId, (expected.get(userId) ?? 0) + delta);
  let expectedPool = 0;

  /** One keyed ledger row: exactly one under the key, with the id the caller was told. */
  const keyed = (
    op: TimedOperation,
    rows: Map<string, { id: string; amount: number }[]>,
    userId: string,
    key: string,
    transactionId: unknown,
  ): boolean => {
    const found = rows.get(`${userId}/${key}`) ?? [];
    if (op.outcome !== 'ok') {
      if (op.outcome === 'refused' && found.length > 0) {
        violations.push(
          `${op.id} (${op.kind}) was refused (${op.reason}) but left ledger row ${found[0]!.id}`,
        );
      }
      return false;
    }
    if (found.length === 0) {
      lost.push(op);
      return false;
    }
    if (found.length > 1) violations.push(`${op.id} (${op.kind}) key ${key} has ${found.length} ledger rows`);
    if (transactionId !== undefined && found[0]!.id !== transactionId) {
      violations.push(`${op.id} (${op.kind}) answered ${transactionId}, the ledger has ${found[0]!.id}`);
    }
    present++;
    return true;
  };

  for (const op of operations) {
    if (op.outcome === 'unknown') {
      violations.push(`${op.id} (${op.kind}) is still unknown after retries with its key`);
      continue;
    }
    const userId = op.account ?? (op.input.userId as string | undefined) ?? op.actor;
    const key = op.input.idempotencyKey as string | undefined;
    switch (op.kind) {
      case 'use':
        if (keyed(op, ledgerByKey, userId, key!, op.result?.transactionId))
          adjust(userId, -(op.input.amount as number));
        break;
      case 'grant':
        if (keyed(op, ledgerByKey, userId, key!, op.result?.transactionId))
          adjust(userId, op.input.amount as number);
        break;
      case 'refund':
        if (keyed(op, ledgerByKey, userId, key!, undefined)) adjust(userId, op.input.amount as number);
        break;
      case 'batch': {
        const items = op.input.items as { userId: string; amount: number; idempotencyKey: string }[];
        const results = (op.result?.results ?? []) as {
          ok: boolean;
          transactionId?: string;
          error?: { reason: string };
        }[];
        items.forEach((item, j) => {
          const result = results[j];
          const itemOp: TimedOperation = {
            ...op,
            id: `${op.id}[${j}]`,
            kind: 'batch item',
            outcome: op.outcome === 'ok' ? (result?.ok ? 'ok' : 'refused') : op.outcome,
            ...(result?.error ? { reason: result.error.reason } : {}),
          };
          if (keyed(itemOp, ledgerByKey, item.userId, item.idempotencyKey, result?.transactionId)) {
            adjust(item.userId, -item.amount);
          }
        });
        break;
      }
      case 'reserve':
        if (op.outcome !== 'ok') break;
        if (reservations.has(op.result?.reservationId as string)) present++;
        else lost.push(op);
        break;
      case 'commit': {
        if (op.outcome !== 'ok') break;
        const posted = ledgerById.get(op.result?.transactionId as string);
        if (!posted) {
          lost.push(op);
          break;
        }
        present++;
        if (posted.user_id !== userId || -posted.amount !== op.result?.committed) {
          violations.push(
            `${op.id} committed ${op.result?.committed} as ${op.result?.transactionId}: ledger has ${JSON.stringify(posted)}`,
          );
        }
        adjust(userId, -(op.result?.committed as number));
        break;
      }
      case 'release': {
        if (op.outcome !== 'ok') break;
        const reservation = reservations.get(op.input.reservationId as string);
        if (reservation && reservation.status !== 'open') present++;
        else lost.push(op);
        break;
      }
      case 'guild.fund':
        if (keyed(op, guildByKey, op.actor, key!, undefined)) {
          adjust(op.actor, -(op.input.amount as number));
          expectedPool += op.input.amount as number;
        }
        break;
      case 'guild.use':
        if (keyed(op, guildByKey, op.actor, key!, op.result?.transactionId))
          expectedPool -= op.input.amount as number;
        break;
      case 'gift.create':
        if (op.outcome !== 'ok') break;
        if (giftsById.has(op.result?.id as string)) {
          present++;
          adjust(op.actor, -(op.input.totalCredits as number));
        } else lost.push(op);
        break;
      case 'gift.redeem': {
        if (op.outcome !== 'ok') break;
        const success = redemptionOf.get(`${normalCode(op.input.code)}/${op.actor}`);
        if (!success) lost.push(op);
        else if (success.credits_received !== op.result?.creditsReceived) {
          violations.push(
            `${op.id} redeemed ${op.result?.creditsReceived}, the database has ${success.credits_received}`,
          );
        } else present++;
        break;
      }
      case 'gift.cancel': {
        if (op.outcome !== 'ok') break;
        const gift = giftsById.get(op.input.id as string);
        if (!gift || gift.status === 'active') lost.push(op);
        else if (gift.refunded_credits !== op.result?.refunded) {
          violations.push(
            `${op.id} cancel answered ${op.result?.refunded}, the gift has ${gift.refunded_credits}`,
          );
        } else present++;
        break;
      }
      default:
        violations.push(`${op.id}: unknown kind ${op.kind}`);
    }
  }
  // Redemptions and escrow refunds (cancel, expiry) as the database has them: each was checked above against
  // what its caller was told; here they only complete the expected balances.
  for (const r of redemptions) adjust(r.redeemer_user_id, r.credits_received);
  for (const gift of gifts) adjust(gift.creator_id, gift.refunded_credits);

  const balances = await db.selectFrom('credits.balances').select(['user_id', 'balance']).execute();
  for (const { user_id, balance } of balances) {
    const want = expected.get(user_id);
    if (want !== undefined && want !== balance) {
      violations.push(`${user_id}: balance ${balance}, the acknowledged operations present say ${want}`);
    }
  }
  const pool = await db
    .selectFrom('credits.guild_pools')
    .select('balance')
    .where('organization_id', '=', input.guildId)
    .executeTakeFirst();
  if ((pool?.balance ?? 0) !== expectedPool) {
    violations.push(
      `guild pool: balance ${pool?.balance}, the acknowledged operations present say ${expectedPool}`,
    );
  }
  const report = await reconcile(db);
  for (const check of report.checks.filter((c) => !c.ok)) {
    violations.push(
      `reconcile ${check.name}: ${check.violations} ${JSON.stringify(check.samples.slice(0, 3))}`,
    );
  }
  return { violations, lost, present, reconcileOk: report.ok, ledgerRows: report.totals.ledger_rows ?? 0 };
}
