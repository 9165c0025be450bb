/**
 * The one place where int8 and numeric values from Postgres become JS numbers. Credits are integers far
 * below 2^53, so a value outside the safe range or with a fraction is a bug we refuse to paper over.
 */
export function parseInt8(text: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value)) {
    throw new RangeError(`integer value out of the safe range: ${text}`);
  }
  return value;
}

/** numeric results (e.g. sum() over int8) must still be whole numbers. */
export const parseNumericInteger = parseInt8;

/** int8[] (lot amounts): `{1,20,300}`, every element through parseInt8. */
export function parseInt8Array(text: string): (number | null)[] {
  const inner = text.slice(1, -1);
  if (inner === '') return [];
  return inner.split(',').map((element) => (element === 'NULL' ? null : parseInt8(element)));
}

export const PG_OID = { int8: 20, int8Array: 1016, numeric: 1700, date: 1082 } as const;
