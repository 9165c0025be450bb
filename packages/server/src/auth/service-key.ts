import { createHash, timingSafeEqual } from 'node:crypto';

const digest = (value: string) => createHash('sha256').update(value, 'utf8').digest();

/**
 * Checks a presented service key against every configured key in constant time: both sides are hashed to
 * 32 bytes first (so neither length nor a shared prefix leaks), and every key is compared, no early exit.
 */
export function createServiceKeyVerifier(
  keys: readonly string[],
): (presented: string | undefined) => boolean {
  const digests = keys.map(digest);
  return (presented) => {
    if (presented === undefined || presented.length === 0 || presented.length > 1024) return false;
    const candidate = digest(presented);
    let matched = false;
    for (const known of digests) {
      matched = timingSafeEqual(candidate, known) || matched;
    }
    return matched;
  };
}
