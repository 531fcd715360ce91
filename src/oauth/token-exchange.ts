/**
 * The mint: RFC 8693 token exchange at the token endpoint, requesting an ID-JAG (DESIGN 2.4,
 * SPEC 1.1 to 1.5). oidc-provider has authenticated the agent by the time the handler runs;
 * each step below is one check of the design, in its order.
 *
 * Error codes where the standards leave a choice (documented in the README): a bad or missing
 * parameter is `invalid_request`; a subject token that is not Deputy's, not this agent's,
 * expired or revoked is `invalid_grant` (the ID-JAG draft's own example); an audience or
 * resource Deputy will not serve, including more than one audience, is `invalid_target`.
 *
 * Known limit: the mint runs inside oidc-provider's token endpoint, whose per-request work
 * (body, client lookup and authentication, token lookups) is most of a mint's cost; one
 * process reaches about a quarter of the benchmark's signing ceiling, short of the 50% target
 * (README, Benchmarks). Several processes on PostgreSQL are the way past one event loop, where
 * they have cores of their own; on PostgreSQL each mint also costs seven queries' round trips,
 * which fewer, combined reads (user, delegation and service client id in one) would cut.
 */
import { randomUUID } from 'node:crypto';
import { createLocalJWKSet, errors as joseErrors, jwtVerify } from 'jose';
import type { Logger } from 'pino';
import { errors, type KoaContextWithOIDC, type Provider } from 'oidc-provider';
import { idJagClaims, signIdJag } from '../assertions/id-jag.ts';
import type { Config } from '../config.ts';
import { MAX_OPEN_CONSENT_REQUESTS, type Delegation, type DelegationStore } from '../db/delegations.ts';
import { epoch, type Store, type User } from '../db/store.ts';
import type { KeyStore } from '../keys/keystore.ts';
import { ID_JAG_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT } from '../keys/routes.ts';
import { requestSeconds } from '../ops/context.ts';
import type { Metrics } from '../ops/metrics.ts';
import type { ServiceDirectory } from '../services/directory.ts';
import { MAX_URL_LENGTH } from '../services/discovery.ts';

export const ID_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:id_token';
export const REFRESH_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:refresh_token';
export const CONSENT_REQUEST_TTL_SECONDS = 600;
/** Each resource may cost a metadata fetch (grantedResources); an ID-JAG needs few. */
const MAX_RESOURCES = 10;
/** Longer than any real list of scopes; a consent request keeps what the agent asked for. */
const MAX_SCOPE_LENGTH = 1024;

const PARAMETERS = [
  'audience',
  'resource',
  'scope',
  'requested_token_type',
  'subject_token',
  'subject_token_type',
  'actor_token',
  'actor_token_type',
];

interface Options {
  config: Config;
  store: Store;
  delegations: DelegationStore;
  directory: ServiceDirectory;
  keys: KeyStore;
  log: Logger;
  metrics?: Metrics;
}

interface Params {
  audience?: string | string[];
  resource?: string | string[];
  scope?: string;
  requested_token_type?: string;
  subject_token?: string;
  subject_token_type?: string;
  actor_token?: string;
}

export function registerTokenExchange(provider: Provider, options: Options): void {
  const { config, store, delegations, directory, keys, log, metrics } = options;

  async function tokenExchange(ctx: KoaContextWithOIDC): Promise<void> {
    const params = ctx.oidc.params as Params;
    const client = ctx.oidc.client;
    if (client === undefined) throw new errors.InvalidClient('client authentication is required');

    // Public clients never get ID-JAGs (SPEC 1.1, 9.1); their grant_types already exclude this.
    if (client.clientAuthMethod === 'none') {
      throw new errors.UnauthorizedClient('public clients cannot use token exchange');
    }

    const request = checkParameters(params, config.allowLoopbackServices);
    const user = await subjectUser(provider, params, client.clientId);

    const agent = await store.findAgent(client.clientId);
    if (agent === undefined) throw new errors.InvalidClient('client not found');
    if (agent.allowedAudiences !== null && !agent.allowedAudiences.includes(request.audience)) {
      throw new errors.InvalidTarget('this agent may not obtain assertions for that audience');
    }

    const delegation = await delegations.activeDelegation(user.id, agent.clientId, request.audience);
    if (delegation === undefined) return consentRequired(ctx, user, agent.clientId, request);

    const resources = await grantedResources(request.resources, delegation, directory);
    const scope = grantedScope(request.scope, delegation);
    const issuedAt = epoch();
    const active = keys.active();
    const record = {
      jti: randomUUID(),
      userId: user.id,
      agentClientId: agent.clientId,
      audience: request.audience,
      resources,
      scope,
      kid: active.kid,
      issuedAt,
      expiresAt: issuedAt + config.idJagTtl,
    };

    // Step 6: a `once` delegation is consumed here, atomically; a racing mint that lost finds
    // it gone and is answered as if it never existed.
    if (!(await delegations.useDelegation(delegation, record))) {
      return consentRequired(ctx, user, agent.clientId, request);
    }

    const claims = idJagClaims({
      issuer: config.issuer,
      user,
      agent: { clientId: agent.clientId, name: agent.name },
      audience: request.audience,
      serviceClientId: await delegations.serviceClientId(agent.clientId, request.audience),
      resources,
      scope,
      jti: record.jti,
      issuedAt,
      expiresAt: record.expiresAt,
    });
    const assertion = await signIdJag(claims, active);

    log.info(
      {
        event: 'mint',
        result: 'issued',
        client: agent.clientId,
        user: user.id,
        audience: request.audience,
        jti: record.jti,
        scope,
      },
      'ID-JAG issued',
    );

    ctx.set('Cache-Control', 'no-store');
    ctx.set('Pragma', 'no-cache');
    ctx.body = {
      access_token: assertion,
      issued_token_type: ID_JAG_TOKEN_TYPE,
      token_type: 'N_A',
      expires_in: config.idJagTtl,
      ...(scope !== '' ? { scope } : {}),
    };
    metrics?.mint('issued', '', requestSeconds());
  }

  /**
   * Step 5, no delegation: 400 `consent_required` with a link the person can open to approve
   * exactly this request (DESIGN 2.3, way 3).
   */
  async function consentRequired(
    ctx: KoaContextWithOIDC,
    user: User,
    agentClientId: string,
    request: ExchangeRequest,
  ): Promise<void> {
    if (await delegations.consentDenied(user.id, agentClientId, request.audience)) {
      throw new errors.AccessDenied('the user denied this agent assertions for this audience');
    }
    const consent = await delegations.createConsentRequest(
      {
        userId: user.id,
        agentClientId,
        audience: request.audience,
        resources: request.resources,
        scope: request.scope.join(' '),
      },
      CONSENT_REQUEST_TTL_SECONDS,
    );
    if (consent === 'too-many') {
      throw new errors.InvalidRequest(
        `this agent already has ${MAX_OPEN_CONSENT_REQUESTS} consent requests waiting for the user; ask again once they are answered or expire`,
      );
    }
    log.info(
      { event: 'mint', result: 'consent_required', client: agentClientId, user: user.id, audience: request.audience },
      'no delegation for this audience',
    );

    ctx.status = 400;
    ctx.set('Cache-Control', 'no-store');
    ctx.set('Pragma', 'no-cache');
    ctx.body = {
      error: 'consent_required',
      error_description: 'the user has not allowed this agent to assert their identity to this audience',
      consent_uri: `${config.issuer}/consent/${consent.id}`,
      expires_in: consent.expiresIn,
    };
    metrics?.mint('consent_required', 'consent_required', requestSeconds());
  }

  /** Step 2: the subject token is Deputy's own, issued to this agent, and still valid. */
  async function subjectUser(
    provider: Provider,
    params: Params,
    clientId: string,
  ): Promise<User> {
    const token = params.subject_token as string;
    let accountId: string;

    if (params.subject_token_type === ID_TOKEN_TYPE) {
      const subject = await idTokenSubject(token, clientId);
      accountId = subject.sub;
      if (!(await delegations.isConnectedSince(accountId, clientId, subject.iat))) {
        throw new errors.InvalidGrant('the user has disconnected this agent');
      }
    } else {
      const refreshToken = await provider.RefreshToken.find(token, { ignoreExpiration: true });
      if (refreshToken === undefined || refreshToken.clientId !== clientId) {
        throw new errors.InvalidGrant('subject_token is not a refresh token issued to this client');
      }
      if (refreshToken.isExpired) throw new errors.InvalidGrant('subject_token has expired');
      if (refreshToken.consumed) throw new errors.InvalidGrant('subject_token has been rotated or revoked');
      const grant = await provider.Grant.find(refreshToken.grantId as string);
      if (grant === undefined || grant.clientId !== clientId) {
        throw new errors.InvalidGrant('subject_token has been revoked');
      }
      accountId = refreshToken.accountId;
    }

    // Step 3: the user's current claims, re-read.
    const user = await store.findUser(accountId);
    if (user === undefined) throw new errors.InvalidGrant('the subject of subject_token no longer exists');
    return user;
  }

  async function idTokenSubject(token: string, clientId: string): Promise<{ sub: string; iat: number }> {
    try {
      const { payload, protectedHeader } = await jwtVerify(token, createLocalJWKSet(keys.jwks()), {
        issuer: config.issuer,
        audience: clientId,
        algorithms: keys.publishedAlgs(),
        requiredClaims: ['sub', 'exp', 'iat'],
      });
      // ID-JAGs and revocation events carry Deputy's signature too; only an ID token will do.
      if (protectedHeader.typ !== undefined && protectedHeader.typ !== 'JWT') {
        throw new errors.InvalidGrant('subject_token is not an ID token');
      }
      if (Array.isArray(payload.aud) && payload.aud.length !== 1) {
        throw new errors.InvalidGrant('subject_token was issued to more than one audience');
      }
      return { sub: payload.sub as string, iat: payload.iat as number };
    } catch (error) {
      if (error instanceof errors.InvalidGrant) throw error;
      if (error instanceof joseErrors.JWTExpired) throw new errors.InvalidGrant('subject_token has expired');
      throw new errors.InvalidGrant('subject_token is not an ID token issued by Deputy to this client');
    }
  }

  provider.registerGrantType(TOKEN_EXCHANGE_GRANT, tokenExchange, PARAMETERS, ['audience', 'resource']);
}

interface ExchangeRequest {
  audience: string;
  resources: string[];
  scope: string[];
}

/** Step 1 and 4: the parameters, their shapes, exactly one audience. */
function checkParameters(params: Params, allowLoopback: boolean): ExchangeRequest {
  if (params.requested_token_type !== ID_JAG_TOKEN_TYPE) {
    throw new errors.InvalidRequest(`requested_token_type must be ${ID_JAG_TOKEN_TYPE}`);
  }

  if (!params.subject_token) throw new errors.InvalidRequest('subject_token is required');
  if (!params.subject_token_type) throw new errors.InvalidRequest('subject_token_type is required');
  if (params.subject_token_type !== ID_TOKEN_TYPE && params.subject_token_type !== REFRESH_TOKEN_TYPE) {
    throw new errors.InvalidRequest(
      `subject_token_type must be ${ID_TOKEN_TYPE} or ${REFRESH_TOKEN_TYPE}`,
    );
  }

  if (params.actor_token !== undefined) {
    throw new errors.InvalidRequest('actor_token is not supported');
  }

  const audiences = list(params.audience);
  if (audiences.length === 0) throw new errors.InvalidRequest('audience is required');
  if (audiences.length > 1) {
    throw new errors.InvalidTarget('an ID-JAG is for exactly one audience; request one per audience');
  }
  const audience = audiences[0] as string;
  if (audience.length > MAX_URL_LENGTH) {
    throw new errors.InvalidTarget(`audience may be at most ${MAX_URL_LENGTH} characters long`);
  }
  if (!isServiceUrl(audience, allowLoopback)) {
    // Refused only for being on loopback: say which setting allows it.
    const hint = !allowLoopback && isServiceUrl(audience, true)
      ? ' (a service on this machine needs DEPUTY_ALLOW_LOOPBACK_SERVICES=true, for development only)'
      : '';
    throw new errors.InvalidTarget(`audience must be the https issuer identifier of the service${hint}`);
  }

  const resources = [...new Set(list(params.resource))];
  if (resources.length > MAX_RESOURCES) {
    throw new errors.InvalidTarget(`at most ${MAX_RESOURCES} resource values per request`);
  }
  for (const resource of resources) {
    if (resource.length > MAX_URL_LENGTH) {
      throw new errors.InvalidTarget(`each resource may be at most ${MAX_URL_LENGTH} characters long`);
    }
    if (!isAbsoluteUriWithoutFragment(resource)) {
      throw new errors.InvalidTarget('each resource must be an absolute URI without a fragment');
    }
  }

  if ((params.scope ?? '').length > MAX_SCOPE_LENGTH) {
    throw new errors.InvalidScope(`scope may be at most ${MAX_SCOPE_LENGTH} characters long`, '');
  }
  const scope = [...new Set((params.scope ?? '').split(' ').filter((s) => s !== ''))];
  return { audience, resources, scope };
}

/**
 * Requested resources must be ones the person approved for this audience; none asks for all.
 * A delegation made for the whole service (no resource named, or only the issuer's own address)
 * covers any resource whose metadata names the audience as its authorization server (DESIGN
 * 2.4 step 4); one made for named resources covers those alone.
 */
async function grantedResources(
  requested: string[],
  delegation: Delegation,
  directory: ServiceDirectory,
): Promise<string[]> {
  if (requested.length === 0) return delegation.resources;
  const unlisted = requested.filter((r) => !delegation.resources.includes(r));
  if (unlisted.length === 0) return requested;

  const wholeService =
    delegation.resources.length === 0 ||
    (delegation.resources.length === 1 && delegation.resources[0] === delegation.audience);
  // Checked together: a slow service delays the answer by one fetch's timeout, not by several.
  const governed = wholeService
    ? await Promise.all(unlisted.map((resource) => directory.governs(delegation.audience, resource)))
    : [];
  const refused = unlisted.filter((_, i) => governed[i] !== true);
  if (refused.length > 0) {
    throw new errors.InvalidTarget(`resource not covered by the delegation: ${refused.join(' ')}`);
  }
  return requested;
}

/** The intersection of what was asked and what was delegated (DESIGN 2.4 step 5). */
function grantedScope(requested: string[], delegation: Delegation): string {
  const delegated = delegation.scope.split(' ').filter((s) => s !== '');
  if (requested.length === 0) return delegated.join(' ');
  const granted = requested.filter((s) => delegated.includes(s));
  if (granted.length === 0) {
    throw new errors.InvalidScope('none of the requested scopes is delegated for this audience', requested.join(' '));
  }
  return granted.join(' ');
}

function list(value: string | string[] | undefined): string[] {
  if (value === undefined) return [];
  return (Array.isArray(value) ? value : [value]).filter((v) => v !== '');
}

function isServiceUrl(value: string, allowLoopback: boolean): boolean {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return false;
  }
  if (url.hash !== '' || url.search !== '' || url.username !== '' || url.password !== '') return false;
  // Written as URLs serialize (RFC 3986 section 6.2.2 normal form: lower-case scheme and host,
  // no default port, no dot segments, a plain IPv4 address): audiences are compared as strings,
  // so another spelling of one service would be another service to the delegations.
  if (url.href !== value && !(url.pathname === '/' && url.href === `${value}/`)) return false;
  if (url.protocol === 'https:') return true;
  return allowLoopback && url.protocol === 'http:' && ['localhost', '127.0.0.1', '[::1]'].includes(url.hostname);
}

function isAbsoluteUriWithoutFragment(value: string): boolean {
  try {
    const url = new URL(value);
    return url.hash === '' && !value.includes('#');
  } catch {
    return false;
  }
}
