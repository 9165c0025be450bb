import { randomBytes } from 'node:crypto';
import type { AccountMatch } from '@mana-credits/db';
import {
  type AuditEntry,
  CHART_DAYS,
  type ChartData,
  type GuildOverview,
  type HoldView,
  LEDGER_TYPES,
  type LedgerQuery,
  POOL_LEDGER_TYPES,
  type UserOverview,
} from '../../domain/admin/views.ts';
import type { toLotItem } from '../../domain/credits/lots.ts';
import { adminPath, type Html, html, layout, type SafeHtml } from './html.ts';

type LotItem = ReturnType<typeof toLotItem>;

// The console's pages, rendered on the server. Every value from the database goes through `html`, which
// escapes it: descriptions, gift messages, metadata, ids and reasons are text, whatever they contain.

export interface PageContext {
  operator: { label: string; csrf: string } | undefined;
}

/** A fresh nonce for one action form: submitting that form twice acts once (the action's idempotency key). */
export const formNonce = () => randomBytes(18).toString('base64url');

const time = (date: Date | null | undefined) =>
  date
    ? html`<time datetime="${date.toISOString()}">${date.toISOString().replace('T', ' ').slice(0, 19)}</time>`
    : html`<span class="muted">—</span>`;

const json = (value: unknown) =>
  value === null || value === undefined
    ? html`<span class="muted">—</span>`
    : html`<code>${JSON.stringify(value)}</code>`;

const num = (value: number | null | undefined) => (value === null || value === undefined ? '—' : value);

type UnmatchedPayment = UserOverview['purchases'][number]['unmatchedPayment'];

/** A payment received for a purchase and not credited (its amount or currency was not the price). */
const unmatched = (payment: UnmatchedPayment) =>
  payment
    ? html`<br><span class="error" data-field="unmatched-payment">paid ${num(payment.amount)} ${payment.currency ?? '?'} at ${time(payment.receivedAt)}, not credited: refund ${payment.paymentIntentId ?? payment.checkoutSessionId ?? 'it'} in Stripe or grant by hand</span>`
    : '';

const userLink = (userId: string) => html`<a href="${adminPath(['users', userId])}">${userId}</a>`;
const guildLink = (guildId: string) => html`<a href="${adminPath(['guilds', guildId])}">${guildId}</a>`;

/** A target as the audit stores it (`user:<id>`, `guild:<id>`), as a link. */
function targetLink(target: string) {
  const [kind, ...rest] = target.split(':');
  const id = rest.join(':');
  if (kind === 'user') return html`user ${userLink(id)}`;
  if (kind === 'guild') return html`guild ${guildLink(id)}`;
  return html`${target}`;
}

function card(label: string, value: Html, field: string) {
  return html`<div class="card"><div class="value" data-field="${field}">${value}</div><div class="label">${label}</div></div>`;
}

/** An action form: POST with the session's CSRF token and a fresh nonce; `reason` is always required. */
function actionForm(
  context: PageContext,
  action: string,
  fields: Html,
  submit: string,
  options: { name?: string; className?: string } = {},
): SafeHtml {
  return html`<form method="post" action="${action}" class="${options.className ?? 'row'}" data-action="${options.name ?? submit}">
<input type="hidden" name="_csrf" value="${context.operator?.csrf ?? ''}">
<input type="hidden" name="nonce" value="${formNonce()}">
${fields}
<label>Reason<input type="text" name="reason" required maxlength="500" placeholder="why (recorded)"></label>
<button type="submit">${submit}</button>
</form>`;
}

function chart(id: string, title: string, data: ChartData, empty: string, options: { step?: boolean } = {}) {
  const spec = {
    title,
    empty,
    kind: data.kind ?? 'lines',
    step: options.step === true,
    x: data.x,
    series: data.series,
  };
  return html`<div class="chart" id="${id}" data-chart="${JSON.stringify(spec)}"></div>`;
}

function pager(
  next: string | null,
  nextHref: (cursor: string) => string,
  firstHref: string,
  isFirst: boolean,
) {
  return html`<div class="pager">
${isFirst ? '' : html`<a href="${firstHref}">Newest</a>`}
${next ? html`<a href="${nextHref(next)}" data-field="older">Older →</a>` : html`<span class="muted">End of the ledger</span>`}
</div>`;
}

function notice(done: AuditEntry | undefined, replayed: boolean) {
  if (!done) return '';
  return html`<div class="notice" id="notice" data-field="notice">
<strong>${replayed ? 'Already done' : 'Done'}: ${done.action}</strong> on ${targetLink(done.target)} by ${done.operator}
${replayed ? html`<p>This form had been submitted before: nothing was done again, this is what it did then.</p>` : ''}
<div>Result: ${json(done.result)}</div>
</div>`;
}

export function auditTable(entries: AuditEntry[]) {
  if (entries.length === 0) return html`<p class="muted">No operator actions yet.</p>`;
  return html`<table data-table="audit">
<thead><tr><th>When</th><th>Operator</th><th>Action</th><th>Target</th><th>Reason</th><th>Request</th><th>Result</th></tr></thead>
<tbody>
${entries.map(
  (entry) => html`<tr data-audit-id="${entry.id}">
<td>${time(entry.createdAt)}</td><td class="mono">${entry.operator}</td><td>${entry.action}</td>
<td>${targetLink(entry.target)}</td><td class="text">${entry.reason}</td><td>${json(entry.request)}</td><td>${json(entry.result)}</td>
</tr>`,
)}
</tbody></table>`;
}

function holdsTable(context: PageContext, holds: HoldView[], showUser: boolean) {
  if (holds.length === 0) return html`<p class="muted">No open holds.</p>`;
  return html`<table data-table="holds">
<thead><tr><th>Placed</th>${showUser ? html`<th>Member</th>` : html`<th>Pool</th>`}<th class="num">Amount</th><th>App</th><th>Description</th><th>Expires</th><th>Release</th></tr></thead>
<tbody>
${holds.map(
  (hold) => html`<tr data-hold-id="${hold.id}">
<td>${time(hold.createdAt)}</td>
<td>${showUser ? userLink(hold.userId) : hold.guildId ? guildLink(hold.guildId) : html`<span class="muted">personal</span>`}</td>
<td class="num">${hold.amount}</td><td>${hold.appId}</td><td class="text">${hold.description}</td>
<td>${time(hold.expiresAt)}${hold.lapsed ? html` <span class="muted">(lapsed)</span>` : ''}</td>
<td><details><summary>Release</summary>${actionForm(context, adminPath(['holds', hold.id, 'release']), '', 'Release hold', { name: 'release' })}</details></td>
</tr>`,
)}
</tbody></table>`;
}

/** An account's lots in burn order: the first row is spent first. */
function lotsTable(lots: LotItem[]) {
  if (lots.length === 0) return html`<p class="muted" data-field="lots-empty">No credit lots.</p>`;
  return html`<table data-table="lots">
<thead><tr><th>Burns</th><th>Source</th><th>Category</th><th class="num">Priority</th><th class="num">Amount</th><th class="num">Remaining</th><th class="num">Held</th><th class="num">Expired</th><th>Expires</th><th>Created</th><th>Id</th></tr></thead>
<tbody>
${lots.map(
  (lot, index) => html`<tr data-lot-id="${lot.id}" data-category="${lot.category}">
<td class="num">${lot.remaining > 0 ? String(index + 1) : html`<span class="muted">done</span>`}</td>
<td>${lot.source}</td><td>${lot.category}</td><td class="num">${lot.priority}</td><td class="num">${lot.amount}</td>
<td class="num" data-field="lot-remaining">${lot.remaining}</td><td class="num">${lot.held}</td><td class="num">${lot.expired}</td>
<td>${lot.expiresAt ? time(lot.expiresAt) : html`<span class="muted">never</span>`}</td><td>${time(lot.createdAt)}</td>
<td class="mono">${lot.id}</td>
</tr>`,
)}
</tbody></table>`;
}

function ledgerFilterForm(
  base: string,
  query: LedgerQuery,
  types: readonly string[],
  options: { member?: boolean } = {},
) {
  return html`<form method="get" action="${base}" class="row" data-form="ledger-filter">
<label>Type<select name="type"><option value="">any</option>${types.map(
    (type) => html`<option value="${type}"${query.type === type ? html` selected` : ''}>${type}</option>`,
  )}</select></label>
<label>App<input type="text" name="app" value="${query.appId ?? ''}" maxlength="100"></label>
${options.member ? html`<label>Member<input type="text" name="member" value="${query.memberId ?? ''}" maxlength="200"></label>` : ''}
<label>From (UTC day)<input type="date" name="from" value="${query.from ?? ''}"></label>
<label>To (UTC day)<input type="date" name="to" value="${query.to ?? ''}"></label>
<button type="submit">Filter</button>
<a href="${base}">Clear</a>
</form>`;
}

const filterParams = (query: LedgerQuery) => ({
  type: query.type,
  app: query.appId,
  member: query.memberId,
  from: query.from,
  to: query.to,
});

export function homePage(context: PageContext, recent: AuditEntry[]) {
  return layout(
    { title: 'Search', operator: context.operator },
    html`<h1>Find a user or guild</h1>
<form method="get" action="/admin/search" class="row" role="search" data-form="search">
<label>User or guild id (or its beginning)<input type="search" name="q" required maxlength="200" autofocus></label>
<button type="submit">Search</button>
</form>
<h2>Latest operator actions</h2>
${auditTable(recent)}
<p><a href="/admin/audit">The whole audit log</a></p>`,
  );
}

export function searchPage(context: PageContext, query: string, matches: AccountMatch[]) {
  const users = matches.filter((match) => match.kind === 'user');
  const guilds = matches.filter((match) => match.kind === 'guild');
  const list = (items: AccountMatch[], link: (id: string) => SafeHtml) =>
    items.length === 0
      ? html`<p class="muted">None.</p>`
      : html`<ul data-list="matches">${items.map((item) => html`<li>${link(item.id)} <span class="muted">(balance ${item.balance})</span></li>`)}</ul>`;
  return layout(
    { title: `Search: ${query}`, operator: context.operator },
    html`<h1>Search: <span data-field="query">${query}</span></h1>
<form method="get" action="/admin/search" class="row" role="search">
<label>User or guild id<input type="search" name="q" required maxlength="200" value="${query}"></label>
<button type="submit">Search</button>
</form>
<h2>Users</h2>${list(users, userLink)}
<h2>Guild pools</h2>${list(guilds, guildLink)}
<p class="muted">Not listed? Open <a href="${adminPath(['users', query])}">user ${query}</a> or
<a href="${adminPath(['guilds', query])}">guild ${query}</a> directly.</p>`,
  );
}

export function auditPage(
  context: PageContext,
  log: { items: AuditEntry[]; nextCursor: string | null },
  isFirst: boolean,
) {
  return layout(
    { title: 'Audit log', operator: context.operator },
    html`<h1>Audit log</h1>
<p class="muted">Every action taken in this console: append-only (credits.admin_actions).</p>
${auditTable(log.items)}
${pager(log.nextCursor, (cursor) => adminPath(['audit'], { cursor }), '/admin/audit', isFirst)}`,
  );
}

export function userPage(
  context: PageContext,
  view: UserOverview,
  charts: { balance: ChartData; usage: ChartData },
  query: LedgerQuery,
  done: { entry: AuditEntry | undefined; replayed: boolean },
) {
  const base = adminPath(['users', view.userId]);
  const { balance } = view;
  const ledger = view.ledger.items;
  return layout(
    { title: `User ${view.userId}`, operator: context.operator, charts: true },
    html`<h1>User <span data-field="user-id">${view.userId}</span></h1>
${notice(done.entry, done.replayed)}
${view.known ? '' : html`<p class="muted" data-field="unknown">No balance row: nothing has happened to this user's credits yet.</p>`}
<div class="cards">
${card('spendable balance', balance.balance, 'balance')}
${card('reserved by open holds', balance.reserved, 'reserved')}
${card('total earned', balance.totalEarned, 'total-earned')}
${card('total spent', balance.totalSpent, 'total-spent')}
</div>

<h2>Charts <span class="muted">(last ${CHART_DAYS} days)</span></h2>
<div class="charts">
${chart('chart-balance', 'Balance over time', charts.balance, 'No ledger entries in this period', { step: true })}
${chart('chart-usage', 'Usage per app per day', charts.usage, 'No usage in this period')}
</div>

<h2>Grant credits</h2>
${actionForm(
  context,
  `${base}/grant`,
  html`<label>Amount<input type="number" name="amount" min="1" step="1" required></label>
<label>Expires after (days; empty = never)<input type="number" name="expiresInDays" min="1" max="3650" step="1"></label>`,
  'Grant',
  { name: 'grant' },
)}
<p class="muted">A grant is a promotional lot: it is spent before paid credits.</p>

<h2>Credit lots</h2>
${lotsTable(view.lots)}

<h2>Open holds</h2>
${holdsTable(context, view.holds, false)}

<h2>Ledger</h2>
${ledgerFilterForm(base, query, LEDGER_TYPES)}
${
  ledger.length === 0
    ? html`<p class="muted" data-field="ledger-empty">No ledger entries${query.type || query.appId || query.from || query.to ? ' match these filters' : ''}.</p>`
    : html`<table data-table="ledger">
<thead><tr><th>When</th><th>Type</th><th class="num">Amount</th><th class="num">Balance after</th><th>App</th><th>Description</th><th>Metadata</th><th>Id</th><th></th></tr></thead>
<tbody>
${ledger.map(
  (row) => html`<tr data-transaction-id="${row.id}" data-type="${row.type}">
<td>${time(row.createdAt)}</td><td>${row.type}</td><td class="num">${row.amount}</td><td class="num">${row.balanceAfter}</td>
<td>${row.appId ?? ''}</td><td class="text" data-field="description">${row.description}</td><td>${json(row.metadata)}</td>
<td class="mono">${row.id}</td>
<td>${
    row.refundable !== null && row.refundable > 0
      ? html`<details><summary>Refund</summary>${actionForm(
          context,
          `${base}/refund`,
          html`<input type="hidden" name="transactionId" value="${row.id}">
<label>Amount (empty = all ${row.refundable})<input type="number" name="amount" min="1" max="${row.refundable}" step="1"></label>`,
          'Refund',
          { name: 'refund' },
        )}</details>`
      : row.type === 'usage'
        ? html`<span class="muted">refunded</span>`
        : ''
  }</td>
</tr>`,
)}
</tbody></table>`
}
${pager(
  view.ledger.nextCursor,
  (cursor) => adminPath(['users', view.userId], { ...filterParams(query), cursor }),
  adminPath(['users', view.userId], filterParams(query)),
  !query.cursor,
)}

<h2>Purchases</h2>
${
  view.purchases.length === 0
    ? html`<p class="muted">No purchases.</p>`
    : html`<table data-table="purchases"><thead><tr><th>Created</th><th>Status</th><th class="num">Credits</th><th class="num">Price (cents)</th><th>Completed</th><th class="num">Clawed back</th><th>Id</th></tr></thead><tbody>
${view.purchases.map(
  (
    purchase,
  ) => html`<tr><td>${time(purchase.createdAt)}</td><td>${purchase.status}${unmatched(purchase.unmatchedPayment)}</td><td class="num">${purchase.credits}</td>
<td class="num">${purchase.priceEuroCents} ${purchase.currency}</td><td>${time(purchase.completedAt)}</td>
<td class="num">${purchase.clawedBackCredits}${purchase.unrecoveredCredits ? html` (${purchase.unrecoveredCredits} unrecovered)` : ''}${purchase.returnedCredits ? html` (${purchase.returnedCredits} given back)` : ''}</td><td class="mono">${purchase.id}</td></tr>`,
)}</tbody></table>`
}

<h2>Gifts created</h2>
${
  view.giftsCreated.length === 0
    ? html`<p class="muted">No gifts created.</p>`
    : html`<table data-table="gifts-created"><thead><tr><th>Created</th><th>Code</th><th>Type</th><th>Status</th><th class="num">Per portion</th><th class="num">Claimed</th><th>Message</th><th>Expires</th><th>Cancel</th></tr></thead><tbody>
${view.giftsCreated.map(
  (
    gift,
  ) => html`<tr data-gift-id="${gift.id}"><td>${time(gift.createdAt)}</td><td class="mono">${gift.code}</td><td>${gift.type}</td>
<td data-field="gift-status">${gift.status}</td><td class="num">${gift.creditsPerPortion}</td><td class="num">${gift.claimedPortions} / ${gift.totalPortions}</td>
<td class="text" data-field="gift-message">${gift.message ?? ''}</td><td>${time(gift.expiresAt)}</td>
<td>${
    gift.status === 'active'
      ? html`<details><summary>Cancel</summary>${actionForm(context, adminPath(['gifts', gift.id, 'cancel']), '', 'Cancel gift', { name: 'cancel-gift' })}</details>`
      : ''
  }</td></tr>`,
)}</tbody></table>`
}

<h2>Gifts received</h2>
${
  view.giftsReceived.length === 0
    ? html`<p class="muted">No gifts received.</p>`
    : html`<table data-table="gifts-received"><thead><tr><th>Redeemed</th><th>Code</th><th>Type</th><th class="num">Credits</th><th>From</th><th>Message</th></tr></thead><tbody>
${view.giftsReceived.map(
  (
    gift,
  ) => html`<tr><td>${time(gift.redeemedAt)}</td><td class="mono">${gift.code}</td><td>${gift.type}</td><td class="num">${gift.creditsReceived}</td>
<td>${gift.creatorName ?? ''}</td><td class="text">${gift.message ?? ''}</td></tr>`,
)}</tbody></table>`
}

<h2>Operator actions on this user</h2>
${auditTable(view.audit)}`,
  );
}

function limitInput(name: string, label: string, value: number | null) {
  return html`<label>${label} (empty = unlimited)<input type="number" name="${name}" min="0" step="1" value="${value ?? ''}"></label>`;
}

export function guildPage(
  context: PageContext,
  view: GuildOverview,
  charts: { balance: ChartData; spend: ChartData },
  query: LedgerQuery,
  done: { entry: AuditEntry | undefined; replayed: boolean },
) {
  const base = adminPath(['guilds', view.guildId]);
  const ledger = view.ledger.items;
  const limitsForm = (userId: string | undefined, daily: number | null, monthly: number | null) =>
    actionForm(
      context,
      `${base}/limits`,
      html`${userId === undefined ? html`<label>Member id<input type="text" name="userId" required maxlength="200"></label>` : html`<input type="hidden" name="userId" value="${userId}">`}
${limitInput('dailyLimit', 'Daily', daily)}${limitInput('monthlyLimit', 'Monthly', monthly)}`,
      'Set limits',
      { name: 'set-limits' },
    );
  return layout(
    { title: `Guild ${view.guildId}`, operator: context.operator, charts: true },
    html`<h1>Guild <span data-field="guild-id">${view.guildId}</span></h1>
${notice(done.entry, done.replayed)}
${
  view.pool
    ? html`<div class="cards">
${card('spendable pool', view.pool.balance, 'pool-balance')}
${card('reserved by open holds', view.pool.reserved, 'pool-reserved')}
${card('total funded', view.pool.totalFunded, 'total-funded')}
${card('total spent', view.pool.totalSpent, 'pool-total-spent')}
</div>`
    : html`<p class="muted" data-field="no-pool">This guild has no pool (internal.guildPool.init creates it).</p>`
}

<h2>Credit lots of the pool</h2>
${lotsTable(view.lots)}

<h2>Charts <span class="muted">(last ${CHART_DAYS} days)</span></h2>
<div class="charts">
${chart('chart-pool-balance', 'Pool balance over time', charts.balance, 'No pool ledger entries in this period', { step: true })}
${chart('chart-member-spend', 'Spend per member per day', charts.spend, 'No pool spending in this period')}
</div>

<h2>Members and limits</h2>
<p class="muted">Members the pool knows of (limits, ledger rows or holds); membership itself is the auth service's.
Limits use UTC days and months.</p>
${
  view.members.length === 0
    ? html`<p class="muted">None yet.</p>`
    : html`<table data-table="members"><thead><tr><th>Member</th><th class="num">Daily limit</th><th class="num">Monthly limit</th><th class="num">Spent today</th><th class="num">Spent this month</th><th class="num">Held</th><th>Set limits</th></tr></thead><tbody>
${view.members.map(
  (member) => html`<tr data-member="${member.userId}"><td>${userLink(member.userId)}</td>
<td class="num">${num(member.dailyLimit)}</td><td class="num">${num(member.monthlyLimit)}</td>
<td class="num">${member.spentToday}</td><td class="num">${member.spentThisMonth}</td><td class="num">${member.heldToday}</td>
<td><details><summary>Set limits</summary>${limitsForm(member.userId, member.dailyLimit, member.monthlyLimit)}</details></td></tr>`,
)}</tbody></table>`
}
<details><summary>Set the limits of another member</summary>${limitsForm(undefined, null, null)}</details>

<h2>Open holds on the pool</h2>
${holdsTable(context, view.holds, true)}

<h2>Pool ledger</h2>
${ledgerFilterForm(base, query, POOL_LEDGER_TYPES, { member: true })}
${
  ledger.length === 0
    ? html`<p class="muted" data-field="ledger-empty">No pool ledger entries${query.type || query.appId || query.from || query.to || query.memberId ? ' match these filters' : ''}.</p>`
    : html`<table data-table="ledger"><thead><tr><th>When</th><th>Member</th><th>Type</th><th class="num">Amount</th><th class="num">Pool after</th><th>App</th><th>Description</th><th>Id</th></tr></thead><tbody>
${ledger.map(
  (
    row,
  ) => html`<tr data-transaction-id="${row.id}" data-type="${row.type}"><td>${time(row.createdAt)}</td><td>${userLink(row.userId)}</td><td>${row.type}</td>
<td class="num">${row.amount}</td><td class="num">${row.balanceAfter}</td><td>${row.appId ?? ''}</td><td class="text" data-field="description">${row.description}</td><td class="mono">${row.id}</td></tr>`,
)}</tbody></table>`
}
${pager(
  view.ledger.nextCursor,
  (cursor) => adminPath(['guilds', view.guildId], { ...filterParams(query), cursor }),
  adminPath(['guilds', view.guildId], filterParams(query)),
  !query.cursor,
)}

<h2>Operator actions on this guild</h2>
${auditTable(view.audit)}`,
  );
}
