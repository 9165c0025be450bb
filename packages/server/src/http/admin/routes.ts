import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import {
  type ActionOutcome,
  adminCancelGift,
  adminGrant,
  adminRefund,
  adminReleaseHold,
  adminSetLimits,
} from '../../domain/admin/actions.ts';
import {
  auditEntry,
  auditLog,
  guildCharts,
  guildOverview,
  type LedgerQuery,
  search,
  userCharts,
  userOverview,
} from '../../domain/admin/views.ts';
import { DomainError, type DomainErrorKind, InvalidRequestError } from '../../domain/errors.ts';
import type { Movement } from '../../metrics.ts';
import { amount, appId, identifier, text, userId } from '../../schemas.ts';
import { sendError } from '../error-reply.ts';
import { adminPath, messagePage, sendPage } from './html.ts';
import { auditPage, guildPage, homePage, type PageContext, searchPage, userPage } from './render.ts';
import { operatorName, type SessionSigner } from './session.ts';

const STATUS: Record<DomainErrorKind, number> = {
  bad_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  payment_required: 402,
  precondition_failed: 412,
  too_many_requests: 429,
  unavailable: 503,
};

// The ids the API takes (schemas.ts userId/guildId): an operator cannot act on an account no user can have.
const accountId = userId;
/** What the search takes: any identifier-like text (it is matched literally, as a prefix). */
const searchText = identifier(200);
const uuid = z.uuid();
const PAGE_SIZE = 50;

/** A form's whole number ('' = absent). */
const wholeNumber = z
  .string()
  .trim()
  .regex(/^\d{1,16}$/, { error: 'must be a whole number' })
  .transform(Number);
const optionalField = <T extends z.ZodType>(schema: T) =>
  z.preprocess((value) => (value === '' || value === null ? undefined : value), schema.optional());

/** Forms post strings; scripts may post JSON numbers: both are accepted. */
const count = z.union([z.number(), wholeNumber]);
const credits = count.pipe(amount);
/** A limit: empty or null = unlimited, else a whole number ≥ 0. */
const limit = z.preprocess(
  (value) => (value === '' || value === undefined ? null : value),
  z.union([z.null(), count.pipe(z.int().min(0).max(Number.MAX_SAFE_INTEGER))]),
);

const actionBase = { reason: text(500), nonce: z.string().max(100), _csrf: z.string().optional() };

const grantBody = z.object({
  ...actionBase,
  amount: credits,
  expiresInDays: optionalField(count.pipe(z.int().min(1).max(3650))),
});
const refundBody = z.object({ ...actionBase, transactionId: uuid, amount: optionalField(credits) });
const plainBody = z.object(actionBase);
const limitsBody = z.object({ ...actionBase, userId: accountId, dailyLimit: limit, monthlyLimit: limit });

function parse<T extends z.ZodType>(schema: T, value: unknown): z.output<T> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const field = issue?.path.join('.') || 'input';
  throw new InvalidRequestError(`${field}: ${issue?.message ?? 'invalid'}`, 'VALIDATION', { field });
}

/** A query string as Fastify parses it: a parameter given twice is an array. */
type Query = Record<string, string | string[] | undefined>;

/** A query parameter given at most once ('' = absent): twice is refused, not guessed. */
const queryValue = <T extends z.ZodType>(schema: T) =>
  z.preprocess((value) => (value === '' ? undefined : value), schema.optional());

const ledgerFilters = z.object({
  type: queryValue(z.string().max(40)),
  app: queryValue(appId),
  // Days are read by the domain (dayStart), which names what is wrong with them.
  from: queryValue(z.string().max(10)),
  to: queryValue(z.string().max(10)),
  member: queryValue(accountId),
  cursor: queryValue(uuid),
});
const searchQuery = z.object({ q: queryValue(z.string()) });
const auditQuery = z.object({ cursor: queryValue(uuid) });

function ledgerQuery(query: Query): LedgerQuery {
  const filters = parse(ledgerFilters, query);
  return {
    type: filters.type,
    appId: filters.app,
    from: filters.from,
    to: filters.to,
    memberId: filters.member,
    cursor: filters.cursor,
    limit: PAGE_SIZE,
  };
}

export function registerConsoleRoutes(admin: FastifyInstance, signer: SessionSigner | undefined): void {
  const { deps } = admin;
  const { db } = deps;

  const contextOf = (request: FastifyRequest): PageContext => {
    const auth = request.adminAuth;
    if (!auth) return { operator: undefined };
    const csrf = auth.session && signer ? signer.csrfToken(auth.session) : '';
    return { operator: { label: auth.operator.label, csrf } };
  };

  /** A refusal: the error page for a browser, the REST error body for a script. */
  function fail(request: FastifyRequest, reply: FastifyReply, error: unknown, back: string) {
    if (!(error instanceof DomainError)) throw error;
    const status = STATUS[error.kind];
    if (status >= 500) request.log.warn({ err: error }, 'admin request failed');
    if (request.adminAuth?.via === 'bearer') {
      return sendError(request, reply, status, {
        message: error.message,
        reason: error.reason,
        details: error.details,
      });
    }
    return sendPage(
      reply,
      status,
      messagePage(`Refused (${error.reason})`, error.message, {
        back,
        operator: contextOf(request).operator,
      }),
    );
  }

  async function doneOf(query: Query) {
    const id = uuid.safeParse(query.done);
    const entry = id.success ? await auditEntry(db, id.data) : undefined;
    return { entry, replayed: query.replayed === '1' };
  }

  admin.get('/', async (request, reply) => {
    const recent = await auditLog(db, { limit: 10 });
    return sendPage(reply, 200, homePage(contextOf(request), recent.items));
  });

  admin.get<{ Querystring: Query }>('/search', async (request, reply) => {
    try {
      const q = parse(searchQuery, request.query).q?.trim();
      if (!q) return reply.redirect('/admin', 303);
      const query = parse(searchText, q);
      return sendPage(reply, 200, searchPage(contextOf(request), query, await search(db, query)));
    } catch (error) {
      return fail(request, reply, error, '/admin');
    }
  });

  admin.get<{ Querystring: Query }>('/audit', async (request, reply) => {
    try {
      const page = parse(auditQuery, request.query).cursor;
      const log = await auditLog(db, { limit: PAGE_SIZE, cursor: page });
      return sendPage(reply, 200, auditPage(contextOf(request), log, !page));
    } catch (error) {
      return fail(request, reply, error, '/admin/audit');
    }
  });

  admin.get<{ Params: { userId: string }; Querystring: Query }>('/users/:userId', async (request, reply) => {
    try {
      const userId = parse(accountId, request.params.userId);
      const query = ledgerQuery(request.query);
      const [view, charts, done] = await Promise.all([
        userOverview(db, userId, query),
        userCharts(db, userId),
        doneOf(request.query),
      ]);
      return sendPage(reply, 200, userPage(contextOf(request), view, charts, query, done));
    } catch (error) {
      return fail(request, reply, error, '/admin');
    }
  });

  admin.get<{ Params: { guildId: string }; Querystring: Query }>(
    '/guilds/:guildId',
    async (request, reply) => {
      try {
        const guildId = parse(accountId, request.params.guildId);
        const query = ledgerQuery(request.query);
        const [view, charts, done] = await Promise.all([
          guildOverview(db, guildId, query),
          guildCharts(db, guildId),
          doneOf(request.query),
        ]);
        return sendPage(reply, 200, guildPage(contextOf(request), view, charts, query, done));
      } catch (error) {
        return fail(request, reply, error, '/admin');
      }
    },
  );

  /**
   * One action route: validates the body, runs the audited action, counts what moved, and answers a script
   * with JSON and a browser with a redirect to the account's page (which shows the recorded outcome).
   */
  function action<P>(
    path: string,
    run: (
      request: FastifyRequest<{ Params: P }>,
      call: { operator: string; reason: string; nonce: string },
    ) => Promise<ActionOutcome>,
    backOf: (request: FastifyRequest<{ Params: P }>) => string,
  ) {
    admin.post<{ Params: P }>(path, async (request, reply) => {
      const back = backOf(request);
      try {
        const auth = request.adminAuth!;
        const base = parse(plainBody.passthrough(), request.body ?? {});
        const outcome = await run(request, {
          operator: operatorName(auth.operator),
          reason: base.reason,
          nonce: base.nonce,
        });
        countMoved(outcome);
        request.log.info(
          { operator: outcome.operator, action: outcome.action, target: outcome.target, auditId: outcome.id },
          outcome.replayed ? 'admin action replayed' : 'admin action',
        );
        if (auth.via === 'bearer') return reply.send({ ok: true, ...outcome });
        const [kind, ...rest] = outcome.target.split(':');
        const page = adminPath([kind === 'guild' ? 'guilds' : 'users', rest.join(':')], {
          done: outcome.id,
          replayed: outcome.replayed ? 1 : undefined,
        });
        return reply.redirect(`${page}#notice`, 303);
      } catch (error) {
        if (error instanceof DomainError) {
          request.log.warn(
            {
              operator: request.adminAuth && operatorName(request.adminAuth.operator),
              reason: error.reason,
              path,
            },
            'admin action refused',
          );
        }
        return fail(request, reply, error, back);
      }
    });
  }

  /** Metrics count the console's movements like the API's (a replay under the `replay` outcome). */
  function countMoved(outcome: ActionOutcome) {
    const { metrics } = deps;
    // A form sent again (the console's own replay) or an action the domain answered from its first result.
    const replayed = outcome.replayed || Boolean(outcome.result.replayedByDomain);
    const value = (key: string) => {
      const number = outcome.result[key];
      return typeof number === 'number' ? number : undefined;
    };
    const moved = (movement: Movement) => metrics.moved(movement, replayed ? 'replay' : 'ok');
    switch (outcome.action) {
      case 'grant':
        moved({
          kind: 'credited',
          account: 'personal',
          type: 'grant',
          amount: value('amount'),
          app: 'admin-console',
        });
        return;
      case 'refund': {
        const app = outcome.result.appId;
        moved({
          kind: 'refunded',
          type: 'usage',
          amount: value('amount'),
          app: typeof app === 'string' ? app : undefined,
        });
        return;
      }
      case 'cancel_gift':
        moved({ kind: 'refunded', type: 'gift', amount: value('refunded') });
        return;
      case 'release_hold':
        if (!replayed) metrics.reservations.inc({ event: 'released' });
        return;
    }
  }

  const userPageOf = (request: FastifyRequest<{ Params: { userId: string } }>) =>
    adminPath(['users', request.params.userId]);

  action<{ userId: string }>(
    '/users/:userId/grant',
    async (request, call) => {
      const body = parse(grantBody, request.body ?? {});
      return adminGrant(deps, call, {
        userId: parse(accountId, request.params.userId),
        amount: body.amount,
        expiresInDays: body.expiresInDays,
      });
    },
    userPageOf,
  );

  action<{ userId: string }>(
    '/users/:userId/refund',
    async (request, call) => {
      const body = parse(refundBody, request.body ?? {});
      return adminRefund(deps, call, {
        userId: parse(accountId, request.params.userId),
        transactionId: body.transactionId,
        amount: body.amount,
      });
    },
    userPageOf,
  );

  action<{ giftId: string }>(
    '/gifts/:giftId/cancel',
    async (request, call) => adminCancelGift(deps, call, { giftId: parse(uuid, request.params.giftId) }),
    () => '/admin',
  );

  action<{ reservationId: string }>(
    '/holds/:reservationId/release',
    async (request, call) =>
      adminReleaseHold(deps, call, { reservationId: parse(uuid, request.params.reservationId) }),
    () => '/admin',
  );

  action<{ guildId: string }>(
    '/guilds/:guildId/limits',
    async (request, call) => {
      const body = parse(limitsBody, request.body ?? {});
      return adminSetLimits(deps, call, {
        guildId: parse(accountId, request.params.guildId),
        userId: body.userId,
        dailyLimit: body.dailyLimit,
        monthlyLimit: body.monthlyLimit,
      });
    },
    (request) => adminPath(['guilds', request.params.guildId]),
  );
}
