/**
 * Configuration, read once from the environment and validated before anything starts.
 * Every mistake is a ConfigError whose message names the variable and what it expects;
 * the command line prints that one line and exits.
 */

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export interface UpstreamConfig {
  issuer: string;
  clientId: string;
  clientSecret: string;
  /** Plain-http upstream issuer, an explicit opt-in that production refuses. */
  allowHttp: boolean;
}

export interface Config {
  production: boolean;
  issuer: string;
  port: number;
  host: string;
  dbPath: string;
  /** Connections each process keeps to PostgreSQL (DEPUTY_DB_POOL). */
  dbPool: number;
  /** DEPUTY_SECRET when set; otherwise resolved from the file beside the database. */
  secret: string | undefined;
  /** null means the built-in development provider. */
  upstream: UpstreamConfig | null;
  idJagTtl: number;
  allowLoopbackServices: boolean;
  trustProxy: boolean;
  logLevel: string;
  /** 'pretty' for people at a terminal, 'json' for log collectors. */
  logFormat: 'json' | 'pretty';
  /** When set, /metrics answers only requests with `Authorization: Bearer <token>`. */
  metricsToken: string | null;
  /** How long SIGTERM waits for requests in flight before closing their connections (ms). */
  shutdownTimeoutMs: number;
  limits: {
    /** Largest request body accepted, in bytes. */
    bodyBytes: number;
    /** Requests per minute, 0 for no limit. */
    tokenPerClient: number;
    /** Failed client authentications per minute from one address. */
    clientAuthFailuresPerAddress: number;
    signInPerAddress: number;
    consentPerAddress: number;
  };
  keys: {
    alg: 'ES256' | 'EdDSA' | 'RS256';
    /** Automatic rotation when the active key is this many days old; 0 turns it off. */
    rotationDays: number;
    /** `Cache-Control: max-age` of the JWKS (seconds). */
    jwksMaxAge: number;
    /** Seconds a new key is published before it signs; at least jwksMaxAge. */
    prepublishSeconds: number;
  };
  events: {
    /** Give up on a revocation event this long after the revocation (seconds). */
    maxAgeSeconds: number;
    /** First retry delay (ms); it doubles each attempt, up to an hour. */
    retryBaseMs: number;
    /** How often the worker looks for due events (ms). */
    pollMs: number;
  };
}

export type Env = Record<string, string | undefined>;

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const MIN_SECRET_LENGTH = 32;
const MAX_ID_JAG_TTL = 900;
/** oidc-provider refuses bodies above 56 KiB itself; Deputy's limit can only be lower. */
const MAX_BODY_BYTES = 56 * 1024;

export function loadConfig(env: Env = process.env): Config {
  const production = env.NODE_ENV === 'production';
  const port = parseInteger('PORT', env.PORT, 4000, 0, 65535);
  // Without DEPUTY_ISSUER, the issuer is this machine at the chosen port.
  const issuer = parseIssuer('DEPUTY_ISSUER', env.DEPUTY_ISSUER ?? `http://localhost:${port || 4000}`);
  const dbPath = nonEmpty('DEPUTY_DB', env.DEPUTY_DB) ?? './data/deputy.db';
  const secret = parseSecret(env.DEPUTY_SECRET, production);
  checkDatabaseLocation(dbPath);
  if (isPostgresUrl(dbPath)) {
    // Every process must decrypt the same signing keys and honour the same cookies, and there
    // is no folder beside the database to keep a generated secret in.
    if (secret === undefined) {
      throw new ConfigError(`DEPUTY_SECRET is required with a PostgreSQL DEPUTY_DB (the same value in every process)`);
    }
  }
  const upstream = parseUpstream(env, production);
  // The development sign-in lets anyone in as anyone: by default only this machine reaches it.
  const host = nonEmpty('DEPUTY_HOST', env.DEPUTY_HOST) ?? (upstream === null ? '127.0.0.1' : '0.0.0.0');
  const dbPool = parseInteger('DEPUTY_DB_POOL', env.DEPUTY_DB_POOL, 10, 1, 100);
  const idJagTtl = parseInteger('DEPUTY_ID_JAG_TTL', env.DEPUTY_ID_JAG_TTL, 300, 1, MAX_ID_JAG_TTL);
  const allowLoopbackServices = parseBoolean(
    'DEPUTY_ALLOW_LOOPBACK_SERVICES',
    env.DEPUTY_ALLOW_LOOPBACK_SERVICES,
  );
  const trustProxy = parseBoolean('DEPUTY_TRUST_PROXY', env.DEPUTY_TRUST_PROXY);
  const logLevel = env.DEPUTY_LOG_LEVEL ?? 'info';
  const logFormat = parseChoice(
    'DEPUTY_LOG_FORMAT',
    env.DEPUTY_LOG_FORMAT,
    ['json', 'pretty'] as const,
    !production && process.stderr.isTTY ? 'pretty' : 'json',
  );
  const metricsToken = nonEmpty('DEPUTY_METRICS_TOKEN', env.DEPUTY_METRICS_TOKEN) ?? null;
  if (metricsToken !== null && metricsToken.length < 16) {
    throw new ConfigError('DEPUTY_METRICS_TOKEN must be at least 16 characters long');
  }
  const shutdownTimeoutMs =
    parseInteger('DEPUTY_SHUTDOWN_TIMEOUT', env.DEPUTY_SHUTDOWN_TIMEOUT, 10, 0, 600) * 1000;
  const limits = {
    bodyBytes: parseInteger('DEPUTY_BODY_LIMIT', env.DEPUTY_BODY_LIMIT, MAX_BODY_BYTES, 1024, MAX_BODY_BYTES),
    tokenPerClient: parseInteger('DEPUTY_RATE_LIMIT_TOKEN', env.DEPUTY_RATE_LIMIT_TOKEN, 3000, 0, 10_000_000),
    clientAuthFailuresPerAddress: parseInteger(
      'DEPUTY_RATE_LIMIT_CLIENT_AUTH_FAILURES',
      env.DEPUTY_RATE_LIMIT_CLIENT_AUTH_FAILURES,
      30,
      0,
      10_000_000,
    ),
    signInPerAddress: parseInteger('DEPUTY_RATE_LIMIT_SIGN_IN', env.DEPUTY_RATE_LIMIT_SIGN_IN, 30, 0, 10_000_000),
    consentPerAddress: parseInteger('DEPUTY_RATE_LIMIT_CONSENT', env.DEPUTY_RATE_LIMIT_CONSENT, 120, 0, 10_000_000),
  };
  const jwksMaxAge = parseInteger('DEPUTY_JWKS_MAX_AGE', env.DEPUTY_JWKS_MAX_AGE, 300, 1, 86400);
  const keys = {
    alg: parseChoice('DEPUTY_SIGNING_ALG', env.DEPUTY_SIGNING_ALG, ['ES256', 'EdDSA', 'RS256'] as const, 'ES256'),
    rotationDays: parseInteger('DEPUTY_KEY_ROTATION_DAYS', env.DEPUTY_KEY_ROTATION_DAYS, 90, 0, 3650),
    jwksMaxAge,
    prepublishSeconds: parseInteger(
      'DEPUTY_KEY_PREPUBLISH_SECONDS',
      env.DEPUTY_KEY_PREPUBLISH_SECONDS,
      2 * jwksMaxAge,
      1,
      30 * 86400,
    ),
  };
  if (keys.prepublishSeconds < jwksMaxAge) {
    throw new ConfigError(
      `DEPUTY_KEY_PREPUBLISH_SECONDS must be at least DEPUTY_JWKS_MAX_AGE (${jwksMaxAge}), so every cache sees a key before it signs`,
    );
  }
  const events = {
    maxAgeSeconds: parseInteger('DEPUTY_EVENT_MAX_AGE', env.DEPUTY_EVENT_MAX_AGE, 3 * 86400, 60, 30 * 86400),
    retryBaseMs: parseInteger('DEPUTY_EVENT_RETRY_BASE_MS', env.DEPUTY_EVENT_RETRY_BASE_MS, 5000, 10, 3600_000),
    pollMs: parseInteger('DEPUTY_EVENT_POLL_MS', env.DEPUTY_EVENT_POLL_MS, 5000, 10, 3600_000),
  };

  if (!LOG_LEVELS.includes(logLevel)) {
    throw new ConfigError(`DEPUTY_LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')}, got '${logLevel}'`);
  }

  if (production && allowLoopbackServices) {
    throw new ConfigError('DEPUTY_ALLOW_LOOPBACK_SERVICES is for development and is refused when NODE_ENV=production');
  }

  if (production && !issuer.startsWith('https://')) {
    throw new ConfigError(`DEPUTY_ISSUER must be an https URL when NODE_ENV=production, got '${issuer}'`);
  }

  return Object.freeze({
    production,
    issuer,
    port,
    host,
    dbPath,
    dbPool,
    secret,
    upstream,
    idJagTtl,
    allowLoopbackServices,
    trustProxy,
    logLevel,
    logFormat,
    metricsToken,
    shutdownTimeoutMs,
    limits: Object.freeze(limits),
    keys: Object.freeze(keys),
    events: Object.freeze(events),
  });
}

function nonEmpty(name: string, value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (value.trim() === '') throw new ConfigError(`${name} is set but empty`);
  return value;
}

/**
 * An issuer is an absolute http(s) URL with no query, fragment or trailing slash: services
 * build `<iss>/.well-known/jwks.json` by concatenation (SPEC 2.4, 9.2).
 */
function parseIssuer(name: string, value: string): string {
  const expects = 'an absolute http(s) URL with no trailing slash, query or fragment';
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(`${name} must be ${expects}, got '${value}'`);
  }

  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new ConfigError(`${name} must be ${expects}, got '${value}'`);
  }

  if (value.endsWith('/')) {
    throw new ConfigError(`${name} must not end with a slash, got '${value}'`);
  }

  if (url.search !== '' || url.hash !== '' || value.includes('?') || value.includes('#')) {
    throw new ConfigError(`${name} must be ${expects}, got '${value}'`);
  }

  if (url.username !== '' || url.password !== '') {
    throw new ConfigError(`${name} must not contain credentials`);
  }

  return value;
}

function parseInteger(
  name: string,
  value: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value)) {
    throw new ConfigError(`${name} must be a whole number from ${min} to ${max}, got '${value}'`);
  }

  const parsed = Number(value);
  if (parsed < min || parsed > max) {
    throw new ConfigError(`${name} must be a whole number from ${min} to ${max}, got '${value}'`);
  }

  return parsed;
}

function parseChoice<T extends string>(
  name: string,
  value: string | undefined,
  choices: readonly T[],
  fallback: T,
): T {
  if (value === undefined) return fallback;
  if (!(choices as readonly string[]).includes(value)) {
    throw new ConfigError(`${name} must be one of ${choices.join(', ')}, got '${value}'`);
  }
  return value as T;
}

function parseBoolean(name: string, value: string | undefined): boolean {
  if (value === undefined || value === '' || value === 'false' || value === '0') return false;
  if (value === 'true' || value === '1') return true;
  throw new ConfigError(`${name} must be 'true' or 'false' (or '1' or '0'), got '${value}'`);
}

/** Whether DEPUTY_DB names a PostgreSQL server rather than a SQLite file. */
export function isPostgresUrl(value: string): boolean {
  return /^postgres(ql)?:\/\//i.test(value);
}

/**
 * DEPUTY_DB is a SQLite file path or a postgres:// URL. Anything that looks like a URL but is
 * not one of those (`postgress://`, `pg://`, `postgres:/…`) is refused rather than taken as a
 * file name: several processes would each quietly get a database of their own.
 */
function checkDatabaseLocation(value: string): void {
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(value)?.[1];
  // A Windows drive letter (C:\…) is a path, not a scheme.
  if (scheme === undefined || (scheme.length === 1 && /^[a-z]:[\\/]/i.test(value))) return;
  if (!isPostgresUrl(value)) {
    throw new ConfigError(`DEPUTY_DB must be a SQLite file path or a postgres:// URL, not '${scheme}:…'`);
  }
  const rest = value.slice(value.indexOf('//') + 2).split(/[?#]/, 1)[0] ?? '';
  const authority = rest.split('/', 1)[0] ?? '';
  if (rest.split('@').length > 2 || authority === '' || !URL.canParse(value)) {
    throw new ConfigError(
      'DEPUTY_DB is not a valid postgres:// URL (a password holding @, /, :, ? or # must be percent-encoded, @ as %40)',
    );
  }
}

function parseSecret(value: string | undefined, production: boolean): string | undefined {
  if (value === undefined) {
    if (production) {
      throw new ConfigError(
        `DEPUTY_SECRET is required when NODE_ENV=production (at least ${MIN_SECRET_LENGTH} random characters)`,
      );
    }
    return undefined;
  }

  if (value.length < MIN_SECRET_LENGTH) {
    throw new ConfigError(`DEPUTY_SECRET must be at least ${MIN_SECRET_LENGTH} characters long`);
  }

  return value;
}

function parseUpstream(env: Env, production: boolean): UpstreamConfig | null {
  const issuer = nonEmpty('DEPUTY_UPSTREAM_ISSUER', env.DEPUTY_UPSTREAM_ISSUER);
  const clientId = nonEmpty('DEPUTY_UPSTREAM_CLIENT_ID', env.DEPUTY_UPSTREAM_CLIENT_ID);
  const clientSecret = nonEmpty('DEPUTY_UPSTREAM_CLIENT_SECRET', env.DEPUTY_UPSTREAM_CLIENT_SECRET);
  const allowHttp = parseBoolean('DEPUTY_UPSTREAM_ALLOW_HTTP', env.DEPUTY_UPSTREAM_ALLOW_HTTP);

  if (issuer === undefined) {
    if (clientId !== undefined || clientSecret !== undefined) {
      throw new ConfigError('DEPUTY_UPSTREAM_ISSUER must be set when an upstream client id or secret is');
    }
    if (production) {
      throw new ConfigError(
        'DEPUTY_UPSTREAM_ISSUER is required when NODE_ENV=production: the development sign-in accepts any email',
      );
    }
    return null;
  }

  let url: URL;
  try {
    url = new URL(issuer);
  } catch {
    throw new ConfigError(`DEPUTY_UPSTREAM_ISSUER must be an absolute https URL, got '${issuer}'`);
  }

  if (url.protocol === 'http:') {
    if (!allowHttp) {
      throw new ConfigError(
        `DEPUTY_UPSTREAM_ISSUER must be https (set DEPUTY_UPSTREAM_ALLOW_HTTP=true for a local test provider), got '${issuer}'`,
      );
    }
  } else if (url.protocol !== 'https:') {
    throw new ConfigError(`DEPUTY_UPSTREAM_ISSUER must be an absolute https URL, got '${issuer}'`);
  }

  // Also with an https issuer: the flag lets every upstream request (token, userinfo) use http.
  if (allowHttp && production) {
    throw new ConfigError('DEPUTY_UPSTREAM_ALLOW_HTTP is refused when NODE_ENV=production');
  }

  if (clientId === undefined) {
    throw new ConfigError('DEPUTY_UPSTREAM_CLIENT_ID is required when DEPUTY_UPSTREAM_ISSUER is set');
  }

  if (clientSecret === undefined) {
    throw new ConfigError('DEPUTY_UPSTREAM_CLIENT_SECRET is required when DEPUTY_UPSTREAM_ISSUER is set');
  }

  return { issuer, clientId, clientSecret, allowHttp };
}
