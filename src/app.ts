/**
 * Deputy assembled: the koa application and the route table, built from a validated
 * configuration. `createDeputy` does the work that can fail (database, keys, upstream
 * discovery) before any request is served.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Router from '@koa/router';
import Koa from 'koa';
import type { Logger } from 'pino';
import type { Config } from './config.ts';
import { openDatabaseOrExplain, PostgresDatabase, type Database } from './db/index.ts';
import { Store } from './db/store.ts';
import { createDevIdp, DEV_IDP_CLIENT_ID } from './dev-idp/index.ts';
import { KeyStore } from './keys/keystore.ts';
import { metadataRoutes } from './keys/routes.ts';
import { deriveSecrets, resolveSecret } from './secret.ts';
import { UpstreamClient } from './upstream/client.ts';
import { loginRoutes } from './upstream/routes.ts';
import { DelegationStore } from './db/delegations.ts';
import { purgeExpiredModels } from './db/oidc-adapter.ts';
import { OutboxStore } from './db/outbox.ts';
import { DeliveryWorker } from './events/worker.ts';
import { interactionRoutes } from './oauth/interactions.ts';
import { createAuthorizationServer } from './oauth/provider.ts';
import { retentionFor } from './lifetimes.ts';
import { registerTokenExchange } from './oauth/token-exchange.ts';
import { ServiceDirectory } from './services/directory.ts';
import { PageError } from './web/errors.ts';
import { pageRoutes, RedirectDone } from './web/pages.ts';
import { Sessions, type WebState } from './web/session.ts';
import { createViews, type Views } from './web/views.ts';
import { Metrics } from './ops/metrics.ts';
import { limitBodies, opsRoutes, rateLimits, requestTracking } from './ops/http.ts';

export interface Deputy {
  app: Koa;
  store: Store;
  delegations: DelegationStore;
  outbox: OutboxStore;
  worker: DeliveryWorker;
  keys: KeyStore;
  upstream: UpstreamClient;
  devIdp: boolean;
  metrics: Metrics;
  /**
   * The first step of a graceful stop: /readyz answers 503 and responses close their
   * connections, so load balancers and keep-alive clients move away.
   */
  beginShutdown(): void;
  /** Stops the delivery worker (letting deliveries in flight settle) and closes the database. */
  close(): Promise<void>;
}

const PURGE_INTERVAL_MS = 10 * 60 * 1000;
const SERVICE_FETCH_TIMEOUT_MS = 5000;
const STYLESHEET = readFileSync(
  join(dirname(fileURLToPath(import.meta.url)), 'web/static/deputy.css'),
  'utf8',
);
const ICON = readFileSync(join(dirname(fileURLToPath(import.meta.url)), 'web/static/icon.svg'), 'utf8');

export async function createDeputy(config: Config, log: Logger): Promise<Deputy> {
  const { secret } = resolveSecret(config);
  const secrets = deriveSecrets(secret);
  const database = await openDatabaseOrExplain(config.dbPath, { pool: config.dbPool });
  try {
    await database.migrate();
    return await assemble(config, log, database, secrets);
  } catch (error) {
    await database.close();
    throw error;
  }
}

async function assemble(
  config: Config,
  log: Logger,
  database: Database,
  secrets: ReturnType<typeof deriveSecrets>,
): Promise<Deputy> {
  const store = new Store(database);
  const keys = new KeyStore(store, secrets.keyEncryptionKey, {
    alg: config.keys.alg,
    prepublishSeconds: config.keys.prepublishSeconds,
    retentionSeconds: retentionFor(config),
    rotationDays: config.keys.rotationDays,
  });
  await keys.init();
  keys.on('error', (error) => log.error({ err: error }, 'signing key refresh failed'));
  keys.start(Math.min(5000, (config.keys.prepublishSeconds * 1000) / 2));

  const devIdp = config.upstream === null;
  const views = createViews({ devIdp, production: config.production });
  const redirectUri = `${config.issuer}/login/callback`;

  const delegations = new DelegationStore(database);
  const outbox = new OutboxStore(database);
  const metrics = new Metrics({
    activeDelegations: () => delegations.countActive(),
    outboxByState: () => outbox.countByState(),
    signingKeyAgeSeconds: () => Math.max(0, Math.floor(Date.now() / 1000) - keys.activeSince()),
  });
  let draining = false;

  // Behind the proxy, the client's address is the last one in X-Forwarded-For, the one the
  // proxy added; those before it are whatever the client sent.
  const app = new Koa({ keys: secrets.cookieKeys, proxy: config.trustProxy, maxIpsCount: 1 });
  app.silent = true;
  app.use(requestTracking({ log, metrics, draining: () => draining }));
  app.use(canonicalOrigin(config.issuer));
  app.use(securityHeaders(config.issuer));
  app.use(errorPages(views, log));
  const ops = opsRoutes({
    metrics,
    metricsToken: config.metricsToken,
    readiness: {
      database: () => database.ping().then(() => true),
      keys: () => keys.active() !== undefined,
      draining: () => draining,
    },
  });
  app.use(ops.routes());
  const bodyLimit = config.limits.bodyBytes;
  app.use(limitBodies(bodyLimit));
  app.use(rateLimits(config, metrics, database instanceof PostgresDatabase ? database.pool : undefined));

  let upstream: UpstreamClient;
  if (config.upstream === null) {
    const idp = await createDevIdp({
      deputyIssuer: config.issuer,
      database,
      clientSecret: secrets.devIdpClientSecret,
      cookieKeys: secrets.cookieKeys,
      views,
      bodyLimit: config.limits.bodyBytes,
    });
    for (const middleware of idp.middleware) app.use(middleware);
    upstream = new UpstreamClient(
      {
        issuer: idp.issuer,
        clientId: DEV_IDP_CLIENT_ID,
        clientSecret: secrets.devIdpClientSecret,
        allowHttp: config.issuer.startsWith('http://'),
      },
      redirectUri,
    );
  } else {
    upstream = new UpstreamClient(config.upstream, redirectUri);
    await upstream.configuration();
  }

  const secure = config.issuer.startsWith('https://');
  const sessions = new Sessions({ store, secure, csrfKey: secrets.cookieKeys[0] as string });
  app.use(async (ctx, next) => {
    // Behind a TLS-terminating proxy koa sees plain http; the issuer says what browsers use.
    if (secure) ctx.cookies.secure = true;
    await next();
  });
  app.use(sessions.middleware());

  const router = new Router();
  router.get('/static/deputy.css', function stylesheet(ctx) {
    ctx.set('Cache-Control', 'public, max-age=3600');
    ctx.type = 'text/css';
    ctx.body = STYLESHEET;
  });
  router.get('/static/icon.svg', function icon(ctx) {
    ctx.set('Cache-Control', 'public, max-age=86400');
    ctx.type = 'image/svg+xml';
    ctx.body = ICON;
  });

  await delegations.clearServiceCache();
  const guard = { allowLoopback: config.allowLoopbackServices, timeoutMs: SERVICE_FETCH_TIMEOUT_MS };
  const directory = new ServiceDirectory(delegations, guard);
  const worker = new DeliveryWorker({
    issuer: config.issuer,
    outbox,
    keys,
    guard,
    log,
    ...config.events,
    onResult: (result) => metrics.delivery(result),
  });
  const { provider, middleware: authorizationServer } = createAuthorizationServer({
    config,
    store,
    delegations,
    keys,
    views,
    cookieKeys: secrets.cookieKeys,
    log,
    metrics,
    extend: (built) => registerTokenExchange(built, { config, store, delegations, directory, keys, log, metrics }),
  });
  keys.on('change', (key) => log.info({ event: 'signing_key_active', kid: key.kid, alg: key.alg }, 'new signing key active'));

  for (const routes of [
    router,
    metadataRoutes(config.issuer, keys, config.keys.jwksMaxAge),
    loginRoutes({ issuer: config.issuer, upstream, forceLogin: devIdp, store, sessions, views, log, bodyLimit }),
    interactionRoutes({ provider, store, delegations, directory, sessions, views, log, bodyLimit }),
    pageRoutes({
      store,
      delegations,
      outbox,
      directory,
      sessions,
      views,
      log,
      upstreamIssuer: upstream.issuer,
      revoked: () => worker.wake(),
      bodyLimit,
    }),
  ]) {
    app.use(routes.routes());
    app.use(routes.allowedMethods());
  }
  app.use(authorizationServer);

  app.use(function notFound() {
    throw new PageError(404, 'Not found', 'There is no page at this address.');
  });

  let purging: Promise<unknown> = Promise.resolve();
  const purgeExpired = () => {
    purging = Promise.all([store.purgeExpired(), delegations.purgeExpired(), purgeExpiredModels(database)]).catch(
      (error: unknown) => log.error({ err: error }, 'purging expired rows failed'),
    );
  };
  purgeExpired();
  const purge = setInterval(purgeExpired, PURGE_INTERVAL_MS);
  purge.unref();
  worker.start();

  return {
    app,
    store,
    delegations,
    outbox,
    worker,
    keys,
    upstream,
    devIdp,
    metrics,
    beginShutdown() {
      draining = true;
    },
    async close() {
      clearInterval(purge);
      keys.stop();
      await worker.stop();
      await purging;
      await database.close();
    },
  };
}

/**
 * Every URL Deputy builds (metadata endpoints, device links, redirects) names the issuer's
 * origin, whatever Host or X-Forwarded-* headers a request carries: a forged Host must not
 * put another `jwks_uri` or `token_endpoint` in a cached metadata document.
 */
function canonicalOrigin(issuer: string): Koa.Middleware {
  const { host, protocol } = new URL(issuer);
  const proto = protocol.slice(0, -1);
  return async function useIssuerOrigin(ctx, next) {
    ctx.req.headers.host = host;
    ctx.req.headers['x-forwarded-host'] = host;
    ctx.req.headers['x-forwarded-proto'] = proto;
    await next();
  };
}

/**
 * Headers for every response: a Content-Security-Policy that allows no inline script or style
 * and nothing from elsewhere but images (agents' and services' logos), no framing
 * (clickjacking on the consent pages), no referrer leaking consent or device links, no
 * content sniffing. oidc-provider adds the hash of its one inline script (the form_post
 * response mode) to `script-src` itself.
 */
function securityHeaders(issuer: string): Koa.Middleware {
  const images = issuer.startsWith('http://') ? "'self' https: http: data:" : "'self' https: data:";
  const policy = [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    `img-src ${images}`,
    "font-src 'self'",
    "connect-src 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
  ].join('; ');
  return async function setSecurityHeaders(ctx, next) {
    ctx.set('Content-Security-Policy', policy);
    ctx.set('X-Frame-Options', 'DENY');
    ctx.set('Referrer-Policy', 'no-referrer');
    ctx.set('X-Content-Type-Options', 'nosniff');
    await next();
  };
}

/** The last word on errors for people's pages: a readable page, never a stack or detail. */
function errorPages(views: Views, log: Logger): Koa.Middleware {
  return async function renderErrors(ctx, next) {
    try {
      await next();
    } catch (error) {
      if (error instanceof RedirectDone) return;
      const state = ctx.state as Partial<WebState>;
      let status = 500;
      let title = 'Something went wrong';
      let message = 'Deputy could not finish this request. Try again in a moment.';
      let back: PageError['back'];

      if (error instanceof PageError) {
        ({ status, title, message, back } = error);
        const cause = error.cause instanceof Error ? error.cause.message : undefined;
        log.debug({ status, path: ctx.path, reason: message, cause }, 'request refused');
      } else if (isClientHttpError(error)) {
        status = error.status;
        title = status === 413 ? 'Request too large' : 'Bad request';
        message = error.expose ? error.message : 'Deputy could not read this request.';
        log.debug({ status, path: ctx.path }, 'request refused');
      } else {
        log.error({ err: error, path: ctx.path, method: ctx.method }, 'request failed');
      }

      ctx.status = status;
      ctx.type = 'html';
      ctx.set('Cache-Control', 'no-store');
      ctx.body = views.render('error', {
        title,
        message,
        back: back ?? null,
        user: state.user ?? null,
        csrf: state.csrf ?? null,
      });
    }
  };
}

function isClientHttpError(error: unknown): error is { status: number; expose: boolean; message: string } {
  if (typeof error !== 'object' || error === null) return false;
  const status = (error as { status?: unknown }).status;
  return typeof status === 'number' && status >= 400 && status < 500;
}
