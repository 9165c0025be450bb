import type { Database } from '@mana-credits/db';
import type { Kysely } from 'kysely';
import type { TestCardBehaviour, TestStripeServer } from '../test/helpers/stripe-server.ts';
import { type CallOptions, callOnce } from './protocol.ts';

/**
 * Auto top-ups in `pnpm chaos`: before the traffic a few users save a card (credits.autoTopUp.setup, the
 * SetupIntent confirmed in the local Stripe server, setup_intent.succeeded delivered) and spend below their
 * threshold once, so each has an attempt from the start; the traffic crosses it again. The servers' auto-top-up
 * job pays off-session during the faults; the Stripe driver (./stripe.ts) delivers the payment_intent events of
 * those payments like the others, and counts a succeeded one as a paid purchase (so the balance check and the
 * credited-once check include it). Afterwards `checkAutoTopUps` checks what is particular to them.
 */

export interface AutoTopUpPlan {
  userId: string;
  packageId: string;
  threshold: number;
  maxPerMonth: number;
  card: TestCardBehaviour;
}

/** Spent by each planned user right after the card is saved (500 → 490), below the threshold of 495. */
export const AUTO_TOP_UP_FIRST_SPEND = 10;

/** Saves the card of each plan and checks auto top-up is on; any other answer stops the run. */
export async function setUpAutoTopUps(
  db: Kysely<Database>,
  plans: AutoTopUpPlan[],
  stripe: TestStripeServer,
  callOptions: CallOptions,
  url: string,
): Promise<void> {
  for (const plan of plans) {
    const started = await callOnce(
      {
        id: `autotopup-setup-${plan.userId}`,
        kind: 'autoTopUp.setup',
        path: 'credits.autoTopUp.setup',
        actor: plan.userId,
        input: { packageId: plan.packageId, threshold: plan.threshold, maxPerMonth: plan.maxPerMonth },
      },
      callOptions,
      url,
    );
    if (started.outcome !== 'ok') throw new Error(`auto top-up setup of ${plan.userId}: ${started.reason}`);
    const setupIntent = stripe.succeedSetupIntent(started.result?.setupIntentId as string, {
      behaviour: plan.card,
    });
    const delivered = await stripe.deliver(url, stripe.event('setup_intent.succeeded', setupIntent));
    if (delivered.status !== 200)
      throw new Error(`setup_intent.succeeded for ${plan.userId}: HTTP ${delivered.status}`);
    const setting = await db
      .selectFrom('credits.auto_top_up')
      .select(['enabled', 'payment_method_id'])
      .where('user_id', '=', plan.userId)
      .executeTakeFirst();
    if (!setting?.enabled || !setting.payment_method_id)
      throw new Error(
        `auto top-up of ${plan.userId} not on after its card was saved: ${JSON.stringify(setting)}`,
      );
  }
}

/**
 * After every webhook was acknowledged and no attempt is in flight any more: each automatic PaymentIntent
 * Stripe made is one per attempt (the idempotency key); a succeeded one ended its attempt `succeeded` and its
 * purchase `completed` with one purchase ledger row; no automatic purchase credited without a Stripe success; a
 * declining card produced no credits and left auto top-up off; at most maxPerMonth successful top-ups per user;
 * at most one attempt not final per user. Returns the violations and the summary line.
 */
export async function checkAutoTopUps(
  db: Kysely<Database>,
  stripe: TestStripeServer,
  plans: AutoTopUpPlan[],
): Promise<{ violations: string[]; summary: string }> {
  const violations: string[] = [];
  const attempts = await db.selectFrom('credits.auto_top_up_attempts').selectAll().execute();
  const settings = new Map(
    (await db.selectFrom('credits.auto_top_up').selectAll().execute()).map((row) => [row.user_id, row]),
  );
  const purchases = new Map(
    (await db.selectFrom('credits.purchases').selectAll().execute()).map((row) => [row.id, row]),
  );
  const purchaseRows = new Map<string, number>();
  for (const row of await db
    .selectFrom('credits.transactions')
    .select(['metadata'])
    .where('type', '=', 'purchase')
    .execute()) {
    const purchaseId = (row.metadata as { purchaseId?: unknown } | null)?.purchaseId;
    if (typeof purchaseId === 'string') purchaseRows.set(purchaseId, (purchaseRows.get(purchaseId) ?? 0) + 1);
  }

  const autoIntents = [...stripe.paymentIntents.values()].filter(
    (intent) => (intent.metadata as Record<string, string> | undefined)?.auto === 'true',
  );
  const intentsOf = new Map<string, typeof autoIntents>();
  for (const intent of autoIntents) {
    const purchaseId = (intent.metadata as Record<string, string>).purchaseId!;
    intentsOf.set(purchaseId, [...(intentsOf.get(purchaseId) ?? []), intent]);
  }
  for (const [purchaseId, intents] of intentsOf)
    if (intents.length > 1)
      violations.push(`auto purchase ${purchaseId}: ${intents.length} PaymentIntents in Stripe, one attempt`);

  const attemptOf = new Map(attempts.filter((a) => a.purchase_id).map((a) => [a.purchase_id!, a]));
  const paidPerUser = new Map<string, number>();
  let paid = 0;
  let declined = 0;
  for (const intent of autoIntents) {
    const metadata = intent.metadata as Record<string, string>;
    const purchase = purchases.get(metadata.purchaseId!);
    const attempt = attemptOf.get(metadata.purchaseId!);
    const rows = purchaseRows.get(metadata.purchaseId!) ?? 0;
    if (intent.status === 'succeeded') {
      paid++;
      paidPerUser.set(metadata.userId!, (paidPerUser.get(metadata.userId!) ?? 0) + 1);
      if (purchase?.status !== 'completed' || rows !== 1 || attempt?.status !== 'succeeded')
        violations.push(
          `auto top-up ${intent.id} succeeded in Stripe: purchase ${metadata.purchaseId} ${purchase?.status}, ${rows} purchase rows, attempt ${attempt?.id} ${attempt?.status}`,
        );
    } else {
      declined++;
      if (purchase?.status === 'completed' || rows > 0 || attempt?.status === 'succeeded')
        violations.push(
          `auto top-up ${intent.id} ${intent.status} in Stripe: purchase ${metadata.purchaseId} ${purchase?.status}, ${rows} purchase rows, attempt ${attempt?.status}`,
        );
    }
  }
  // Automatic purchases credited or completed without a succeeded PaymentIntent of theirs.
  for (const purchase of purchases.values()) {
    const attemptId = (purchase.metadata as { autoTopUpAttemptId?: unknown } | null)?.autoTopUpAttemptId;
    if (typeof attemptId !== 'string') continue;
    const succeeded = (intentsOf.get(purchase.id) ?? []).some((intent) => intent.status === 'succeeded');
    const rows = purchaseRows.get(purchase.id) ?? 0;
    if (!succeeded && (purchase.status === 'completed' || rows > 0))
      violations.push(
        `auto purchase ${purchase.id} ${purchase.status} with ${rows} purchase rows, no Stripe success`,
      );
  }

  const reachedMax: string[] = [];
  for (const plan of plans) {
    const own = attempts.filter((a) => a.user_id === plan.userId);
    const succeeded = own.filter((a) => a.status === 'succeeded').length;
    const inFlight = own.filter((a) => a.status === 'pending' || a.status === 'processing');
    const setting = settings.get(plan.userId);
    if (inFlight.length > 1)
      violations.push(`${plan.userId}: ${inFlight.length} auto top-up attempts in flight at once`);
    if (succeeded > plan.maxPerMonth || (paidPerUser.get(plan.userId) ?? 0) > plan.maxPerMonth)
      violations.push(
        `${plan.userId}: ${succeeded} succeeded attempts, ${paidPerUser.get(plan.userId) ?? 0} paid in Stripe, maxPerMonth ${plan.maxPerMonth}`,
      );
    if (succeeded === plan.maxPerMonth) reachedMax.push(plan.userId);
    if (plan.card === 'ok') continue;
    // A card that never pays: no credits, and auto top-up off after its (one) failed attempt.
    if (own.length === 0) violations.push(`${plan.userId} (card ${plan.card}): no auto top-up attempt`);
    if (succeeded > 0 || (paidPerUser.get(plan.userId) ?? 0) > 0)
      violations.push(`${plan.userId} (card ${plan.card}): ${succeeded} succeeded auto top-ups`);
    const autoCredits = [...purchases.values()].filter(
      (p) =>
        p.user_id === plan.userId &&
        typeof (p.metadata as { autoTopUpAttemptId?: unknown } | null)?.autoTopUpAttemptId === 'string' &&
        (purchaseRows.get(p.id) ?? 0) > 0,
    ).length;
    if (autoCredits > 0)
      violations.push(`${plan.userId} (card ${plan.card}): ${autoCredits} auto purchases credited`);
    if (setting?.enabled !== false || !setting.disabled_reason?.startsWith('payment failed'))
      violations.push(
        `${plan.userId} (card ${plan.card}): auto top-up ${setting?.enabled ? 'still on' : 'off'} (${setting?.disabled_reason})`,
      );
    if (own.filter((a) => a.status === 'failed').length !== 1)
      violations.push(
        `${plan.userId} (card ${plan.card}): attempts ${JSON.stringify(own.map((a) => [a.status, a.failure_code]))}, one failed expected`,
      );
  }
  const status = (s: string) => attempts.filter((a) => a.status === s).length;
  const summary = `auto top-ups: ${plans.length} users (${plans.filter((p) => p.card !== 'ok').length} with a failing card), ${attempts.length} attempts (succeeded ${status('succeeded')}, failed ${status('failed')}, skipped ${status('skipped')}, in flight ${status('pending') + status('processing')}), ${autoIntents.length} off-session PaymentIntents (${paid} paid, ${declined} refused), maxPerMonth reached by ${reachedMax.length}`;
  return { violations, summary };
}
