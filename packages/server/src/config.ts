import { isIP } from 'node:net';
import { z } from 'zod';
import { type AdminConfig, adminConfigOf, adminEnvShape } from './http/admin/config.ts';

const booleanFromEnv = z
  .enum(['true', 'false', '1', '0', 'yes', 'no'])
  .transform((value) => value === 'true' || value === '1' || value === 'yes');

const commaList = z.string().transform((value) =>
  value
    .split(',')
    .map((item) => item.trim())
    .filter(Boolean),
);

const optionalText = z
  .string()
  .optional()
  .transform((value) => (value?.trim() ? value.trim() : undefined));

const envSchema = z.object({
  NODE_ENV: z.enum(['development', 'production', 'test']).default('development'),
  PORT: z.coerce.number().int().min(0).max(65535).default(3060),
  HOST: z.string().default('0.0.0.0'),
  DATABASE_URL: optionalText,
  DATA_DIR: z.string().default('./.data'),
  DB_POOL_SIZE: z.coerce.number().int().min(1).max(200).default(10),
  /** Named (prepared) statements on Postgres: parsed and planned once per connection (packages/db connect.ts). */
  DB_PREPARED_STATEMENTS: booleanFromEnv.default(false),
  COALESCE_DEBITS: booleanFromEnv.default(true),
  /** Debit statements (single or grouped) one instance runs at once; unset = 2 (1 when DB_POOL_SIZE < 3). */
  DEBIT_STATEMENTS_IN_FLIGHT: z.coerce.number().int().min(1).max(200).optional(),
  MIGRATE_ON_START: booleanFromEnv.default(true),
  MANA_CORE_AUTH_URL: optionalText.pipe(z.url().optional()),
  JWKS_URL: optionalText.pipe(z.url().optional()),
  JWT_ISSUER: optionalText,
  JWT_AUDIENCE: z.string().default('manacore'),
  MANA_CORE_SERVICE_KEY: optionalText,
  MANA_CORE_AUTH_SERVICE_KEY: optionalText,
  MEMBERSHIP_CACHE_SECONDS: z.coerce.number().int().min(0).max(3600).default(30),
  BASE_URL: optionalText.pipe(z.url().optional()),
  CORS_ORIGINS: commaList.default([]),
  /** Access-Control-Allow-Credentials: only for callers that send cookies (the API itself uses tokens). */
  CORS_CREDENTIALS: booleanFromEnv.default(false),
  /** How long a browser may cache a preflight (Chromium caps at 7200, Firefox at 86400). */
  CORS_MAX_AGE_SECONDS: z.coerce.number().int().min(0).max(86400).default(7200),
  CHECKOUT_ALLOWED_ORIGINS: commaList.default([]),
  STRIPE_SECRET_KEY: optionalText,
  STRIPE_WEBHOOK_SECRET: optionalText,
  STRIPE_API_URL: optionalText.pipe(z.url().optional()),
  GIFT_REDEEM_URL: optionalText,
  /** 0 turns the periodic sweep off (expiry on access still applies). */
  GIFT_EXPIRY_SWEEP_SECONDS: z.coerce.number().int().min(0).max(86400).default(60),
  GIFT_INFO_RATE_LIMIT_PER_MINUTE: z.coerce.number().int().min(1).max(1_000_000).default(60),
  /** Which proxies' X-Forwarded-For to believe; see parseTrustProxy. */
  TRUST_PROXY: optionalText,
  RESERVATION_SWEEP_SECONDS: z.coerce.number().int().min(1).max(86400).default(15),
  LOT_EXPIRY_SWEEP_SECONDS: z.coerce.number().int().min(0).max(86400).default(30),
  EXPIRY_NOTICE_DAYS: z.coerce.number().int().min(0).max(3650).default(30),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  BODY_LIMIT_BYTES: z.coerce
    .number()
    .int()
    .min(1024)
    .max(50 * 1024 * 1024)
    .default(1024 * 1024),
  SHUTDOWN_TIMEOUT_MS: z.coerce.number().int().min(0).max(600_000).default(10_000),
  SHUTDOWN_DRAIN_MS: z.coerce.number().int().min(0).max(600_000).default(0),
  METRICS_TOKEN: optionalText,
  BENCH_NOOP: booleanFromEnv.default(false),
  ...adminEnvShape,
  /** Events (issue 16): the default low-balance threshold of accounts without their own; unset = none. */
  LOW_BALANCE_THRESHOLD: optionalText.pipe(
    z.coerce.number<string>().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
  ),
  /** Webhook endpoints on loopback, private or link-local addresses (tests; never on a shared network). */
  WEBHOOK_ALLOW_PRIVATE: booleanFromEnv.default(false),
  WEBHOOK_DISABLE_AFTER_HOURS: z.coerce
    .number()
    .positive()
    .max(24 * 365)
    .default(120),
  /** Waits between attempts, e.g. `5s,1m,10m,1h,3h,8h,24h` (units ms, s, m, h, d): one retry per entry. */
  WEBHOOK_RETRY_SCHEDULE: optionalText,
  WEBHOOK_TIMEOUT_MS: z.coerce.number().int().min(100).max(60_000).default(10_000),
  /** How often each instance relays new events and sends due deliveries; 0 turns both off. */
  WEBHOOK_DELIVERY_INTERVAL_MS: z.coerce.number().int().min(0).max(600_000).default(1000),
  /** How often each instance sends the auto top-up payments the balance called for; 0 turns it off. */
  AUTO_TOP_UP_INTERVAL_MS: z.coerce.number().int().min(0).max(600_000).default(2000),
});

export type Env = z.input<typeof envSchema>;

/** Every environment variable the server reads (the Dockerfile and compose tests check theirs against it). */
export const ENV_NAMES: readonly string[] = Object.freeze(Object.keys(envSchema.shape));

export interface Config {
  nodeEnv: 'development' | 'production' | 'test';
  port: number;
  host: string;
  databaseUrl: string | undefined;
  dataDir: string;
  dbPoolSize: number;
  /** Postgres: send repeated statements as named (prepared) ones (DbConfig.preparedStatements). */
  dbPreparedStatements: boolean;
  /** Group concurrent debits into one transaction: personal ones of one account or of many (SpendCoalescer), members' ones per guild pool (pool-coalescer.ts). */
  coalesceDebits: boolean;
  /** With coalesceDebits: debit statements in flight at once; debits beyond wait and go as one batch. */
  debitStatementsInFlight: number;
  migrateOnStart: boolean;
  authUrl: string | undefined;
  jwksUrl: string | undefined;
  jwtIssuer: string | undefined;
  jwtAudience: string;
  /** Accepted service keys; more than one while a key is being rotated. Empty: internal API refuses everyone. */
  serviceKeys: readonly string[];
  /** Key this service presents to the auth service. */
  authServiceKey: string | undefined;
  membershipCacheSeconds: number;
  baseUrl: string;
  /** Origins browser apps may call from (exact `scheme://host[:port]`); `*` = any origin. */
  corsOrigins: readonly string[];
  corsCredentials: boolean;
  corsMaxAgeSeconds: number;
  checkoutAllowedOrigins: readonly string[];
  stripeSecretKey: string | undefined;
  stripeWebhookSecret: string | undefined;
  stripeApiUrl: string | undefined;
  giftRedeemUrl: string | undefined;
  giftExpirySweepSeconds: number;
  /** gifts.info and the gift page, per client address. */
  giftInfoRateLimitPerMinute: number;
  /**
   * Fastify's trustProxy: false = the client address is the connection's (X-Forwarded-For ignored); true =
   * the left-most X-Forwarded-For entry; a number = that many proxy hops; addresses/CIDRs (or proxy-addr's
   * names loopback, linklocal, uniquelocal) = the right-most entry not sent by one of them.
   */
  trustProxy: boolean | number | readonly string[];
  reservationSweepSeconds: number;
  /** How often lots whose time is up are expired when nobody touches their account; 0 = never (only on access). */
  lotExpirySweepSeconds: number;
  /** How often due auto top-up attempts are paid (the auto-top-up job); 0 = never. */
  autoTopUpIntervalMs: number;
  /** credits.balance's expiringSoon looks this many days ahead. */
  expiryNoticeDays: number;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  bodyLimitBytes: number;
  shutdownTimeoutMs: number;
  /** After SIGTERM, how long /ready answers 503 while requests are still served, before the server closes. */
  shutdownDrainMs: number;
  metricsToken: string | undefined;
  /** Mounts `bench.noop` (internal auth, no work): the Node ceiling of `pnpm bench`. Off unless asked for. */
  benchNoop: boolean;
  /** The operator console (/admin): see http/admin/config.ts. */
  admin: AdminConfig;
  /** Events and webhooks (issue 16). */
  events: EventsConfig;
}

export interface EventsConfig {
  /** Default low-balance threshold for accounts without their own; undefined = no balance events for them. */
  lowBalanceThreshold: number | undefined;
  webhookAllowPrivate: boolean;
  webhookDisableAfterMs: number;
  /** Waits between attempts in ms: attempts = length + 1. */
  webhookRetryScheduleMs: readonly number[];
  webhookTimeoutMs: number;
  deliveryIntervalMs: number;
}

/** The default retry schedule: about 5 s → 24 h over 8 attempts (the first one immediate). */
export const DEFAULT_WEBHOOK_RETRY_SCHEDULE = '5s,1m,10m,1h,3h,8h,24h';

const DURATION_UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `5s,1m,2h` → [5000, 60000, 7200000], or a problem naming WEBHOOK_RETRY_SCHEDULE. */
export function parseRetrySchedule(
  value: string,
): { ok: true; value: number[] } | { ok: false; problem: string } {
  const items = value.split(',').map((item) => item.trim());
  const delays: number[] = [];
  for (const item of items) {
    const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(item);
    const unit = match?.[2] ? DURATION_UNITS_MS[match[2]] : undefined;
    const ms = match?.[1] && unit ? Math.round(Number(match[1]) * unit) : Number.NaN;
    if (!Number.isFinite(ms) || ms < 1 || ms > 7 * 86_400_000) {
      return {
        ok: false,
        problem: `WEBHOOK_RETRY_SCHEDULE: ${JSON.stringify(item)} is not a duration between 1ms and 7d (e.g. 500ms, 5s, 10m, 2h, 1d)`,
      };
    }
    delays.push(ms);
  }
  if (delays.length > 20) return { ok: false, problem: 'WEBHOOK_RETRY_SCHEDULE: at most 20 retries' };
  return { ok: true, value: delays };
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map((problem) => `  - ${problem}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

const MIN_PRODUCTION_KEY_LENGTH = 32;

function isRedeemUrlTemplate(template: string): boolean {
  if (!template.includes('{code}')) return false;
  try {
    const { protocol } = new URL(template.replaceAll('{code}', 'CODE'));
    return protocol === 'https:' || protocol === 'http:';
  } catch {
    return false;
  }
}

/** Problems with CORS_ORIGINS: each entry must be `*` or an exact http(s) origin, as browsers send it. */
function corsOriginProblems(origins: readonly string[], credentials: boolean): string[] {
  const problems: string[] = [];
  for (const origin of origins) {
    if (origin === '*') continue;
    let parsed: URL | undefined;
    try {
      parsed = new URL(origin);
    } catch {}
    if (parsed?.origin === origin && (parsed.protocol === 'https:' || parsed.protocol === 'http:')) continue;
    const web = parsed?.protocol === 'https:' || parsed?.protocol === 'http:';
    const hint = web && parsed ? `; did you mean "${parsed.origin}"?` : '';
    problems.push(
      `CORS_ORIGINS: ${JSON.stringify(origin)} is not an origin (http(s)://host[:port], lower case, no path)${hint}`,
    );
  }
  if (credentials && origins.includes('*')) {
    problems.push(
      'CORS_CREDENTIALS: cannot be true with CORS_ORIGINS=* (browsers refuse it); list the origins',
    );
  }
  return problems;
}

const PROXY_ADDRESS_NAMES = new Set(['loopback', 'linklocal', 'uniquelocal']);

function isProxyAddress(item: string): boolean {
  if (PROXY_ADDRESS_NAMES.has(item)) return true;
  const [address = '', prefix, ...rest] = item.split('/');
  const family = isIP(address);
  if (family === 0 || rest.length > 0) return false;
  if (prefix === undefined) return true;
  return /^\d{1,3}$/.test(prefix) && Number(prefix) <= (family === 4 ? 32 : 128);
}

/** TRUST_PROXY → Fastify's trustProxy, or a problem naming the variable. */
export function parseTrustProxy(
  value: string | undefined,
): { ok: true; value: Config['trustProxy'] } | { ok: false; problem: string } {
  if (value === undefined || value === 'false' || value === '0') return { ok: true, value: false };
  if (value === 'true') return { ok: true, value: true };
  if (/^\d+$/.test(value)) {
    const hops = Number(value);
    return hops <= 100
      ? { ok: true, value: hops }
      : { ok: false, problem: 'TRUST_PROXY: a hop count must be at most 100' };
  }
  const items = value.split(',').map((item) => item.trim());
  const bad = items.filter((item) => !isProxyAddress(item));
  if (bad.length > 0) {
    return {
      ok: false,
      problem: `TRUST_PROXY: must be true, false, a hop count, or comma-separated IP addresses/CIDRs (or loopback, linklocal, uniquelocal); not ${bad.map((item) => JSON.stringify(item)).join(', ')}`,
    };
  }
  return { ok: true, value: Object.freeze(items) };
}

/** Reads and validates the environment once; a bad or missing variable throws a ConfigError naming it. */
export function loadConfig(env: Record<string, string | undefined> = process.env): Readonly<Config> {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) {
    throw new ConfigError(parsed.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`));
  }
  const e = parsed.data;
  const problems: string[] = [];
  const serviceKeys = e.MANA_CORE_SERVICE_KEY
    ? e.MANA_CORE_SERVICE_KEY.split(',')
        .map((key) => key.trim())
        .filter(Boolean)
    : [];
  const production = e.NODE_ENV === 'production';
  if (production) {
    if (serviceKeys.length === 0) problems.push('MANA_CORE_SERVICE_KEY: required when NODE_ENV=production');
    for (const [index, key] of serviceKeys.entries()) {
      if (key.length < MIN_PRODUCTION_KEY_LENGTH) {
        problems.push(
          `MANA_CORE_SERVICE_KEY: key #${index + 1} is shorter than ${MIN_PRODUCTION_KEY_LENGTH} characters`,
        );
      }
    }
    if (!e.MANA_CORE_AUTH_URL && !e.JWKS_URL) {
      problems.push('MANA_CORE_AUTH_URL: required when NODE_ENV=production (or set JWKS_URL and JWT_ISSUER)');
    }
    if (!e.MANA_CORE_AUTH_URL && !e.JWT_ISSUER)
      problems.push('JWT_ISSUER: required when MANA_CORE_AUTH_URL is unset');
    if (!e.BASE_URL) problems.push('BASE_URL: required when NODE_ENV=production');
    if (e.STRIPE_SECRET_KEY && !e.STRIPE_WEBHOOK_SECRET) {
      problems.push('STRIPE_WEBHOOK_SECRET: required when STRIPE_SECRET_KEY is set in production');
    }
  }
  if (e.GIFT_REDEEM_URL && !isRedeemUrlTemplate(e.GIFT_REDEEM_URL)) {
    problems.push('GIFT_REDEEM_URL: must be an http(s) URL containing {code}');
  }
  if (e.DEBIT_STATEMENTS_IN_FLIGHT !== undefined && e.DEBIT_STATEMENTS_IN_FLIGHT > e.DB_POOL_SIZE) {
    problems.push(
      'DEBIT_STATEMENTS_IN_FLIGHT: must not exceed DB_POOL_SIZE (each statement holds a connection)',
    );
  }
  if (e.SHUTDOWN_DRAIN_MS > 0 && e.SHUTDOWN_DRAIN_MS >= e.SHUTDOWN_TIMEOUT_MS) {
    problems.push(
      'SHUTDOWN_DRAIN_MS: must be shorter than SHUTDOWN_TIMEOUT_MS (the drain counts towards it)',
    );
  }
  problems.push(...corsOriginProblems(e.CORS_ORIGINS, e.CORS_CREDENTIALS));
  const trustProxy = parseTrustProxy(e.TRUST_PROXY);
  if (!trustProxy.ok) problems.push(trustProxy.problem);
  const admin = adminConfigOf(e, production, problems);
  const retrySchedule = parseRetrySchedule(e.WEBHOOK_RETRY_SCHEDULE ?? DEFAULT_WEBHOOK_RETRY_SCHEDULE);
  if (!retrySchedule.ok) problems.push(retrySchedule.problem);
  if (problems.length > 0) throw new ConfigError(problems);

  const authUrl = e.MANA_CORE_AUTH_URL?.replace(/\/+$/, '');
  return Object.freeze({
    nodeEnv: e.NODE_ENV,
    port: e.PORT,
    host: e.HOST,
    databaseUrl: e.DATABASE_URL,
    dataDir: e.DATA_DIR,
    dbPoolSize: e.DB_POOL_SIZE,
    dbPreparedStatements: e.DB_PREPARED_STATEMENTS,
    coalesceDebits: e.COALESCE_DEBITS,
    // Few statements make big groups, and a group costs Node and Postgres far less per debit than single
    // statements do (README, "How the money is kept"); two keep one's round trip hidden behind the other.
    // The rest of the pool stays free for reads, grants, holds and the periodic jobs.
    debitStatementsInFlight: e.DEBIT_STATEMENTS_IN_FLIGHT ?? (e.DB_POOL_SIZE < 3 ? 1 : 2),
    migrateOnStart: e.MIGRATE_ON_START,
    authUrl,
    jwksUrl: e.JWKS_URL ?? (authUrl ? `${authUrl}/api/auth/jwks` : undefined),
    jwtIssuer: e.JWT_ISSUER ?? authUrl,
    jwtAudience: e.JWT_AUDIENCE,
    serviceKeys: Object.freeze(serviceKeys),
    authServiceKey: e.MANA_CORE_AUTH_SERVICE_KEY ?? serviceKeys[0],
    membershipCacheSeconds: e.MEMBERSHIP_CACHE_SECONDS,
    baseUrl: (e.BASE_URL ?? `http://localhost:${e.PORT}`).replace(/\/+$/, ''),
    corsOrigins: Object.freeze(e.CORS_ORIGINS),
    corsCredentials: e.CORS_CREDENTIALS,
    corsMaxAgeSeconds: e.CORS_MAX_AGE_SECONDS,
    checkoutAllowedOrigins: Object.freeze(e.CHECKOUT_ALLOWED_ORIGINS),
    stripeSecretKey: e.STRIPE_SECRET_KEY,
    stripeWebhookSecret: e.STRIPE_WEBHOOK_SECRET,
    stripeApiUrl: e.STRIPE_API_URL,
    giftRedeemUrl: e.GIFT_REDEEM_URL,
    giftExpirySweepSeconds: e.GIFT_EXPIRY_SWEEP_SECONDS,
    giftInfoRateLimitPerMinute: e.GIFT_INFO_RATE_LIMIT_PER_MINUTE,
    trustProxy: trustProxy.ok ? trustProxy.value : false,
    reservationSweepSeconds: e.RESERVATION_SWEEP_SECONDS,
    lotExpirySweepSeconds: e.LOT_EXPIRY_SWEEP_SECONDS,
    autoTopUpIntervalMs: e.AUTO_TOP_UP_INTERVAL_MS,
    expiryNoticeDays: e.EXPIRY_NOTICE_DAYS,
    logLevel: e.LOG_LEVEL,
    bodyLimitBytes: e.BODY_LIMIT_BYTES,
    shutdownTimeoutMs: e.SHUTDOWN_TIMEOUT_MS,
    shutdownDrainMs: e.SHUTDOWN_DRAIN_MS,
    metricsToken: e.METRICS_TOKEN,
    benchNoop: e.BENCH_NOOP,
    admin: Object.freeze(admin),
    events: Object.freeze({
      lowBalanceThreshold: e.LOW_BALANCE_THRESHOLD,
      webhookAllowPrivate: e.WEBHOOK_ALLOW_PRIVATE,
      webhookDisableAfterMs: Math.round(e.WEBHOOK_DISABLE_AFTER_HOURS * 3_600_000),
      webhookRetryScheduleMs: Object.freeze(retrySchedule.ok ? retrySchedule.value : []),
      webhookTimeoutMs: e.WEBHOOK_TIMEOUT_MS,
      deliveryIntervalMs: e.WEBHOOK_DELIVERY_INTERVAL_MS,
    }),
  });
}

/** A config for tests and tools: defaults plus overrides, validated like the real one. */
export function configFrom(overrides: Record<string, string | undefined>): Readonly<Config> {
  return loadConfig({ NODE_ENV: 'test', LOG_LEVEL: 'silent', ...overrides });
}
