import type { Database } from '@mana-credits/db';
import { type Kysely, sql } from 'kysely';
import { WebhookReceiver } from '../test/helpers/webhook-receiver.ts';
import { type CallOptions, callOnce } from './protocol.ts';

/**
 * Events out under chaos (issue 16): a real local receiver that answers 500 or drops the connection for
 * stretches of the run (healthy at the end), one endpoint created before any traffic, and afterwards the proof
 * that events follow the committed ledger: every event delivered and received with a valid signature under
 * its own id; the balance.* / guild.pool.* events equal, per account, to the crossings recomputed from the
 * ledger by the trigger's rule (functions/balance_alerts.sql); no event naming a transaction the ledger lacks.
 */

/** Environment of the chaos servers for events: short retries so that a flaky receiver still gets everything. */
export function eventsEnv(threshold: number): Record<string, string> {
  return {
    LOW_BALANCE_THRESHOLD: String(threshold),
    WEBHOOK_ALLOW_PRIVATE: 'true',
    WEBHOOK_DELIVERY_INTERVAL_MS: '200',
    WEBHOOK_TIMEOUT_MS: '2000',
    // 20 retries (the most allowed), ~25 s in all: longer than any stretch the receiver is down.
    WEBHOOK_RETRY_SCHEDULE: ['200ms', '500ms', ...Array.from({ length: 18 }, () => '1300ms')].join(','),
  };
}

export class ChaosEvents {
  secret = '';
  endpointId = '';
  readonly modes: Record<string, number> = { ok: 0, failing: 0, down: 0 };

  private constructor(readonly receiver: WebhookReceiver) {}

  static async start(): Promise<ChaosEvents> {
    return new ChaosEvents(await WebhookReceiver.start('/chaos-hooks'));
  }

  /** internal.webhooks.create for every event type, retried until answered (the servers are up, no faults yet). */
  async createEndpoint(options: CallOptions, baseUrl: string): Promise<void> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const answer = await callOnce(
        {
          id: 'webhook-endpoint',
          kind: 'webhooks.create',
          path: 'internal.webhooks.create',
          actor: 'service',
          input: { url: this.receiver.url, description: 'chaos receiver' },
        },
        options,
        baseUrl,
      );
      if (answer.outcome === 'ok') {
        this.secret = answer.result?.secret as string;
        this.endpointId = answer.result?.id as string;
        return;
      }
      if (answer.outcome === 'refused') throw new Error(`webhooks.create refused: ${answer.reason}`);
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error('webhooks.create: no answer');
  }

  /** The receiver's fault: stretches of 500s and of dropped connections until the deadline, then healthy. */
  async faults(random: () => number, deadline: number): Promise<void> {
    while (Date.now() < deadline) {
      const pick = random();
      const mode = pick < 0.6 ? 'ok' : pick < 0.82 ? 'failing' : 'down';
      this.receiver.mode = mode;
      this.modes[mode] = (this.modes[mode] ?? 0) + 1;
      await new Promise((r) =>
        setTimeout(r, Math.min(300 + random() * 2000, Math.max(0, deadline - Date.now()))),
      );
    }
    this.receiver.mode = 'ok';
  }

  /** Waits (bounded) until every event is relayed and delivered to the endpoint; returns how many are not. */
  async waitDelivered(db: Kysely<Database>, timeoutMs: number): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { rows } = await sql<{ open: number }>`
        select count(*)::int as open from credits.events e
         where not exists (select 1 from credits.webhook_deliveries d
                            where d.event_id = e.id and d.webhook_id = ${this.endpointId}
                              and d.status = 'delivered')`.execute(db);
      const open = rows[0]!.open;
      if (open === 0 || Date.now() > deadline) return open;
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  async check(db: Kysely<Database>): Promise<{ violations: string[]; summary: string }> {
    const violations: string[] = [];
    const events = (
      await sql<{
        id: string;
        type: string;
        account: string | null;
        data: Record<string, unknown>;
        delivered: number;
        failed: number;
      }>`
        select e.id, e.type, coalesce(e.user_id, e.guild_id) as account, e.data,
               (select count(*) from credits.webhook_deliveries d
                 where d.event_id = e.id and d.webhook_id = ${this.endpointId} and d.status = 'delivered')::int as delivered,
               (select count(*) from credits.webhook_deliveries d
                 where d.event_id = e.id and d.webhook_id = ${this.endpointId} and d.status = 'failed')::int as failed
          from credits.events e order by e.seq`.execute(db)
    ).rows;

    // (a) delivered, received, signed, under one id.
    const receivedById = new Map<string, number>();
    let badSignatures = 0;
    for (const delivery of this.receiver.received) {
      try {
        const envelope = this.receiver.verify(delivery, this.secret);
        if (envelope.id !== delivery.headers['webhook-id'])
          violations.push(
            `events: envelope ${envelope.id} came with webhook-id ${delivery.headers['webhook-id']}`,
          );
        receivedById.set(envelope.id, (receivedById.get(envelope.id) ?? 0) + 1);
      } catch (error) {
        badSignatures++;
        if (badSignatures <= 3)
          violations.push(
            `events: a delivery did not verify (${error instanceof Error ? error.message : error})`,
          );
      }
    }
    const eventIds = new Set(events.map((e) => e.id));
    for (const event of events) {
      if (event.delivered !== 1 || !receivedById.has(event.id))
        violations.push(
          `events: ${event.type} ${event.id} has ${event.delivered} delivered deliveries (${event.failed} failed), received ${receivedById.get(event.id) ?? 0} times`,
        );
    }
    for (const id of receivedById.keys())
      if (!eventIds.has(id)) violations.push(`events: the receiver got ${id}, which is no event`);

    // (b) the crossings the committed ledger calls for, by the trigger's rule.
    const ledger = (
      await sql<{
        kind: 'user' | 'guild';
        account: string;
        id: string;
        at: string;
        statement: string;
        ctid: string;
        after: number;
        threshold: number | null;
      }>`
        select l.*, t.threshold from (
          select 'user' as kind, user_id as account, id::text, (extract(epoch from created_at) * 1000000)::int8::text as at,
                 xmin::text || '/' || cmin::text as statement, ctid::text, coalesce(available_after, balance_after) as after
            from credits.transactions
          union all
          select 'guild', organization_id, id::text, (extract(epoch from created_at) * 1000000)::int8::text,
                 xmin::text || '/' || cmin::text, ctid::text, coalesce(available_after, balance_after)
            from credits.guild_transactions) l
        cross join lateral credits.alert_threshold(l.kind, l.account) t(threshold)`.execute(db)
    ).rows;
    const ledgerIds = new Set(ledger.map((row) => row.id));
    const accounts = new Map<string, typeof ledger>();
    for (const row of ledger) {
      const key = `${row.kind}:${row.account}`;
      accounts.set(key, [...(accounts.get(key) ?? []), row]);
    }
    const ctidOf = (ctid: string) => ctid.slice(1, -1).split(',').map(Number) as [number, number];
    const expected: string[] = [];
    let batches = 0;
    for (const rows of accounts.values()) {
      const { kind, account } = rows[0]!;
      if (rows[0]!.threshold === null) continue;
      const threshold = Number(rows[0]!.threshold); // int8: a string from pg
      const types =
        kind === 'user'
          ? ['balance.low', 'balance.recovered', 'balance.depleted']
          : ['guild.pool.low', 'guild.pool.recovered', 'guild.pool.depleted'];
      const byStatement = new Map<string, typeof ledger>();
      for (const row of rows)
        byStatement.set(row.statement, [...(byStatement.get(row.statement) ?? []), row]);
      for (const entries of byStatement.values()) {
        if (entries.length > 1) batches++;
        // Entries in created_at order, then the order the statement inserted them (heap order within it).
        entries.sort((a, b) => {
          const at = BigInt(a.at) - BigInt(b.at);
          if (at !== 0n) return at < 0n ? -1 : 1;
          const [ab, ao] = ctidOf(a.ctid);
          const [bb, bo] = ctidOf(b.ctid);
          return ab - bb || ao - bo;
        });
        const firstAt = BigInt(entries[0]!.at);
        const ids = new Set(entries.map((e) => e.id));
        // The last entry before the statement: created_at ≤ its first, not its own, by created_at desc, id desc.
        let previousRow: (typeof ledger)[number] | undefined;
        for (const row of rows) {
          if (ids.has(row.id) || BigInt(row.at) > firstAt) continue;
          if (
            !previousRow ||
            BigInt(row.at) > BigInt(previousRow.at) ||
            (row.at === previousRow.at && row.id > previousRow.id)
          )
            previousRow = row;
        }
        const previous = Number(previousRow?.after ?? 0);
        const first: (number | undefined)[] = [undefined, undefined, undefined];
        let before = previous;
        entries.forEach((entry, i) => {
          const after = Number(entry.after);
          if (before >= threshold && after < threshold) first[0] ??= i;
          else if (before < threshold && after >= threshold) first[1] ??= i;
          if (before > 0 && after === 0) first[2] ??= i;
          before = after;
        });
        first.forEach((i, k) => {
          if (i === undefined) return;
          const prior = i === 0 ? previous : Number(entries[i - 1]!.after);
          expected.push(`${types[k]} ${account} ${entries[i]!.id} ${prior}→${Number(entries[i]!.after)}`);
        });
      }
    }
    const actual = events
      .filter((e) => e.type.startsWith('balance.') || e.type.startsWith('guild.pool.'))
      .map(
        (e) =>
          `${e.type} ${e.account} ${e.data.transactionId} ${Number(e.data.previousAvailable)}→${Number(e.data.available)}`,
      );
    const missing = multisetMinus(expected, actual);
    const extra = multisetMinus(actual, expected);
    if (missing.length > 0)
      violations.push(
        `events: ${missing.length} crossings without their event, e.g. ${missing.slice(0, 3).join('; ')}`,
      );
    if (extra.length > 0)
      violations.push(
        `events: ${extra.length} balance events the ledger does not call for, e.g. ${extra.slice(0, 3).join('; ')}`,
      );

    // (c) every transaction an event names is in the committed ledger.
    const strays = events.filter(
      (e) => typeof e.data.transactionId === 'string' && !ledgerIds.has(e.data.transactionId),
    );
    for (const e of strays.slice(0, 5))
      violations.push(
        `events: ${e.type} ${e.id} names transaction ${e.data.transactionId}, not in the ledger`,
      );
    if (strays.length > 5) violations.push(`events: ${strays.length - 5} more events naming no ledger entry`);

    const byType = new Map<string, number>();
    for (const e of events) byType.set(e.type, (byType.get(e.type) ?? 0) + 1);
    const summary = `events: ${events.length} (${[...byType].map(([t, n]) => `${t} ${n}`).join(', ') || 'none'}), ${expected.length} crossings recomputed from ${ledger.length} ledger rows (${batches} statements of many rows of one account), ${this.receiver.received.length} requests received (${receivedById.size} distinct ids, ${badSignatures} bad signatures); receiver stretches ok ${this.modes.ok}, 500 ${this.modes.failing}, dropped ${this.modes.down}`;
    return { violations, summary };
  }

  close(): Promise<void> {
    return this.receiver.close();
  }
}

function multisetMinus(a: string[], b: string[]): string[] {
  const counts = new Map<string, number>();
  for (const item of b) counts.set(item, (counts.get(item) ?? 0) + 1);
  const rest: string[] = [];
  for (const item of a) {
    const n = counts.get(item) ?? 0;
    if (n > 0) counts.set(item, n - 1);
    else rest.push(item);
  }
  return rest;
}
