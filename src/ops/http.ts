/**
 * What surrounds every request: its id and access log line, body size and rate limits, and
 * the health and metrics endpoints a platform polls.
 */
import { randomUUID, timingSafeEqual, createHash } from 'node:crypto';
import Router from '@koa/router';
import type Koa from 'koa';
import type { Logger } from 'pino';
import type pg from 'pg';
import { RateLimiterMemory, RateLimiterPostgres, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';
import type { Config } from '../config.ts';
import { RATE_LIMIT_TABLE } from '../db/index.ts';
import { DEV_IDP_PATH } from '../dev-idp/index.ts';
import { ROUTES } from '../oauth/provider.ts';
import { PageError } from '../web/errors.ts';
import { requestContext } from './context.ts';
import type { Metrics } from './metrics.ts';

/** Endpoints whose callers are programs: errors there are RFC 6749 section 5.2 JSON. */
const OAUTH_ENDPOINTS = new Set<string>([
  ROUTES.token,
  ROUTES.device_authorization,
  ROUTES.revocation,
  ROUTES.userinfo,
]);
/** Endpoints a client authenticates at: limited per client. */
const CLIENT_ENDPOINTS = new Set<string>([ROUTES.token, ROUTES.device_authorization, ROUTES.revocation]);
/** An incoming X-Request-Id is kept only when it cannot disturb a log line. */
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const QUIET_PATHS = new Set(['/healthz', '/readyz', '/metrics']);

export function isOAuthEndpoint(path: string): boolean {
  return OAUTH_ENDPOINTS.has(path);
}

/**
 * First in the chain: gives the request its id (the caller's X-Request-Id when it is a plain
 * token, else a new UUID), answers with it, and writes one access log line when the request
 * is done: method, path without the query (codes and tokens travel there), status, time.
 */
export function requestTracking(options: { log: Logger; metrics: Metrics; draining: () => boolean }): Koa.Middleware {
  const { log, metrics, draining } = options;
  return async function trackRequest(ctx, next) {
    const incoming = ctx.get('X-Request-Id');
    const id = REQUEST_ID.test(incoming) ? incoming : randomUUID();
    const startedAt = performance.now();
    ctx.set('X-Request-Id', id);

    await requestContext.run({ id, startedAt }, async () => {
      let status = 500;
      try {
        await next();
        status = ctx.status;
        // While shutting down, keep-alive connections close after their current request,
        // also when the stop began while it was being served.
        if (draining() && !ctx.headerSent) ctx.set('Connection', 'close');
      } finally {
        metrics.request(ctx.method, status);
        const line = {
          event: 'request',
          method: ctx.method,
          path: ctx.path,
          status,
          ms: Math.round((performance.now() - startedAt) * 100) / 100,
          ip: ctx.ip,
        };
        if (QUIET_PATHS.has(ctx.path)) log.debug(line, 'request');
        else log.info(line, 'request');
      }
    });
  };
}

/** Paths whose bodies oidc-provider reads itself, with only its own 56 KiB cap. */
function readByProvider(path: string): boolean {
  return (
    isOAuthEndpoint(path) ||
    path === ROUTES.authorization ||
    path === ROUTES.userinfo ||
    path === ROUTES.code_verification ||
    path.startsWith(`${ROUTES.code_verification}/`)
  );
}

/**
 * Holds every request body to DEPUTY_BODY_LIMIT: 413, as JSON on the OAuth endpoints and as a
 * page elsewhere. A body declared larger is refused before anyone reads it. A body sent without
 * a length (chunked) to a path oidc-provider parses is read here, up to the limit, and handed
 * to it as read (it takes a body read before it, and says so once in the log); people's forms
 * are held to the limit by their own parser (web/body.ts).
 */
export function limitBodies(limitBytes: number): Koa.Middleware {
  /** Answers the request as refused: JSON on the OAuth endpoints, a page elsewhere. */
  function refuse(ctx: Koa.Context, status: 400 | 413, description: string, page: [string, string]): void {
    ctx.set('Connection', 'close');
    if (!isOAuthEndpoint(ctx.path)) throw new PageError(status, ...page);
    ctx.status = status;
    ctx.body = { error: 'invalid_request', error_description: description };
  }
  const tooLarge = (ctx: Koa.Context) =>
    refuse(ctx, 413, `the request body is larger than ${limitBytes} bytes`, [
      'Request too large',
      `Deputy accepts request bodies of at most ${limitBytes} bytes.`,
    ]);

  return async function limitBody(ctx, next) {
    const declared = ctx.get('Content-Length');
    if (declared !== '') return Number(declared) > limitBytes ? tooLarge(ctx) : next();
    if (ctx.get('Transfer-Encoding') === '' || !readByProvider(ctx.path)) return next();

    const chunks: Buffer[] = [];
    let received = 0;
    try {
      for await (const chunk of ctx.req.iterator({ destroyOnReturn: false })) {
        received += (chunk as Buffer).length;
        if (received > limitBytes) break;
        chunks.push(chunk as Buffer);
      }
    } catch {
      // The sender broke off; whoever is still listening learns the body was not read.
      return refuse(ctx, 400, 'the request body could not be read', ['Bad request', 'Deputy could not read this request.']);
    }
    if (received > limitBytes) return tooLarge(ctx);
    ctx.request.body = Buffer.concat(chunks, received);
    return next();
  };
}

interface Limiter {
  name: string;
  limiter: RateLimiterAbstract;
}

/**
 * A limit of `perMinute` requests per key. On PostgreSQL the counters are rows every process
 * shares, so several processes together allow the configured rate; should the database fail
 * to answer, a counter in memory stands in rather than refusing every request. On SQLite (one
 * process) they live in memory.
 */
function limiter(name: string, perMinute: number, pool: pg.Pool | undefined): Limiter | undefined {
  if (perMinute === 0) return undefined;
  const options = { points: perMinute, duration: 60, keyPrefix: name };
  if (pool === undefined) return { name, limiter: new RateLimiterMemory(options) };
  return {
    name,
    limiter: new RateLimiterPostgres({
      ...options,
      storeClient: pool,
      storeType: 'pool',
      tableName: RATE_LIMIT_TABLE,
      tableCreated: true,
      clearExpiredByTimeout: true,
      insuranceLimiter: new RateLimiterMemory(options),
    }),
  };
}

/**
 * Rate limits (see the README's limits section), shared by every process on PostgreSQL and
 * per process on SQLite:
 *
 * - the token, device authorization and revocation endpoints, per client: the client id of
 *   the Basic Authorization header (else per address); a request that then fails client
 *   authentication is given back to that client and counted against its address instead, so
 *   nobody spends another client's allowance by naming it;
 * - failed client authentications per address;
 * - sign-in (Deputy's and the development provider's) per address;
 * - consent, connection and device-code pages per address (user codes are short).
 * Over the limit: 429 with Retry-After, as RFC 6749 JSON (`temporarily_unavailable`) on the
 * OAuth endpoints and as a page elsewhere.
 */
export function rateLimits(config: Config, metrics: Metrics, pool?: pg.Pool): Koa.Middleware {
  const limits = config.limits;
  const token = limiter('token', limits.tokenPerClient, pool);
  const authFailures = limiter('client_auth_failures', limits.clientAuthFailuresPerAddress, pool);
  const signIn = limiter('sign_in', limits.signInPerAddress, pool);
  const consent = limiter('consent', limits.consentPerAddress, pool);

  function pageLimiter(method: string, path: string): Limiter | undefined {
    // Sign-ins started (each stores an attempt), completed, and credentials posted to the
    // development provider: one sign-in counts two or three.
    if (path === '/login' || path === '/login/callback') return signIn;
    if (method === 'POST' && path.startsWith(`${DEV_IDP_PATH}/`)) return signIn;
    if (
      path.startsWith('/consent/') ||
      path.startsWith('/interaction/') ||
      path === ROUTES.code_verification ||
      path.startsWith(`${ROUTES.code_verification}/`)
    ) {
      return consent;
    }
    return undefined;
  }

  return async function limitRate(ctx, next) {
    if (CLIENT_ENDPOINTS.has(ctx.path) && ctx.method === 'POST') {
      if (authFailures !== undefined) {
        const failures = await authFailures.limiter.get(limitKey(ctx.ip));
        if (failures !== null && failures.remainingPoints <= 0) return tooMany(ctx, authFailures.name, failures);
      }
      const clientId = claimedClientId(ctx);
      const key = limitKey(clientId ?? `address:${ctx.ip}`);
      if (token !== undefined) {
        try {
          await token.limiter.consume(key);
        } catch (refused) {
          if (refused instanceof RateLimiterRes) return tooMany(ctx, token.name, refused);
          throw refused;
        }
      }
      await next();
      // Charged to the client it named only if that client authenticated: a request refused
      // before or at client authentication (a wrong secret, a body that is not a form) must not
      // spend the allowance of a client whose id anyone can read.
      // (oidc-provider knows the client before it has checked the secret: a 401 says it failed.)
      const named = (ctx as { oidc?: { client?: { clientId?: string } } }).oidc?.client?.clientId;
      const authenticated = named === clientId && ctx.status !== 401;
      if (clientId !== undefined && !authenticated) await token?.limiter.reward(key, 1);
      if (ctx.status === 401) await authFailures?.limiter.penalty(limitKey(ctx.ip), 1);
      return;
    }

    const page = pageLimiter(ctx.method, ctx.path);
    if (page !== undefined) {
      try {
        await page.limiter.consume(limitKey(ctx.ip));
      } catch (refused) {
        if (refused instanceof RateLimiterRes) return tooMany(ctx, page.name, refused);
        throw refused;
      }
    }
    await next();
  };

  function tooMany(ctx: Koa.Context, name: string, result: RateLimiterRes): void {
    metrics.rateLimited(name);
    const seconds = Math.max(1, Math.ceil(result.msBeforeNext / 1000));
    ctx.set('Retry-After', String(seconds));
    if (isOAuthEndpoint(ctx.path)) {
      ctx.status = 429;
      ctx.set('Cache-Control', 'no-store');
      ctx.body = {
        error: 'temporarily_unavailable',
        error_description: `too many requests; retry after ${seconds} seconds`,
      };
      return;
    }
    throw new PageError(429, 'Too many requests', `Too many requests from here. Try again in ${seconds} seconds.`);
  }
}

/**
 * The client a token request says it comes from, before anyone has checked it: the user of a
 * Basic Authorization header. Clients that authenticate in the body (client_secret_post,
 * private_key_jwt) are limited by address instead: oidc-provider reads the body itself, and
 * reading it here first would put it on a fallback path oidc-provider does not recommend.
 */
/**
 * A counter's key: short keys as they are, longer ones (a client id is whatever a header says)
 * by their hash, so every key fits the PostgreSQL counters' key column.
 */
function limitKey(key: string): string {
  return key.length <= 128 ? key : `sha256:${createHash('sha256').update(key).digest('base64url')}`;
}

function claimedClientId(ctx: Koa.Context): string | undefined {
  const authorization = ctx.get('Authorization');
  if (!/^basic /i.test(authorization)) return undefined;
  const decoded = Buffer.from(authorization.slice(6).trim(), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon <= 0) return undefined;
  const user = decoded.slice(0, colon);
  try {
    return decodeURIComponent(user.replace(/\+/g, ' '));
  } catch {
    return user;
  }
}

export interface Readiness {
  database(): Promise<boolean>;
  keys(): boolean;
  draining(): boolean;
}

/**
 * `/healthz`: the process answers. `/readyz`: it can serve (the database answers, a signing
 * key is loaded, not shutting down), else 503 so a load balancer stops sending traffic.
 * `/metrics`: Prometheus text, behind a bearer token when DEPUTY_METRICS_TOKEN is set.
 */
export function opsRoutes(options: { metrics: Metrics; readiness: Readiness; metricsToken: string | null }): Router {
  const { metrics, readiness, metricsToken } = options;
  const router = new Router();

  router.get('/healthz', function healthz(ctx) {
    ctx.set('Cache-Control', 'no-store');
    ctx.body = { status: 'ok' };
  });

  router.get('/readyz', async function readyz(ctx) {
    const checks = {
      database: (await readiness.database().catch(() => false)) ? 'ok' : 'unavailable',
      keys: safely(readiness.keys) ? 'ok' : 'unavailable',
      shutdown: readiness.draining() ? 'in progress' : 'no',
    };
    const ready = checks.database === 'ok' && checks.keys === 'ok' && checks.shutdown === 'no';
    ctx.set('Cache-Control', 'no-store');
    ctx.status = ready ? 200 : 503;
    ctx.body = { status: ready ? 'ready' : 'unavailable', checks };
  });

  router.get('/metrics', async function prometheus(ctx) {
    if (metricsToken !== null && !bearerMatches(ctx.get('Authorization'), metricsToken)) {
      ctx.status = 401;
      ctx.set('WWW-Authenticate', 'Bearer realm="deputy-metrics"');
      ctx.set('Cache-Control', 'no-store');
      ctx.body = { error: 'invalid_token', error_description: 'metrics need the bearer token set in DEPUTY_METRICS_TOKEN' };
      return;
    }
    ctx.set('Cache-Control', 'no-store');
    ctx.type = metrics.registry.contentType;
    ctx.body = await metrics.registry.metrics();
  });

  return router;
}

function safely(check: () => boolean): boolean {
  try {
    return check();
  } catch {
    return false;
  }
}

function bearerMatches(header: string, token: string): boolean {
  const match = /^Bearer\s+(\S+)$/i.exec(header);
  if (match === null) return false;
  const digest = (value: string) => createHash('sha256').update(value).digest();
  return timingSafeEqual(digest(match[1] as string), digest(token));
}
