import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import Stripe from 'stripe';

/**
 * A local server speaking Stripe's API for the calls mana-credits makes (customers, payment intents — also
 * confirmed off-session with a saved card —, checkout sessions, setup intents, payment methods): form-encoded bodies in, Stripe-shaped JSON out, bearer-key auth, and Idempotency-Key honoured
 * the way Stripe does (same key + same body → the stored response replayed; same key + other body → 400).
 * It also plays Stripe's side of payments — paying, failing, refunding, disputing — and delivers the
 * resulting events as signed webhooks.
 */

type Json = Record<string, unknown>;

export interface RecordedRequest {
  method: string;
  path: string;
  idempotencyKey: string | undefined;
  body: Json;
  replayed: boolean;
}

/**
 * - ok: answer normally
 * - failing: 500 api_error (outcome unknown to the caller)
 * - refusing: 400 invalid_request_error (nothing created)
 * - unreachable: drop every connection without answering
 * - lose-first-response: perform the call, then drop the connection before answering (once per key)
 * - lose-responses: perform the call (or replay it, for a key seen before), then drop the connection before
 *   answering, every time: the caller never learns what Stripe did
 */
export type StripeServerMode =
  | 'ok'
  | 'failing'
  | 'refusing'
  | 'unreachable'
  | 'lose-first-response'
  | 'lose-responses';

/**
 * How a saved test card behaves when charged (like Stripe's test cards): `ok` pays, `declined` is refused
 * with card_declined, `requires_action` needs the customer (3-D Secure): authentication_required off-session.
 */
export type TestCardBehaviour = 'ok' | 'declined' | 'requires_action';

const newId = (prefix: string) => `${prefix}_${randomBytes(12).toString('hex')}`;

/** Decodes Stripe's form encoding (qs style: `a[b][0][c]=v`) into nested objects and arrays of strings. */
export function decodeForm(body: string): Json {
  const root: Json = {};
  for (const [name, value] of new URLSearchParams(body)) {
    const path = name.split(/\[|\]\[|\]/).filter((part, index) => index === 0 || part !== '');
    let node: Record<string, unknown> | unknown[] = root;
    path.forEach((segment, index) => {
      const last = index === path.length - 1;
      const key = /^\d+$/.test(segment) && Array.isArray(node) ? Number(segment) : segment;
      const container = node as Record<string | number, unknown>;
      if (last) {
        container[key] = value;
        return;
      }
      if (container[key] === undefined) container[key] = /^\d+$/.test(path[index + 1] ?? '') ? [] : {};
      node = container[key] as Record<string, unknown> | unknown[];
    });
  }
  return root;
}

const now = () => Math.floor(Date.now() / 1000);

export class TestStripeServer {
  readonly url: string;
  readonly secretKey = `sk_test_${randomBytes(12).toString('hex')}`;
  readonly webhookSecret = `whsec_${randomBytes(16).toString('hex')}`;
  mode: StripeServerMode = 'ok';
  readonly requests: RecordedRequest[] = [];
  readonly customers = new Map<string, Json>();
  readonly paymentIntents = new Map<string, Json>();
  readonly sessions = new Map<string, Json>();
  readonly charges = new Map<string, Json>();
  readonly setupIntents = new Map<string, Json>();
  readonly paymentMethods = new Map<string, Json>();
  /** How each saved card behaves when charged. */
  readonly cardBehaviour = new Map<string, TestCardBehaviour>();
  /** Prices known to this account, by id (for Checkout line items that name a price). */
  readonly prices = new Map<string, { unit_amount: number; currency: string }>();
  private readonly idempotent = new Map<string, { fingerprint: string; status: number; body: Json }>();
  /** While held (hold()), requests wait here unanswered, as on a slow Stripe; release() answers them. */
  private held: (() => void)[] | undefined;
  /** What each session's PaymentIntent will carry (payment_intent_data), created when the session is paid. */
  private readonly sessionIntentData = new Map<string, Json>();

  private constructor(private readonly server: Server) {
    const { port } = server.address() as AddressInfo;
    this.url = `http://127.0.0.1:${port}`;
  }

  static async start(): Promise<TestStripeServer> {
    let instance: TestStripeServer | undefined;
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', () => {
        const answer = () => instance?.handle(req, res, Buffer.concat(chunks).toString('utf8'));
        if (instance?.held) instance.held.push(answer);
        else answer();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    instance = new TestStripeServer(server);
    return instance;
  }

  /** Requests from now on wait unanswered (and unrecorded) until release(). */
  hold(): void {
    this.held ??= [];
  }

  /** Answers the held requests, in arrival order, and answers at once again. */
  release(): void {
    const held = this.held ?? [];
    this.held = undefined;
    for (const answer of held) answer();
  }

  /** How many requests are waiting for release(). */
  get heldCount(): number {
    return this.held?.length ?? 0;
  }

  requestsTo(path: string): RecordedRequest[] {
    return this.requests.filter((request) => request.path === path);
  }

  private send(res: ServerResponse, status: number, body: Json, replayed = false) {
    res
      .writeHead(status, {
        'content-type': 'application/json',
        'request-id': newId('req'),
        ...(replayed ? { 'idempotent-replayed': 'true' } : {}),
      })
      .end(JSON.stringify(body));
  }

  private error(res: ServerResponse, status: number, type: string, message: string, code?: string) {
    this.send(res, status, { error: { type, message, ...(code ? { code } : {}) } });
  }

  private handle(req: IncomingMessage, res: ServerResponse, raw: string) {
    if (this.mode === 'unreachable') {
      req.socket.destroy();
      return;
    }
    const url = new URL(req.url ?? '/', this.url);
    const path = url.pathname;
    const method = req.method ?? 'GET';
    const idempotencyKey =
      typeof req.headers['idempotency-key'] === 'string' ? req.headers['idempotency-key'] : undefined;
    // A GET carries its parameters in the query string, in the same encoding.
    const body = decodeForm(method === 'GET' ? url.search.slice(1) : raw);
    if (req.headers.authorization !== `Bearer ${this.secretKey}`) {
      this.error(res, 401, 'invalid_request_error', 'Invalid API Key provided');
      return;
    }
    const cacheKey = idempotencyKey ? `${method} ${path} ${idempotencyKey}` : undefined;
    const cached = cacheKey ? this.idempotent.get(cacheKey) : undefined;
    this.requests.push({ method, path, idempotencyKey, body, replayed: cached !== undefined });
    if (cached) {
      if (cached.fingerprint !== raw) {
        this.error(
          res,
          400,
          'idempotency_error',
          'Keys for idempotent requests can only be used with the same parameters they were first used with.',
        );
        return;
      }
      if (this.mode === 'lose-responses') {
        req.socket.destroy();
        return;
      }
      this.send(res, cached.status, cached.body, true);
      return;
    }
    if (this.mode === 'failing') {
      this.error(res, 500, 'api_error', 'An unknown error occurred');
      return;
    }
    if (this.mode === 'refusing') {
      this.error(res, 400, 'invalid_request_error', 'This request was refused', 'parameter_invalid');
      return;
    }
    const answer = this.route(method, path, body);
    if (cacheKey && answer.status !== 500) {
      this.idempotent.set(cacheKey, { fingerprint: raw, ...answer });
    }
    if (this.mode === 'lose-first-response' || this.mode === 'lose-responses') {
      req.socket.destroy();
      return;
    }
    this.send(res, answer.status, answer.body);
  }

  private route(method: string, path: string, body: Json): { status: number; body: Json } {
    if (method === 'POST' && path === '/v1/customers')
      return { status: 200, body: this.createCustomer(body) };
    if (method === 'POST' && path === '/v1/payment_intents') return this.createPaymentIntent(body);
    if (method === 'GET' && path === '/v1/payment_intents/search') return this.searchPaymentIntents(body);
    const intentId = /^\/v1\/payment_intents\/([^/]+)$/.exec(path)?.[1];
    if (method === 'GET' && intentId) {
      const intent = this.paymentIntents.get(intentId);
      if (intent) return { status: 200, body: structuredClone(intent) };
      const message = `No such payment_intent: '${intentId}'`;
      return {
        status: 404,
        body: { error: { type: 'invalid_request_error', code: 'resource_missing', message } },
      };
    }
    if (method === 'POST' && path === '/v1/checkout/sessions') return this.createSession(body);
    const expiringId = /^\/v1\/checkout\/sessions\/([^/]+)\/expire$/.exec(path)?.[1];
    if (method === 'POST' && expiringId) {
      const session = this.sessions.get(expiringId);
      if (!session)
        return invalid('session', `No such checkout.session: '${expiringId}'`, 'resource_missing', 404);
      if (session.status !== 'open') return invalid('session', 'Only open sessions can be expired.');
      session.status = 'expired';
      return { status: 200, body: structuredClone(session) };
    }
    if (method === 'POST' && path === '/v1/setup_intents') return this.createSetupIntent(body);
    const methodId = /^\/v1\/payment_methods\/([^/]+)$/.exec(path)?.[1];
    if (method === 'GET' && methodId) {
      const paymentMethod = this.paymentMethods.get(methodId);
      if (paymentMethod) return { status: 200, body: structuredClone(paymentMethod) };
      return invalid('id', `No such PaymentMethod: '${methodId}'`, 'resource_missing', 404);
    }
    const detachId = /^\/v1\/payment_methods\/([^/]+)\/detach$/.exec(path)?.[1];
    if (method === 'POST' && detachId) {
      if (!this.paymentMethods.has(detachId))
        return invalid('id', `No such PaymentMethod: '${detachId}'`, 'resource_missing', 404);
      return { status: 200, body: this.detachPaymentMethod(detachId) };
    }
    return {
      status: 404,
      body: {
        error: { type: 'invalid_request_error', message: `Unrecognized request URL (${method}: ${path})` },
      },
    };
  }

  private createCustomer(body: Json): Json {
    const customer = {
      id: newId('cus'),
      object: 'customer',
      created: now(),
      email: body.email ?? null,
      name: body.name ?? null,
      metadata: body.metadata ?? {},
      livemode: false,
    };
    this.customers.set(customer.id, customer);
    return customer;
  }

  private createPaymentIntent(body: Json): { status: number; body: Json } {
    const amount = Number(body.amount);
    if (!Number.isInteger(amount) || amount < 50) {
      return invalid('amount', 'Amount must be at least €0.50 eur');
    }
    const paymentMethodId = typeof body.payment_method === 'string' ? body.payment_method : null;
    const paymentMethod = paymentMethodId ? this.paymentMethods.get(paymentMethodId) : undefined;
    if (paymentMethodId && !paymentMethod)
      return invalid('payment_method', `No such PaymentMethod: '${paymentMethodId}'`, 'resource_missing');
    if (paymentMethod && paymentMethod.customer !== body.customer) {
      return invalid(
        'payment_method',
        'The provided PaymentMethod is not attached to this customer.',
        'payment_method_unexpected_state',
      );
    }
    const intent = this.newIntent({
      amount,
      currency: String(body.currency),
      customer: body.customer ?? null,
      description: body.description ?? null,
      metadata: body.metadata ?? {},
      allowed_payment_method_types: body.allowed_payment_method_types ?? null,
      payment_method: paymentMethodId,
      ...(body.off_session !== undefined ? { off_session: body.off_session === 'true' } : {}),
    });
    if (body.confirm !== 'true') return { status: 200, body: intent };
    if (!paymentMethodId) return invalid('payment_method', 'A payment method is needed to confirm.');
    return this.confirmIntent(intent.id as string, body.off_session === 'true');
  }

  /** Confirms a PaymentIntent with its payment method, as the card's behaviour says. */
  private confirmIntent(id: string, offSession: boolean): { status: number; body: Json } {
    const intent = this.mustGet(this.paymentIntents, id);
    const behaviour = this.cardBehaviour.get(intent.payment_method as string) ?? 'ok';
    if (behaviour === 'ok') return { status: 200, body: this.succeedPaymentIntent(id) };
    if (behaviour === 'requires_action' && !offSession) {
      Object.assign(intent, { status: 'requires_action', next_action: { type: 'use_stripe_sdk' } });
      return { status: 200, body: structuredClone(intent) };
    }
    const code = behaviour === 'declined' ? 'card_declined' : 'authentication_required';
    const message =
      behaviour === 'declined'
        ? 'Your card was declined.'
        : 'Your card was declined. This transaction requires authentication.';
    const lastError = {
      type: 'card_error',
      code,
      ...(behaviour === 'declined' ? { decline_code: 'generic_decline' } : {}),
      message,
    };
    Object.assign(intent, { status: 'requires_payment_method', last_payment_error: lastError });
    return {
      status: 402,
      body: { error: { ...lastError, payment_intent: structuredClone(intent) } },
    };
  }

  /**
   * Stripe's search, for the one kind of query the service sends: `metadata['key']:'value'` clauses joined by
   * AND (anything else is refused, as Stripe refuses what it cannot parse): how the service finds a payment
   * it may have made when none of its answers arrived.
   */
  private searchPaymentIntents(body: Json): { status: number; body: Json } {
    const query = String(body.query ?? '');
    const clauses = query.split(/\s+AND\s+/);
    const wanted: [string, string][] = [];
    for (const clause of clauses) {
      const match = /^metadata\['([^']+)'\]:'([^']*)'$/.exec(clause.trim());
      if (!match) return invalid('query', `Unsupported search query: ${query}`);
      wanted.push([match[1] as string, match[2] as string]);
    }
    const data = [...this.paymentIntents.values()]
      .filter((intent) =>
        wanted.every(([key, value]) => (intent.metadata as Record<string, string>)?.[key] === value),
      )
      .map((intent) => structuredClone(intent));
    return {
      status: 200,
      body: {
        object: 'search_result',
        data,
        has_more: false,
        next_page: null,
        url: '/v1/payment_intents/search',
      },
    };
  }

  private createSetupIntent(body: Json): { status: number; body: Json } {
    if (typeof body.customer !== 'string' || !this.customers.has(body.customer))
      return invalid('customer', `No such customer: '${String(body.customer)}'`, 'resource_missing');
    const id = newId('seti');
    const intent = {
      id,
      object: 'setup_intent',
      client_secret: `${id}_secret_${randomBytes(12).toString('hex')}`,
      created: now(),
      customer: body.customer,
      livemode: false,
      metadata: body.metadata ?? {},
      payment_method: null,
      payment_method_types: body.allowed_payment_method_types ?? body.payment_method_types ?? ['card'],
      status: 'requires_payment_method',
      usage: body.usage ?? 'off_session',
    };
    this.setupIntents.set(id, intent);
    return { status: 200, body: structuredClone(intent) };
  }

  private newIntent(fields: Json & { amount: number; currency: string }): Json {
    const id = newId('pi');
    const intent = {
      id,
      object: 'payment_intent',
      amount_received: 0,
      client_secret: `${id}_secret_${randomBytes(12).toString('hex')}`,
      created: now(),
      latest_charge: null,
      livemode: false,
      payment_method_types: fields.allowed_payment_method_types ?? ['card'],
      status: 'requires_payment_method',
      ...fields,
    };
    this.paymentIntents.set(id, intent);
    return intent;
  }

  private createSession(body: Json): { status: number; body: Json } {
    const items = (body.line_items ?? []) as Json[];
    if (items.length !== 1)
      return invalid('line_items', 'Exactly one line item expected by this test server');
    const item = items[0] as Json;
    const quantity = Number(item.quantity ?? 1);
    let unitAmount: number;
    let currency: string;
    if (typeof item.price === 'string') {
      const price = this.prices.get(item.price);
      if (!price)
        return invalid('line_items[0][price]', `No such price: '${item.price}'`, 'resource_missing');
      unitAmount = price.unit_amount;
      currency = price.currency;
    } else {
      const data = item.price_data as Json | undefined;
      if (!data) return invalid('line_items[0]', 'price or price_data is required');
      unitAmount = Number(data.unit_amount);
      currency = String(data.currency);
    }
    for (const field of ['success_url', 'cancel_url']) {
      if (typeof body[field] !== 'string') return invalid(field, `Missing required param: ${field}.`);
    }
    const id = newId('cs_test');
    const session = {
      id,
      object: 'checkout.session',
      amount_subtotal: unitAmount * quantity,
      amount_total: unitAmount * quantity,
      cancel_url: body.cancel_url,
      client_reference_id: body.client_reference_id ?? null,
      created: now(),
      currency,
      customer: body.customer ?? null,
      livemode: false,
      metadata: body.metadata ?? {},
      mode: body.mode,
      payment_intent: null,
      payment_method_types: body.allowed_payment_method_types ?? ['card'],
      payment_status: 'unpaid',
      status: 'open',
      success_url: body.success_url,
      url: `https://checkout.stripe.test/c/pay/${id}`,
    };
    this.sessions.set(id, session);
    this.sessionIntentData.set(id, (body.payment_intent_data ?? {}) as Json);
    return { status: 200, body: session };
  }

  // ---- Stripe's side of a payment: each returns a snapshot of the object as an event would carry it ----

  /** The payment of a PaymentIntent succeeds: a charge is created and becomes its latest charge. */
  succeedPaymentIntent(id: string): Json {
    const intent = this.mustGet(this.paymentIntents, id);
    const charge = {
      id: newId('ch'),
      object: 'charge',
      amount: intent.amount,
      amount_captured: intent.amount,
      amount_refunded: 0,
      captured: true,
      created: now(),
      currency: intent.currency,
      customer: intent.customer ?? null,
      disputed: false,
      livemode: false,
      metadata: {},
      paid: true,
      payment_intent: id,
      refunded: false,
      status: 'succeeded',
    };
    this.charges.set(charge.id, charge);
    Object.assign(intent, { status: 'succeeded', amount_received: intent.amount, latest_charge: charge.id });
    return structuredClone(intent);
  }

  failPaymentIntent(id: string): Json {
    const intent = this.mustGet(this.paymentIntents, id);
    Object.assign(intent, {
      status: 'requires_payment_method',
      last_payment_error: { type: 'card_error', code: 'card_declined', message: 'Your card was declined.' },
    });
    return structuredClone(intent);
  }

  /**
   * The customer finishes Checkout. Paid: its PaymentIntent (carrying payment_intent_data) succeeds. Unpaid: a
   * delayed method like SEPA, still processing; `settleSession` later decides.
   */
  completeSession(id: string, paymentStatus: 'paid' | 'unpaid' = 'paid'): { session: Json; intent: Json } {
    const session = this.mustGet(this.sessions, id);
    const data = this.sessionIntentData.get(id) ?? {};
    const intent = this.newIntent({
      amount: session.amount_total as number,
      currency: session.currency as string,
      customer: session.customer ?? null,
      description: data.description ?? null,
      metadata: data.metadata ?? {},
    });
    Object.assign(session, { status: 'complete', payment_status: paymentStatus, payment_intent: intent.id });
    const paidIntent = paymentStatus === 'paid' ? this.succeedPaymentIntent(intent.id as string) : intent;
    return { session: structuredClone(session), intent: structuredClone(paidIntent) };
  }

  /** A delayed payment of a completed session settles. */
  settleSession(id: string, paid: boolean): { session: Json; intent: Json } {
    const session = this.mustGet(this.sessions, id);
    const intentId = session.payment_intent as string;
    session.payment_status = paid ? 'paid' : 'unpaid';
    const intent = paid ? this.succeedPaymentIntent(intentId) : this.failPaymentIntent(intentId);
    return { session: structuredClone(session), intent };
  }

  expireSession(id: string): Json {
    const session = this.mustGet(this.sessions, id);
    Object.assign(session, { status: 'expired', url: null });
    return structuredClone(session);
  }

  /** Refunds `amount` more of a charge; `amount_refunded` is cumulative, as in Stripe. */
  refundCharge(id: string, amount: number): Json {
    const charge = this.mustGet(this.charges, id);
    const refunded = (charge.amount_refunded as number) + amount;
    if (refunded > (charge.amount as number)) throw new Error('refund exceeds the charge');
    Object.assign(charge, { amount_refunded: refunded, refunded: refunded === charge.amount });
    return structuredClone(charge);
  }

  disputeCharge(id: string, amount?: number): Json {
    const charge = this.mustGet(this.charges, id);
    charge.disputed = true;
    return {
      id: newId('dp'),
      object: 'dispute',
      amount: amount ?? charge.amount,
      charge: id,
      created: now(),
      currency: charge.currency,
      livemode: false,
      metadata: {},
      payment_intent: charge.payment_intent,
      reason: 'fraudulent',
      status: 'needs_response',
    };
  }

  /**
   * The customer confirms a SetupIntent with a card: a payment method is made and attached to the intent's
   * customer. Returns the intent as setup_intent.succeeded carries it (payment_method as an id).
   */
  succeedSetupIntent(
    id: string,
    card: { brand?: string; last4?: string; behaviour?: TestCardBehaviour } = {},
  ): Json {
    const intent = this.mustGet(this.setupIntents, id);
    const paymentMethod = {
      id: newId('pm'),
      object: 'payment_method',
      type: 'card',
      card: { brand: card.brand ?? 'visa', last4: card.last4 ?? '4242', exp_month: 12, exp_year: 2030 },
      created: now(),
      customer: intent.customer,
      livemode: false,
      metadata: {},
    };
    this.paymentMethods.set(paymentMethod.id, paymentMethod);
    this.cardBehaviour.set(paymentMethod.id, card.behaviour ?? 'ok');
    Object.assign(intent, { status: 'succeeded', payment_method: paymentMethod.id });
    return structuredClone(intent);
  }

  /** The payment method leaves its customer; returns it as payment_method.detached carries it. */
  detachPaymentMethod(id: string): Json {
    const paymentMethod = this.mustGet(this.paymentMethods, id);
    paymentMethod.customer = null;
    return structuredClone(paymentMethod);
  }

  /** The PaymentIntents created with this metadata value of `purchaseId`. */
  intentsOfPurchase(purchaseId: string): Json[] {
    return [...this.paymentIntents.values()].filter(
      (intent) => (intent.metadata as Record<string, string> | undefined)?.purchaseId === purchaseId,
    );
  }

  chargeOf(intentId: string): Json {
    const intent = this.mustGet(this.paymentIntents, intentId);
    return structuredClone(this.mustGet(this.charges, intent.latest_charge as string));
  }

  private mustGet(map: Map<string, Json>, id: string): Json {
    const value = map.get(id);
    if (!value) throw new Error(`test stripe server: no object ${id}`);
    return value;
  }

  // ---- events and webhooks ----

  event(type: string, object: Json, id = newId('evt')): Json {
    return {
      id,
      object: 'event',
      api_version: Stripe.API_VERSION,
      created: now(),
      data: { object: structuredClone(object) },
      livemode: false,
      pending_webhooks: 1,
      request: { id: null, idempotency_key: null },
      type,
    };
  }

  /** Stripe's signature header for `payload`, by the real scheme. */
  sign(payload: string, options: { timestamp?: number; secret?: string } = {}): string {
    return Stripe.webhooks.generateTestHeaderString({
      payload,
      secret: options.secret ?? this.webhookSecret,
      ...(options.timestamp !== undefined ? { timestamp: options.timestamp } : {}),
    });
  }

  /**
   * POSTs `event` to the app's webhook as Stripe does (pretty-printed JSON, signed). `payload` replaces the
   * bytes sent while keeping the signature of the original; `signature: null` sends no header.
   */
  async deliver(
    appUrl: string,
    event: Json,
    options: { timestamp?: number; secret?: string; payload?: string; signature?: string | null } = {},
  ): Promise<{ status: number; body: Json }> {
    const signed = JSON.stringify(event, null, 2);
    const signature = options.signature === undefined ? this.sign(signed, options) : options.signature;
    const response = await fetch(`${appUrl}/api/v1/webhooks/stripe`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json; charset=utf-8',
        'user-agent': 'Stripe/1.0 (+https://stripe.com/docs/webhooks)',
        ...(signature === null ? {} : { 'stripe-signature': signature }),
      },
      body: options.payload ?? signed,
    });
    const text = await response.text();
    return { status: response.status, body: text ? (JSON.parse(text) as Json) : {} };
  }

  async close() {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

function invalid(
  param: string,
  message: string,
  code = 'parameter_invalid',
  status = 400,
): { status: number; body: Json } {
  return { status, body: { error: { type: 'invalid_request_error', code, message, param } } };
}
