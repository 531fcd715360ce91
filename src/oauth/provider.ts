/**
 * Deputy's authorization server: oidc-provider mounted in Deputy's koa app, its storage in
 * SQLite, its clients the agent registry, its ID tokens signed with Deputy's key. Agents
 * connect with the authorization code (PKCE) or device grant, and mint with the token-exchange
 * grant registered in token-exchange.ts.
 */
import { timingSafeEqual } from 'node:crypto';
import type Koa from 'koa';
import type { Logger } from 'pino';
import mount from 'koa-mount';
import { errors, Provider, type AdapterPayload, type Configuration } from 'oidc-provider';
import type { Config } from '../config.ts';
import { ID_TOKEN_TTL_SECONDS } from '../lifetimes.ts';
import { createAdapter } from '../db/oidc-adapter.ts';
import type { DelegationStore } from '../db/delegations.ts';
import { sha256, type Agent, type Store } from '../db/store.ts';
import { CLIENT_ASSERTION_ALGS } from '../agents/registry.ts';
import type { KeyStore } from '../keys/keystore.ts';
import { ID_JAG_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT } from '../keys/routes.ts';
import { requestSeconds } from '../ops/context.ts';
import type { Metrics } from '../ops/metrics.ts';
import type { Views } from '../web/views.ts';
import type { WebState } from '../web/session.ts';

export const DEVICE_CODE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
export const SCOPES = ['openid', 'offline_access', 'email', 'profile'];

/** Paths oidc-provider answers; everything else is Deputy's own. */
export const ROUTES = {
  authorization: '/authorize',
  token: '/token',
  device_authorization: '/device_authorization',
  code_verification: '/device',
  userinfo: '/userinfo',
  revocation: '/revoke',
  jwks: '/.well-known/jwks.json',
  end_session: '/session/end',
} as const;

const PROVIDER_PREFIXES = [
  ROUTES.authorization,
  ROUTES.token,
  ROUTES.device_authorization,
  ROUTES.code_verification,
  ROUTES.userinfo,
  ROUTES.revocation,
  ROUTES.end_session,
  '/.well-known/openid-configuration',
];

/** Endpoints agents only POST to: any other method is answered 405 in JSON, not with a page. */
const POST_ONLY_PATHS = new Set<string>([ROUTES.token, ROUTES.device_authorization, ROUTES.revocation]);

/**
 * oidc-provider routes people open in a browser; its errors there are Deputy's error page. Every
 * other route answers agents and services, whose errors are JSON (RFC 6749 section 5.2) even
 * when the request's Accept header prefers HTML.
 */
const PAGE_ROUTES = new Set(['authorization', 'resume', 'code_verification', 'device_resume']);

const SESSION_TTL_SECONDS = 12 * 3600;

/** Client assertions may not claim to live longer than this (RFC 7523 section 3, item 4). */
const MAX_CLIENT_ASSERTION_LIFETIME = 600;
const MAX_JTI_LENGTH = 255;

/** Explicit types a client assertion may carry (SPEC 4.1); any other `typ` is refused. */
const CLIENT_ASSERTION_TYPES = new Set(['JWT', 'client-authentication+jwt', 'application/client-authentication+jwt']);

export interface AuthorizationServerOptions {
  config: Config;
  store: Store;
  delegations: DelegationStore;
  keys: KeyStore;
  views: Views;
  cookieKeys: string[];
  log: Logger;
  metrics?: Metrics;
  /** Called with each provider built, to register grants on it (the mint). */
  extend: (provider: Provider) => void;
}


/** The client metadata oidc-provider sees for an agent. */
export function clientMetadataOf(agent: Agent, idTokenAlg: string): AdapterPayload {
  // Token exchange is listed for public agents too, so that the mint itself answers them with
  // `unauthorized_client` (RFC 6749 section 5.2) rather than a generic refusal.
  const grantTypes = [DEVICE_CODE_GRANT, 'refresh_token', TOKEN_EXCHANGE_GRANT];
  if (agent.redirectUris.length > 0) grantTypes.unshift('authorization_code');

  return {
    client_id: agent.clientId,
    client_name: agent.name,
    ...(agent.logoUri ? { logo_uri: agent.logoUri } : {}),
    redirect_uris: agent.redirectUris,
    response_types: agent.redirectUris.length > 0 ? ['code'] : [],
    grant_types: grantTypes,
    token_endpoint_auth_method: agent.tokenEndpointAuthMethod,
    id_token_signed_response_alg: idTokenAlg,
    // For secret-based agents oidc-provider holds the hash; compareClientSecret below hashes
    // what the agent presents. HS* algorithms are disabled, so it is never used as a key.
    ...(agent.secretHash ? { client_secret: agent.secretHash } : {}),
    ...(agent.jwks ? { jwks: agent.jwks } : {}),
    ...(agent.jwksUri ? { jwks_uri: agent.jwksUri } : {}),
  } as AdapterPayload;
}

/**
 * The authorization server. oidc-provider takes its signing keys once, at construction, so a
 * new active key (a rotation) builds a new provider; everything it keeps lives in the database,
 * so requests before and after the swap see the same grants, sessions and tokens.
 */
export function createAuthorizationServer(options: AuthorizationServerOptions): {
  provider: () => Provider;
  middleware: Koa.Middleware;
} {
  let provider = buildProvider(options);
  let mounted = mount(provider);
  options.keys.on('change', () => {
    provider = buildProvider(options);
    mounted = mount(provider);
  });

  const middleware: Koa.Middleware = async function authorizationServer(ctx, next) {
    // RFC 8414 metadata carries the same document as OpenID discovery (SPEC 9.1).
    if (ctx.path === '/.well-known/oauth-authorization-server') {
      ctx.path = '/.well-known/openid-configuration';
      return mounted(ctx, next);
    }

    // oidc-provider would also serve `/token/` as `/token`: that spelling would slip past what
    // Deputy applies to the exact path (rate and body limits), so it is not an endpoint.
    if (ctx.path.length > 1 && ctx.path.endsWith('/') && PROVIDER_PREFIXES.includes(ctx.path.slice(0, -1))) {
      return next();
    }

    const preflight = ctx.method === 'OPTIONS' && ctx.get('Access-Control-Request-Method') !== '';
    if (POST_ONLY_PATHS.has(ctx.path) && ctx.method !== 'POST' && !preflight) {
      ctx.status = 405;
      ctx.set('Allow', 'POST');
      ctx.set('Cache-Control', 'no-store');
      ctx.body = { error: 'invalid_request', error_description: `${ctx.method} is not supported here, use POST` };
      return undefined;
    }

    if (PROVIDER_PREFIXES.some((prefix) => ctx.path === prefix || ctx.path.startsWith(`${prefix}/`))) {
      await mounted(ctx, next);
      conformErrorDescription(ctx);
      if (POST_ONLY_PATHS.has(ctx.path)) conformMissingClientAuth(ctx, options.config.issuer);
      return undefined;
    }

    return next();
  };

  return { provider: () => provider, middleware };
}

/**
 * RFC 6749 section 5.2 allows an `error_description` only printable ASCII without `"` and `\`;
 * oidc-provider copies request values into some (an Origin header, a scope), so anything else
 * is replaced.
 */
function conformErrorDescription(ctx: Koa.Context): void {
  const body = ctx.body as { error_description?: unknown } | null | undefined;
  if (typeof body === 'object' && body !== null && typeof body.error_description === 'string') {
    body.error_description = body.error_description.replace(/[^\x20\x21\x23-\x5b\x5d-\x7e]/g, '?');
  }
}

/** What the person is told on the code page, by the kind of error oidc-provider re-renders. */
const DEVICE_CODE_MESSAGES: Record<string, string> = {
  NoCodeError: 'Enter the code the agent shows you.',
  NotFoundError: 'Deputy knows no such code. Check it against the code the agent shows.',
  ExpiredError: 'That code has expired. Ask the agent for a new one.',
  AlreadyUsedError:
    'That code has been used already. If you did not finish connecting, start again from the ' +
    'agent: it will show a new code.',
  AbortedError: 'You cancelled. The agent has been told it may not connect.',
};

function deviceCodeMessage(error: unknown, out: { error: string; error_description?: string }): string {
  const name = error instanceof Error ? error.name : '';
  // Other errors (an expired or unknown interaction) carry a description meant for people.
  return DEVICE_CODE_MESSAGES[name] ?? out.error_description ?? 'Something went wrong. Start again from the agent.';
}

/** oidc-provider's descriptions of a request without usable client authentication, and Deputy's. */
const CLIENT_AUTH_MISSING = new Map([
  ['no client authentication mechanism provided', 'client authentication is required'],
  ['invalid authorization header value format', 'the Authorization header is not Basic client credentials'],
]);

/**
 * A request that names no client, or whose Authorization header is not Basic credentials, is
 * per RFC 6749 section 5.2 `invalid_client` ("no client authentication included"; 401 when the
 * Authorization header was tried); oidc-provider answers `invalid_request`. It is answered 401
 * with the Basic challenge (RFC 7235 section 3.1), naming the scheme to use.
 */
function conformMissingClientAuth(ctx: Koa.Context, issuer: string): void {
  const body = ctx.body as { error?: unknown; error_description?: unknown } | null | undefined;
  if (ctx.status !== 400 || typeof body !== 'object' || body === null || body.error !== 'invalid_request') return;
  const description = CLIENT_AUTH_MISSING.get(String(body.error_description));
  if (description === undefined) return;
  ctx.status = 401;
  ctx.set('WWW-Authenticate', `Basic realm="${issuer}"`);
  ctx.body = { error: 'invalid_client', error_description: description };
}

function buildProvider(options: AuthorizationServerOptions): Provider {
  const { config, store, delegations, keys, views } = options;
  const active = keys.active();

  const configuration: Configuration = {
    adapter: createAdapter(store.database, (id) => store.findAgent(id), (agent) => clientMetadataOf(agent, active.alg)),
    jwks: { keys: [active.jwk as never] },
    routes: ROUTES,
    scopes: SCOPES,
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    findAccount: async (_ctx, id) => {
      const user = await store.findUser(id);
      if (user === undefined) return undefined;
      return {
        accountId: user.id,
        claims: () => ({
          sub: user.id,
          ...(user.email ? { email: user.email, email_verified: user.emailVerified } : {}),
          ...(user.name ? { name: user.name } : {}),
        }),
      };
    },
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'none'],
    enabledJWA: {
      clientAuthSigningAlgValues: CLIENT_ASSERTION_ALGS as never,
      idTokenSigningAlgValues: [active.alg],
      userinfoSigningAlgValues: [active.alg],
    },
    responseTypes: ['code'],
    subjectTypes: ['public'],
    pkce: { required: () => true },
    extraParams: ['audience'],
    features: {
      devInteractions: { enabled: false },
      deviceFlow: {
        enabled: true,
        charset: 'base-20',
        mask: '****-****',
        userCodeInputSource: async (ctx, form, out, error) => {
          const state = ctx.state as WebState;
          const session = ctx.oidc.session;
          if (out !== undefined && session !== undefined && typeof session.exp !== 'number') {
            // After an error oidc-provider shows this form again with a new xsrf token kept in
            // the session, once its session middleware has finished: a session that was never
            // stored (a browser without one) would then fail to save, a 500. Store it here, with
            // its cookie, as that middleware does on GET /device, so the form shown works.
            ctx.oidc.cookies.set(ctx.oidc.provider.cookieName('session'), session.jti, {
              httpOnly: true,
              sameSite: 'lax',
            });
            await session.save(SESSION_TTL_SECONDS);
          }
          ctx.type = 'html';
          ctx.body = views.render('device-code', {
            // Deputy's own labelled form, without oidc-provider's inline handler; its xsrf
            // token and action are taken from the form oidc-provider built.
            action: /action="([^"]+)"/.exec(form)?.[1] ?? ROUTES.code_verification,
            xsrf: /name="xsrf" value="([^"]+)"/.exec(form)?.[1] ?? '',
            error: out === undefined ? null : deviceCodeMessage(error, out),
            user: state.user,
            csrf: state.csrf,
          });
        },
        userCodeConfirmSource: (ctx, form, client, _deviceInfo, userCode) => {
          const state = ctx.state as WebState;
          ctx.type = 'html';
          ctx.body = views.render('device-confirm', {
            form,
            agentName: client.clientName ?? client.clientId,
            logoUri: client.logoUri ?? null,
            userCode,
            user: state.user,
            csrf: state.csrf,
          });
        },
        successSource: (ctx) => {
          const state = ctx.state as WebState;
          ctx.type = 'html';
          ctx.body = views.render('device-done', { user: state.user, csrf: state.csrf });
        },
      },
      pushedAuthorizationRequests: { enabled: false },
      revocation: {
        enabled: true,
        // RFC 7009 section 2.1: a client revokes only tokens issued to it. oidc-provider then
        // answers 200 without revoking for a public client, and invalid_request otherwise.
        allowedPolicy: (_ctx, client, token) => {
          if (token.clientId === client.clientId) return true;
          if (client.clientAuthMethod === 'none') return false;
          throw new errors.InvalidRequest('the token was not issued to this client');
        },
      },
      userinfo: { enabled: true },
      rpInitiatedLogout: { enabled: false },
    },
    // Agents call the OAuth endpoints from their own servers and command lines, never from a
    // web page's script: no origin is allowed cross-origin reads.
    clientBasedCORS: () => false,
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    // Every connection goes through Deputy's consent page, which checks that the person signed
    // in to Deputy now is the one the provider's session names (oauth/interactions.ts): only
    // the grant that page just approved counts, never one remembered in the session.
    loadExistingGrant: async (ctx) => {
      const grantId = ctx.oidc.result?.consent?.grantId;
      return typeof grantId === 'string' ? ctx.oidc.provider.Grant.find(grantId) : undefined;
    },
    cookies: {
      keys: options.cookieKeys,
      names: { session: 'deputy_op_session', interaction: 'deputy_interaction', resume: 'deputy_resume' },
    },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      DeviceCode: 600,
      Grant: 365 * 86400,
      IdToken: ID_TOKEN_TTL_SECONDS,
      Interaction: 3600,
      RefreshToken: 30 * 86400,
      Session: SESSION_TTL_SECONDS,
    },
    rotateRefreshToken: true,
    issueRefreshToken: (_ctx, client, code) =>
      client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
    discovery: {
      identity_chaining_requested_token_types_supported: [ID_JAG_TOKEN_TYPE],
      service_documentation: `${config.issuer}/`,
    },
    assertJwtClientAuthClaimsAndHeader: async (_ctx, claims, header, client) => {
      assertClientAssertion(config.issuer, claims, header, client.clientId);
      const expiresAt = Math.ceil(claims.exp as number);
      if (!(await delegations.useClientAssertionJti(client.clientId, claims.jti as string, expiresAt))) {
        throw new errors.InvalidClientAuth('client assertion tokens must only be used once');
      }
    },
    renderError: (ctx, out) => {
      if (!PAGE_ROUTES.has(ctx.oidc.route)) {
        ctx.type = 'json';
        ctx.body = out;
        return;
      }
      const state = ctx.state as WebState;
      ctx.type = 'html';
      ctx.body = views.render('error', {
        title: 'The request could not be completed',
        message: out.error_description ?? out.error,
        user: state.user ?? null,
        csrf: state.csrf ?? null,
      });
    },
  };

  const provider = new Provider(config.issuer, configuration);
  // Deputy's first middleware sets Host and X-Forwarded-Proto to the issuer's origin
  // (app.ts canonicalOrigin), so the provider may read them.
  provider.proxy = true;

  // Agent secrets are stored as SHA-256 hashes (agents/registry.ts); compare in constant time.
  provider.Client.prototype.compareClientSecret = async function compareClientSecret(actual: string) {
    const expected = Buffer.from(String(this.clientSecret), 'hex');
    const presented = Buffer.from(sha256(actual), 'hex');
    return expected.length === presented.length && timingSafeEqual(expected, presented);
  };

  // Refused token requests (failed client authentication, bad grants, refused mints) leave a
  // line: code and client only, never a token or secret.
  provider.on('grant.error', (ctx, error) => {
    if (ctx.oidc.params?.grant_type === TOKEN_EXCHANGE_GRANT) {
      options.metrics?.mint('refused', String(error.error), requestSeconds());
    }
    options.log.info(
      {
        event: 'token_refused',
        grant_type: ctx.oidc.params?.grant_type,
        client: ctx.oidc.client?.clientId,
        error: error.error,
        status: error.status,
      },
      'token request refused',
    );
  });
  // oidc-provider answers an unexpected error with 500 server_error and says nothing more:
  // the cause (a database that does not answer, say) goes to the log.
  provider.on('server_error', (_ctx, error) => {
    options.log.error({ err: error, event: 'server_error' }, 'the authorization server failed a request');
  });
  options.extend(provider);
  return provider;
}

/**
 * Deputy's rules for client assertions beyond oidc-provider's own checks (SPEC 4.1): the sole
 * audience is the issuer identifier as a string (draft-ietf-oauth-rfc7523bis section 4), `sub`
 * is the client, the lifetime is bounded, and an explicit `typ` other than a client
 * authentication type is refused so other JWTs cannot pass as assertions.
 */
function assertClientAssertion(
  issuer: string,
  claims: Record<string, unknown>,
  header: Record<string, unknown>,
  clientId: string,
): void {
  if (claims.aud !== issuer) {
    throw new errors.InvalidClientAuth('client assertion audience (aud) must be the issuer identifier');
  }

  if (claims.sub !== clientId) {
    throw new errors.InvalidClientAuth('client assertion subject (sub) must be the client_id');
  }

  const now = Math.floor(Date.now() / 1000);
  if (typeof claims.exp !== 'number' || claims.exp > now + MAX_CLIENT_ASSERTION_LIFETIME) {
    throw new errors.InvalidClientAuth(
      `client assertion must expire within ${MAX_CLIENT_ASSERTION_LIFETIME} seconds`,
    );
  }

  // Kept until it expires, keyed by (client, jti): bounded, as any key a client chooses.
  if (typeof claims.jti !== 'string' || claims.jti === '' || claims.jti.length > MAX_JTI_LENGTH) {
    throw new errors.InvalidClientAuth(`client assertion jti must be a string of 1 to ${MAX_JTI_LENGTH} characters`);
  }

  if (header.typ !== undefined && !CLIENT_ASSERTION_TYPES.has(String(header.typ))) {
    throw new errors.InvalidClientAuth('client assertion typ must be client-authentication+jwt when present');
  }
}
