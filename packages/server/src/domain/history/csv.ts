import type { StatementPageView } from './statement.ts';

/**
 * A statement as CSV (RFC 4180): a header, the opening balance, every entry oldest first, the closing
 * balance; CRLF line ends. Text cells a spreadsheet would read as a formula (starting with = + - @, a tab or
 * a CR) get a leading single quote; the amount and balance columns are written by us as plain integers and
 * stay numeric.
 */

export const STATEMENT_COLUMNS = [
  'date',
  'type',
  'transaction_id',
  'app_id',
  'description',
  'amount',
  'balance_after',
  'reference_transaction_id',
] as const;

const FORMULA_START = /^[=+\-@\t\r]/;
/** A formula character after a ";" or a tab: a cell of its own where a spreadsheet splits lines on them. */
const SEPARATED_FORMULA = /([;\t])([=+\-@])/g;
const NEEDS_QUOTES = /[",\r\n]/;

/**
 * One text cell: defused if it could start a formula — also after a ";" or a tab, which spreadsheets in
 * locales whose list separator is ";" split on, quotes or not —, quoted if it holds a quote, comma or line break.
 */
export function textCell(value: string | null | undefined): string {
  if (value === null || value === undefined || value === '') return '';
  const separated = value.replace(SEPARATED_FORMULA, "$1'$2");
  const safe = FORMULA_START.test(separated) ? `'${separated}` : separated;
  return NEEDS_QUOTES.test(safe) ? `"${safe.replaceAll('"', '""')}"` : safe;
}

/** One numeric cell: an integer as digits with an optional minus sign, never quoted or prefixed. */
export function numberCell(value: number): string {
  if (!Number.isSafeInteger(value)) throw new Error(`not a whole number of credits: ${value}`);
  return String(value);
}

const line = (cells: string[]) => `${cells.join(',')}\r\n`;

type Entry = StatementPageView['items'][number];

function entryLine(entry: Entry): string {
  return line([
    entry.createdAt.toISOString(),
    entry.type,
    entry.id,
    textCell(entry.appId),
    textCell(entry.description),
    numberCell(entry.amount),
    numberCell(entry.balanceAfter),
    entry.referenceTransactionId ?? '',
  ]);
}

const balanceLine = (kind: 'opening_balance' | 'closing_balance', at: Date, balance: number) =>
  line([at.toISOString(), kind, '', '', '', '', numberCell(balance), '']);

/**
 * The CSV text, page by page: `nextPage(cursor)` reads one page of the statement (undefined cursor: the
 * first). Only one page is held at a time. The closing balance is the opening balance plus the entries
 * written, so the file always adds up; its last line is the closing balance, so a cut-off download shows.
 */
export async function* statementCsv(
  first: StatementPageView,
  nextPage: (cursor: string) => Promise<StatementPageView>,
): AsyncGenerator<string> {
  yield line([...STATEMENT_COLUMNS]);
  yield balanceLine('opening_balance', first.from, first.openingBalance);
  let balance = first.openingBalance;
  let page = first;
  for (;;) {
    let chunk = '';
    for (const entry of page.items) {
      balance += entry.amount;
      chunk += entryLine(entry);
    }
    if (chunk) yield chunk;
    if (!page.nextCursor) break;
    page = await nextPage(page.nextCursor);
  }
  yield balanceLine('closing_balance', first.to, balance);
}
