import type { Database } from '@mana-credits/db';
import type { Kysely } from 'kysely';
import type { TestStripeServer } from '../test/helpers/stripe-server.ts';
import {
  type CallOptions,
  callOnce,
  type LoggedOperation,
  type Operation,
  seededRandom,
} from './protocol.ts';

/**
 * Stripe's side of `pnpm chaos`: users start purchases (`credits.purchase`, against the local Stripe server),
 * then this driver plays Stripe — it pays, refunds (cumulative, partial and full) and disputes charges and
 * delivers the events to the webhook of random server instances, duplicated (the same event id twice, a
 * second event id for the same payment) and out of order (random delays; a refund may overtake the payment it
 * refunds). A delivery that did not get a 2xx is redelivered later, as Stripe does, until it gets one.
 *
 * Auto top-ups (./auto-top-up.ts): the servers pay them off-session; this driver notices each automatic
 * PaymentIntent the local Stripe server made and delivers its payment_intent.succeeded or
 * payment_intent.payment_failed like any other (duplicated, reordered), a succeeded one counting as a paid
 * purchase (refunded and disputed like the others too).
 *
 * Ground truth for the checks is what Stripe did (which intents were paid, what was refunded and disputed),
 * not what the webhook answered: a lost 2xx leaves the driver unsure, Stripe's records never.
 */

type Json = Record<string, unknown>;

export interface ChaosPackage {
  id: string;
  credits: number;
  priceEuroCents: number;
}

interface Delivery {
  eventId: string;
  type: string;
  /** The purchase the event is about (from the intent's metadata), for the timeline of a violation. */
  purchaseId: string;
  /** When this delivery got its 2xx, ms since the driver started. */
  acknowledgedAt?: number;
  payload: string;
  due: number;
  attempts: number;
  acknowledged: boolean;
  inFlight: boolean;
}

/** A PaymentIntent this driver paid, and what happened to its charge since. */
interface Payment {
  intentId: string;
  purchaseId: string;
  userId: string;
  packageId: string;
  chargeId: string;
  price: number;
  /** Cumulative refunded cents. */
  refunded: number;
  /** `won`: the merchant won it (funds reinstated): it claims nothing any more. */
  disputes: { id: string; amount: number; object: Json; won?: boolean }[];
  /** Paid off-session by a server's auto top-up, not by this driver. */
  auto?: boolean;
}

export interface StripeChaosOptions {
  stripe: TestStripeServer;
  /** Seeded: what to do next. */
  random: () => number;
  /** Seeded separately: which delivery goes next and to which instance. */
  deliveryRandom: () => number;
  seed: number;
  callOptions: CallOptions;
  users: string[];
  packages: ChaosPackage[];
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** floor(credits × part / whole), as Stripe reversals are taken back. */
const share = (credits: number, part: number, whole: number) =>
  Number((BigInt(credits) * BigInt(part)) / BigInt(whole));

/** A purchase's ledger rows, whatever the key's namespace (`purchase:<id>` or a reserved prefix before it). */
const SYSTEM_KEY = /^\p{Cc}*(?:purchase|clawback):([0-9a-f-]{36})(?::|$)/iu;

export class StripeChaos {
  /** The users' `credits.purchase` calls: keyless, never retried, checked with ≤ semantics. */
  readonly purchases: LoggedOperation[] = [];
  readonly payments = new Map<string, Payment>();
  /** Intents the customer never pays (some after a declined attempt). */
  private readonly abandoned = new Set<string>();
  private readonly deliveries: Delivery[] = [];
  private readonly emitted = new Map<string, string>();
  readonly stats = {
    events: 0,
    deliveries: 0,
    redeliveries: 0,
    duplicateDeliveries: 0,
    secondEventIds: 0,
    refundsBeforePayment: 0,
    declinedFirst: 0,
    refunds: 0,
    fullRefunds: 0,
    disputes: 0,
    disputesWon: 0,
    acknowledgedAfterRun: 0,
    autoPaid: 0,
    autoRefused: 0,
  };
  /** Automatic PaymentIntents whose outcome was already queued for delivery. */
  private readonly autoSeen = new Set<string>();
  /** Seeded separately: the delays and copies of the auto top-up events. */
  private readonly autoRandom: () => number;
  private sequence = 0;
  private readonly startedAt = Date.now();
  private eventSequence = 0;

  constructor(private readonly options: StripeChaosOptions) {
    this.autoRandom = seededRandom(options.seed * 31 + 4000);
  }

  /**
   * The numbers of the current step: each step takes the same count from the seeded stream whatever it ends up
   * doing, so a seed replays the same sequence of decisions even when timing changes what they apply to.
   */
  private draw: () => number = () => 0;

  private pick<T>(items: readonly T[], random = this.draw): T {
    return items[Math.floor(random() * items.length)] as T;
  }

  /** Generates purchases and Stripe's actions until `deadline`, delivering events meanwhile. */
  async run(deadline: number): Promise<void> {
    await Promise.all([
      this.act(deadline),
      this.watchAutoTopUps(() => Date.now() < deadline),
      ...Array.from({ length: 3 }, () => this.deliverLoop(() => Date.now() < deadline, 2000)),
    ]);
  }

  /** After the faults: redelivers every delivery still unacknowledged until it is, or `timeoutMs` passes. */
  async drain(timeoutMs: number): Promise<number> {
    const limit = Date.now() + timeoutMs;
    this.noticeAutoTopUps();
    const before = this.pending();
    for (const delivery of this.deliveries) delivery.due = Math.min(delivery.due, Date.now());
    await Promise.all(
      Array.from({ length: 3 }, () =>
        this.deliverLoop(() => this.pending() > 0 && Date.now() < limit, 10_000),
      ),
    );
    this.stats.acknowledgedAfterRun += before - this.pending();
    return this.pending();
  }

  /** Paid purchases whose `credits.purchase` answer the user never got. */
  paidWithoutAnswer(): number {
    const answered = new Set(this.purchases.map((op) => op.result?.purchaseId));
    return [...this.payments.values()].filter((p) => !p.auto && !answered.has(p.purchaseId)).length;
  }

  pending(): number {
    return this.deliveries.filter((d) => !d.acknowledged).length;
  }

  private async act(deadline: number) {
    const random = this.options.random;
    while (Date.now() < deadline) {
      await sleep(100 + random() * 250);
      if (Date.now() >= deadline) break;
      const draws = Array.from({ length: 32 }, () => random());
      let next = 0;
      this.draw = () => draws[next++ % draws.length]!;
      const roll = this.draw();
      if (roll < 0.35) await this.purchase();
      else if (roll < 0.65) this.pay();
      else if (roll < 0.85) this.refund();
      else if (roll < 0.95) this.dispute();
      else if (roll < 0.98) this.winDispute();
    }
  }

  private async purchase() {
    const { callOptions, users, packages } = this.options;
    const pack = this.pick(packages);
    const operation: Operation = {
      id: `stripe-${++this.sequence}`,
      kind: 'purchase',
      path: 'credits.purchase',
      actor: this.pick(users),
      input: { packageId: pack.id, mode: 'payment_intent' },
      keyless: true,
    };
    // One attempt: a second call would start a second purchase, not finish this one.
    const answer = await callOnce(operation, callOptions, this.pick(callOptions.baseUrls));
    this.purchases.push({ ...operation, ...answer, attempts: 1 });
  }

  /**
   * Pays one intent Stripe holds — also those whose `credits.purchase` answer was lost: the customer may pay
   * them all the same, and the webhook must find the purchase by its metadata.
   */
  private pay() {
    const { stripe } = this.options;
    const random = this.draw;
    const candidates = [...stripe.paymentIntents.values()].filter(
      (intent) =>
        intent.status !== 'succeeded' &&
        !this.abandoned.has(intent.id as string) &&
        (intent.metadata as Json | undefined)?.auto !== 'true' &&
        typeof (intent.metadata as Json | undefined)?.purchaseId === 'string',
    );
    if (candidates.length === 0) return;
    const intent = this.pick(candidates);
    const intentId = intent.id as string;
    const purchaseId = (intent.metadata as Record<string, string>).purchaseId!;
    if (random() < 0.15) {
      // Declined, and never paid afterwards.
      this.abandoned.add(intentId);
      this.emit('payment_intent.payment_failed', stripe.failPaymentIntent(intentId), purchaseId, 2000);
      return;
    }
    if (random() < 0.15) {
      // Declined first, then paid with another card: the failure may arrive after the success.
      this.stats.declinedFirst++;
      this.emit('payment_intent.payment_failed', stripe.failPaymentIntent(intentId), purchaseId, 3000);
    }
    const paid = stripe.succeedPaymentIntent(intentId);
    const metadata = paid.metadata as Record<string, string>;
    const payment: Payment = {
      intentId,
      purchaseId: metadata.purchaseId!,
      userId: metadata.userId!,
      packageId: metadata.packageId!,
      chargeId: paid.latest_charge as string,
      price: paid.amount as number,
      refunded: 0,
      disputes: [],
    };
    this.payments.set(intentId, payment);
    if (random() < 0.2) {
      // A refund (already) on its way that overtakes the payment's own event.
      this.stats.refundsBeforePayment++;
      this.refund(payment, 200);
      this.emit('payment_intent.succeeded', paid, purchaseId, 3000, 1500);
    } else {
      this.emit('payment_intent.succeeded', paid, purchaseId, 2500);
    }
  }

  /** Notices new automatic PaymentIntents every 200 ms while `keepGoing`. */
  private async watchAutoTopUps(keepGoing: () => boolean) {
    while (keepGoing()) {
      this.noticeAutoTopUps();
      await sleep(200);
    }
  }

  /**
   * Queues the outcome event of each automatic PaymentIntent not seen before (the server's off-session confirm
   * decided it: succeeded, or refused with requires_payment_method); a succeeded one becomes a paid purchase.
   */
  noticeAutoTopUps() {
    const { stripe } = this.options;
    const draw = this.draw;
    try {
      for (const intent of stripe.paymentIntents.values()) {
        const metadata = intent.metadata as Record<string, string> | undefined;
        const intentId = intent.id as string;
        if (metadata?.auto !== 'true' || !metadata.purchaseId || this.autoSeen.has(intentId)) continue;
        if (intent.status !== 'succeeded' && intent.status !== 'requires_payment_method') continue;
        this.autoSeen.add(intentId);
        const draws = Array.from({ length: 8 }, () => this.autoRandom());
        let next = 0;
        this.draw = () => draws[next++ % draws.length]!;
        const snapshot = structuredClone(intent);
        if (intent.status === 'succeeded') {
          this.stats.autoPaid++;
          this.payments.set(intentId, {
            intentId,
            purchaseId: metadata.purchaseId,
            userId: metadata.userId!,
            packageId: metadata.packageId!,
            chargeId: intent.latest_charge as string,
            price: intent.amount as number,
            refunded: 0,
            disputes: [],
            auto: true,
          });
          this.emit('payment_intent.succeeded', snapshot, metadata.purchaseId, 2500);
        } else {
          this.stats.autoRefused++;
          this.emit('payment_intent.payment_failed', snapshot, metadata.purchaseId, 2500);
        }
      }
    } finally {
      this.draw = draw;
    }
  }

  /**
   * After the faults: delivers and waits until no auto top-up attempt is pending or processing (a lease
   * a killed server held runs out after a minute), or `timeoutMs` passes. Returns how many are left.
   */
  async settleAutoTopUps(db: Kysely<Database>, timeoutMs: number): Promise<number> {
    const limit = Date.now() + timeoutMs;
    for (;;) {
      this.noticeAutoTopUps();
      const inFlight = await db
        .selectFrom('credits.auto_top_up_attempts')
        .select((eb) => eb.fn.countAll<string>().as('count'))
        .where('status', 'in', ['pending', 'processing'])
        .executeTakeFirstOrThrow();
      if (Number(inFlight.count) === 0 || Date.now() >= limit) return Number(inFlight.count);
      const until = Math.min(limit, Date.now() + 1000);
      await Promise.all(Array.from({ length: 3 }, () => this.deliverLoop(() => Date.now() < until, 10_000)));
    }
  }

  private refund(chosen?: Payment, maxDelay = 2500) {
    const { stripe } = this.options;
    const random = this.draw;
    const candidates = [...this.payments.values()].filter(
      (p) => p.refunded < p.price && p.disputes.length === 0,
    );
    const payment = chosen ?? (candidates.length > 0 ? this.pick(candidates) : undefined);
    if (!payment) return;
    const remaining = payment.price - payment.refunded;
    const amount =
      remaining === 1 || random() < 0.35 ? remaining : 1 + Math.floor(random() * (remaining - 1));
    const charge = stripe.refundCharge(payment.chargeId, amount);
    payment.refunded += amount;
    this.stats.refunds++;
    if (payment.refunded === payment.price) this.stats.fullRefunds++;
    this.emit('charge.refunded', charge, payment.purchaseId, maxDelay);
  }

  private dispute() {
    const { stripe } = this.options;
    const random = this.draw;
    const candidates = [...this.payments.values()].filter(
      (p) => p.disputes.length === 0 && p.refunded < p.price,
    );
    if (candidates.length === 0) return;
    const payment = this.pick(candidates);
    // The whole charge (after a partial refund too: together more than the purchase) or a part of it.
    const amount =
      random() < 0.5 ? payment.price : 1 + Math.floor(random() * (payment.price - payment.refunded));
    const dispute = stripe.disputeCharge(payment.chargeId, amount);
    payment.disputes.push({ id: dispute.id as string, amount, object: dispute });
    this.stats.disputes++;
    this.emit('charge.dispute.created', dispute, payment.purchaseId, 2500);
  }

  /** The merchant wins a dispute: Stripe gives the money back (delivered in any order with its creation). */
  private winDispute() {
    const candidates = [...this.payments.values()].filter((p) => p.disputes.some((d) => !d.won));
    if (candidates.length === 0) return;
    const payment = this.pick(candidates);
    const dispute = payment.disputes.find((d) => !d.won)!;
    dispute.won = true;
    this.stats.disputesWon++;
    this.emit(
      'charge.dispute.funds_reinstated',
      { ...dispute.object, status: 'won' },
      payment.purchaseId,
      2500,
    );
  }

  /**
   * Queues an event for delivery after a random delay in [minDelay, maxDelay): at least twice under its id,
   * sometimes also under a second id (Stripe may send an event again, and several events for one payment).
   */
  private emit(type: string, object: Json, purchaseId: string, maxDelay: number, minDelay = 0) {
    const { stripe, seed } = this.options;
    const random = this.draw;
    const copies = random() < 0.2 ? 3 : 2;
    const ids = random() < 0.3 ? 2 : 1;
    for (let i = 0; i < ids; i++) {
      const event = stripe.event(type, object, `evt_chaos${seed}_${++this.eventSequence}`);
      const payload = JSON.stringify(event, null, 2);
      this.emitted.set(event.id as string, type);
      this.stats.events++;
      if (i > 0) this.stats.secondEventIds++;
      for (let copy = 0; copy < copies; copy++) {
        if (copy > 0) this.stats.duplicateDeliveries++;
        this.deliveries.push({
          eventId: event.id as string,
          type,
          purchaseId,
          payload,
          due: Date.now() + minDelay + random() * (maxDelay - minDelay),
          attempts: 0,
          acknowledged: false,
          inFlight: false,
        });
      }
    }
  }

  private async deliverLoop(keepGoing: () => boolean, timeoutMs: number) {
    const random = this.options.deliveryRandom;
    while (keepGoing()) {
      const now = Date.now();
      const due = this.deliveries.filter((d) => !d.acknowledged && !d.inFlight && d.due <= now);
      if (due.length === 0) {
        await sleep(50);
        continue;
      }
      const delivery = this.pick(due, random);
      delivery.inFlight = true;
      delivery.attempts++;
      this.stats.deliveries++;
      if (delivery.attempts > 1) this.stats.redeliveries++;
      const status = await this.post(
        this.pick(this.options.callOptions.baseUrls, random),
        delivery,
        timeoutMs,
      );
      delivery.inFlight = false;
      if (typeof status === 'number' && status >= 200 && status < 300) {
        delivery.acknowledged = true;
        delivery.acknowledgedAt = Date.now() - this.startedAt;
      } else delivery.due = Date.now() + Math.min(250 * delivery.attempts, 2000) * (0.5 + random());
    }
  }

  /** One delivery as Stripe makes it: the same bytes each time, signed anew with the current timestamp. */
  private async post(baseUrl: string, delivery: Delivery, timeoutMs: number): Promise<number | string> {
    try {
      const response = await fetch(`${baseUrl}/api/v1/webhooks/stripe`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json; charset=utf-8',
          'user-agent': 'Stripe/1.0 (+https://stripe.com/docs/webhooks)',
          'stripe-signature': this.options.stripe.sign(delivery.payload),
        },
        body: delivery.payload,
        signal: AbortSignal.timeout(timeoutMs),
      });
      await response.text();
      return response.status;
    } catch (error) {
      return error instanceof Error ? error.name : 'error';
    }
  }

  /** For a violation: the purchase's call, its row, and when each of its events was first acknowledged. */
  private story(
    purchaseId: string,
    row:
      | { stripe_payment_intent_id: string | null; stripe_charge_id: string | null; status: string }
      | undefined,
  ) {
    const call = this.purchases.find((op) => op.result?.purchaseId === purchaseId);
    const acknowledged = new Map<string, { type: string; at: number }>();
    for (const d of this.deliveries) {
      if (d.purchaseId !== purchaseId || d.acknowledgedAt === undefined) continue;
      const first = acknowledged.get(d.eventId);
      if (!first || d.acknowledgedAt < first.at)
        acknowledged.set(d.eventId, { type: d.type, at: d.acknowledgedAt });
    }
    const events = [...acknowledged.entries()]
      .sort((a, b) => a[1].at - b[1].at)
      .map(([id, e]) => `${e.type} ${id} @${(e.at / 1000).toFixed(1)}s`);
    return `[call ${call ? `${call.id} ok` : 'not acknowledged'}; row ${row ? `${row.status}, intent ${row.stripe_payment_intent_id}, charge ${row.stripe_charge_id}` : 'missing'}; first acknowledged: ${events.join(', ')}]`;
  }

  /**
   * After every delivery was acknowledged: each paid purchase credited exactly once with its package's credits,
   * no other purchase credited, reversals recorded once and clawed back at most once each and never beyond the
   * purchase, the keyless purchase calls within ≤ bounds. Returns the violations and, per user, what Stripe
   * moved (credits bought minus credits clawed back) for the balance check.
   */
  async check(db: Kysely<Database>): Promise<{ violations: string[]; balanceDelta: Map<string, number> }> {
    const violations: string[] = [];
    const balanceDelta = new Map<string, number>();
    const adjust = (userId: string, delta: number) =>
      balanceDelta.set(userId, (balanceDelta.get(userId) ?? 0) + delta);
    const packages = new Map(this.options.packages.map((p) => [p.id, p]));

    const unacknowledged = this.deliveries.filter((d) => !d.acknowledged);
    for (const d of unacknowledged.slice(0, 10))
      violations.push(`webhook ${d.eventId} (${d.type}) never acknowledged after ${d.attempts} deliveries`);
    if (unacknowledged.length > 10) violations.push(`… ${unacknowledged.length - 10} more unacknowledged`);
    const recorded = new Set(
      (await db.selectFrom('credits.stripe_events').select('id').execute()).map((row) => row.id),
    );
    for (const [eventId, type] of this.emitted) {
      if (!recorded.has(eventId) && this.deliveries.some((d) => d.eventId === eventId && d.acknowledged))
        violations.push(`webhook ${eventId} (${type}) acknowledged but not recorded in stripe_events`);
    }

    const purchases = new Map(
      (await db.selectFrom('credits.purchases').selectAll().execute()).map((row) => [row.id, row]),
    );
    const ledger = await db
      .selectFrom('credits.transactions')
      .select(['id', 'user_id', 'type', 'amount', 'idempotency_key', 'metadata'])
      .where('type', 'in', ['purchase', 'clawback'])
      .execute();
    const reversals = await db.selectFrom('credits.purchase_reversals').selectAll().execute();
    const rowsOf = new Map<string, { purchase: typeof ledger; clawback: typeof ledger }>();
    for (const row of ledger) {
      const metadata = row.metadata as { purchaseId?: unknown } | null;
      const purchaseId =
        typeof metadata?.purchaseId === 'string'
          ? metadata.purchaseId
          : SYSTEM_KEY.exec(row.idempotency_key ?? '')?.[1];
      if (!purchaseId) {
        violations.push(`${row.type} ledger row ${row.id} names no purchase`);
        continue;
      }
      const entry = rowsOf.get(purchaseId) ?? { purchase: [], clawback: [] };
      entry[row.type as 'purchase' | 'clawback'].push(row);
      rowsOf.set(purchaseId, entry);
      if (row.type === 'clawback') adjust(row.user_id, row.amount);
    }

    // The keyless calls: every acknowledged purchase exists as answered; per user, the purchases in the
    // database are at least the acknowledged calls and at most those plus the calls with unknown outcome.
    const perUser = new Map<string, { ok: number; unknown: number }>();
    for (const op of this.purchases) {
      const counts = perUser.get(op.actor) ?? { ok: 0, unknown: 0 };
      if (op.outcome === 'ok') counts.ok++;
      if (op.outcome === 'unknown') counts.unknown++;
      perUser.set(op.actor, counts);
      if (op.outcome !== 'ok') continue;
      const row = purchases.get(op.result?.purchaseId as string);
      const pack = packages.get(op.input.packageId as string)!;
      if (!row || row.user_id !== op.actor || row.credits !== pack.credits) {
        violations.push(
          `${op.id} purchase ${op.result?.purchaseId} acknowledged; database has ${row ? `${row.user_id}/${row.credits}` : 'nothing'}`,
        );
      }
    }
    const inDatabase = new Map<string, number>();
    for (const row of purchases.values()) {
      // Automatic purchases (auto top-up) answer no call; ./auto-top-up.ts checks them.
      if (typeof (row.metadata as Json | null)?.autoTopUpAttemptId === 'string') continue;
      inDatabase.set(row.user_id, (inDatabase.get(row.user_id) ?? 0) + 1);
    }
    for (const [userId, { ok, unknown }] of perUser) {
      const count = inDatabase.get(userId) ?? 0;
      if (count < ok || count > ok + unknown)
        violations.push(`${userId}: ${count} purchases, calls allow ${ok}..${ok + unknown}`);
    }
    for (const [userId, count] of inDatabase)
      if (!perUser.has(userId)) violations.push(`${userId}: ${count} purchases without any purchase call`);

    // What Stripe did, purchase by purchase.
    const paidPurchases = new Set<string>();
    for (const intent of this.options.stripe.paymentIntents.values()) {
      const purchaseId = (intent.metadata as Json | undefined)?.purchaseId as string | undefined;
      if (!purchaseId) continue;
      const row = purchases.get(purchaseId);
      const payment = this.payments.get(intent.id as string);
      const rows = rowsOf.get(purchaseId) ?? { purchase: [], clawback: [] };
      if (!row) {
        violations.push(`intent ${intent.id} names purchase ${purchaseId}, not in the database`);
        continue;
      }
      if (!payment) {
        if (row.status === 'completed' || rows.purchase.length > 0)
          violations.push(
            `purchase ${purchaseId} never paid but ${row.status} with ${rows.purchase.length} purchase rows`,
          );
        continue;
      }
      paidPurchases.add(purchaseId);
      const pack = packages.get(payment.packageId)!;
      const credited = rows.purchase;
      if (
        row.status !== 'completed' ||
        credited.length !== 1 ||
        credited[0]!.amount !== pack.credits ||
        credited[0]!.user_id !== payment.userId
      ) {
        violations.push(
          `purchase ${purchaseId} paid (${pack.credits} credits for ${payment.userId}): status ${row.status}, purchase rows ${JSON.stringify(credited.map((r) => [r.user_id, r.amount]))} ${this.story(purchaseId, row)}`,
        );
      }
      adjust(payment.userId, pack.credits);

      // Reversals: the refund's share at its final cumulative amount plus each dispute's the merchant did not
      // win, at most the purchase.
      const refundCredits = share(pack.credits, payment.refunded, payment.price);
      const standing = payment.disputes.filter((d) => !d.won);
      const disputeCredits = standing.map((d) =>
        share(pack.credits, Math.min(d.amount, payment.price), payment.price),
      );
      // Each share is rounded down on its own, but never below the share of all the money returned (rounded once).
      const returnedCents = payment.refunded + standing.reduce((sum, d) => sum + d.amount, 0);
      const claimed = Math.min(
        pack.credits,
        Math.max(
          refundCredits + disputeCredits.reduce((sum, credits) => sum + credits, 0),
          share(pack.credits, Math.min(returnedCents, payment.price), payment.price),
        ),
      );
      const own = reversals.filter((r) => r.purchase_id === purchaseId);
      const refundsDue = own.filter((r) => r.kind === 'refund').reduce((sum, r) => sum + r.credits_due, 0);
      if (refundsDue !== refundCredits)
        violations.push(
          `purchase ${purchaseId}: refunded ${payment.refunded}/${payment.price} cents = ${refundCredits} credits, reversals claim ${refundsDue} ${this.story(purchaseId, row)}`,
        );
      for (const dispute of payment.disputes) {
        const recordedDisputes = own.filter((r) => r.kind === 'dispute' && r.stripe_object_id === dispute.id);
        if (recordedDisputes.length !== 1)
          violations.push(
            `purchase ${purchaseId}: dispute ${dispute.id} recorded ${recordedDisputes.length} times ${this.story(purchaseId, row)}`,
          );
      }
      // Net of what won disputes gave back (positive clawback rows, one per win at most).
      const clawedBack = -rows.clawback.reduce((sum, r) => sum + r.amount, 0);
      const givenBack = rows.clawback.reduce((sum, r) => sum + Math.max(r.amount, 0), 0);
      if (
        clawedBack !== row.clawed_back_credits ||
        givenBack !== row.returned_credits ||
        row.clawed_back_credits + row.unrecovered_credits !== claimed ||
        clawedBack > pack.credits ||
        rows.clawback.length > own.length + payment.disputes.length - standing.length
      ) {
        violations.push(
          `purchase ${purchaseId}: Stripe reversed ${claimed} of ${pack.credits} credits (${own.length} reversals); clawback rows ${clawedBack} in ${rows.clawback.length}, purchase says clawed back ${row.clawed_back_credits} + unrecovered ${row.unrecovered_credits} ${this.story(purchaseId, row)}`,
        );
      }
    }
    for (const [purchaseId, rows] of rowsOf) {
      if (!paidPurchases.has(purchaseId) && (rows.purchase.length > 0 || rows.clawback.length > 0))
        violations.push(
          `purchase ${purchaseId} was never paid but has ${rows.purchase.length} purchase and ${rows.clawback.length} clawback rows`,
        );
    }
    return { violations, balanceDelta };
  }
}
