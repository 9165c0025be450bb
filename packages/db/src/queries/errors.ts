/** True when `error` is Postgres' unique_violation (23505), optionally on one named constraint or index. */
export function isUniqueViolation(error: unknown, constraint?: string): boolean {
  if (typeof error !== 'object' || error === null) return false;
  const {
    code,
    constraint: violated,
    message,
  } = error as { code?: string; constraint?: string; message?: string };
  if (code !== '23505') return false;
  if (!constraint) return true;
  // pg reports the constraint name; PGlite sometimes only has it in the message.
  return (
    violated === constraint ||
    (violated === undefined && typeof message === 'string' && message.includes(constraint))
  );
}

/** True when `error` is Postgres' check_violation (23514) on the named constraint. */
export function isCheckViolation(error: unknown, constraint?: string): boolean {
  if (typeof error !== 'object' || error === null) return false;
  const { code, constraint: violated } = error as { code?: string; constraint?: string };
  return code === '23514' && (!constraint || violated === constraint);
}
