import { randomInt } from 'node:crypto';

/** No 0/O, 1/I: nothing a reader can confuse. 32 symbols, so 10 of them carry 50 bits. */
export const GIFT_CODE_ALPHABET = 'ABCDEFGHJKLMNPQRSTUVWXYZ23456789';
export const GIFT_CODE_LENGTH = 10;
const GROUP = 5;

/** A fresh code from the CSPRNG, in its stored (canonical) form: upper case, no separators. */
export function generateGiftCode(): string {
  let code = '';
  for (let i = 0; i < GIFT_CODE_LENGTH; i++) code += GIFT_CODE_ALPHABET[randomInt(GIFT_CODE_ALPHABET.length)];
  return code;
}

/**
 * What a person typed → the stored form: case-insensitive, spaces and dashes ignored, full-width forms (what
 * some Japanese and Chinese input methods type) read as the letters and digits they are (NFKC).
 */
export function normaliseGiftCode(input: string): string {
  return input
    .normalize('NFKC')
    .replace(/[\s\-‐-―−]+/g, '')
    .toUpperCase();
}

const CANONICAL_CODE = new RegExp(`^[${GIFT_CODE_ALPHABET}]{${GIFT_CODE_LENGTH}}$`);

/**
 * Whether a normalised code has the shape of a code we issue. Anything else (NUL, control characters, lone
 * surrogates, other symbols) names no gift, so it is never sent to the database, which cannot hold some of it.
 */
export function isCanonicalGiftCode(code: string): boolean {
  return CANONICAL_CODE.test(code);
}

/** The stored form grouped for reading: K7QX2-MWP9D. */
export function displayGiftCode(code: string): string {
  const groups: string[] = [];
  for (let i = 0; i < code.length; i += GROUP) groups.push(code.slice(i, i + GROUP));
  return groups.join('-');
}

export function giftShortUrl(baseUrl: string, code: string): string {
  return `${baseUrl}/g/${displayGiftCode(code)}`;
}
