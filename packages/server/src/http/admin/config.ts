import { z } from 'zod';

const optionalSecret = z
  .string()
  .optional()
  .transform((value) => (value?.trim() ? value.trim() : undefined));

/** The operator console's variables, part of the server's one environment schema (config.ts). */
export const adminEnvShape = {
  /** A shared operator token for small setups (also `Authorization: Bearer` for scripts). Unset: JWTs only. */
  ADMIN_TOKEN: optionalSecret,
  /** The JWT claim that makes a user an operator, and its value (a string, or one entry of an array claim). */
  ADMIN_ROLE_CLAIM: z.string().trim().min(1).max(200).default('role'),
  ADMIN_ROLE_VALUE: z.string().trim().min(1).max(200).default('admin'),
  /** HMAC key of the console's session cookies. Required in production for browser logins; no default. */
  ADMIN_SESSION_SECRET: optionalSecret,
  ADMIN_SESSION_MINUTES: z.coerce
    .number()
    .int()
    .min(1)
    .max(7 * 24 * 60)
    .default(480),
};

export interface AdminConfig {
  token: string | undefined;
  roleClaim: string;
  roleValue: string;
  /**
   * Signs session cookies. Undefined in production when unset: browser logins are then refused (bearer
   * requests still work). Outside production an unset secret is replaced by a random one per process.
   */
  sessionSecret: string | undefined;
  /** How long a console session lasts (a JWT login: at most until the token expires). */
  sessionMinutes: number;
}

type AdminEnv = z.output<z.ZodObject<typeof adminEnvShape>>;

const MIN_SECRET_LENGTH = 32;

/** Checks the console's variables (problems name them) and returns its config. */
export function adminConfigOf(e: AdminEnv, production: boolean, problems: string[]): AdminConfig {
  if (production) {
    for (const name of ['ADMIN_TOKEN', 'ADMIN_SESSION_SECRET'] as const) {
      const value = e[name];
      if (value !== undefined && value.length < MIN_SECRET_LENGTH) {
        problems.push(`${name}: must be at least ${MIN_SECRET_LENGTH} characters when NODE_ENV=production`);
      }
    }
  }
  return {
    token: e.ADMIN_TOKEN,
    roleClaim: e.ADMIN_ROLE_CLAIM,
    roleValue: e.ADMIN_ROLE_VALUE,
    sessionSecret: e.ADMIN_SESSION_SECRET,
    sessionMinutes: e.ADMIN_SESSION_MINUTES,
  };
}
