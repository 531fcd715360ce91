/**
 * Services that trust Deputy, written the way a third party would write them: node:http and
 * jose only, nothing imported from Deputy, so a test passes only if Deputy's tokens satisfy an
 * independent reading of the specifications.
 *
 * - `startAuthMdService`: a WorkOS auth.md service (SPEC 2.2 to 2.7). It takes ID-JAGs at
 *   `/agent/auth`, hands out bearer credentials for `/api/me`, and receives revocations either as
 *   `secevent+jwt` security event tokens (dialect `events`) or as `logout+jwt` (dialect
 *   `logout`). Only the endpoints its metadata advertises exist.
 * - `startResourceAuthorizationServer`: an OAuth authorization server that redeems ID-JAGs with
 *   the jwt-bearer grant from authenticated clients (SPEC 1.8, 1.9, 4.2).
 *
 * Both listen on 127.0.0.1, port 0. Their issuer is their URL, without a trailing slash, and they
 * fetch each issuer's keys from `<iss>/.well-known/jwks.json` with jose's remote key set (one per
 * issuer, jose's default caching: 10 minutes, 30 s cooldown before refetching on an unknown kid).
 * They are stricter than the guides in a few places a Deputy bug could slip through: `typ` is
 * compared as an exact string, an `aud` array must hold exactly one value, and `iat` may not be
 * more than a minute ahead.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  createRemoteJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  errors,
  jwtVerify,
  type JWTPayload,
  type ProtectedHeaderParameters,
} from 'jose';

export const ID_JAG_TYP = 'oauth-id-jag+jwt';
export const ID_JAG_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:id-jag';
export const JWT_BEARER_GRANT = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
export const ID_JAG_GRANT_PROFILE = 'urn:ietf:params:oauth:grant-profile:id-jag';
/** The revoked event of `secevent+jwt` deliveries to `agent_auth.events_endpoint`. */
export const REVOKED_EVENT = 'https://schemas.workos.com/events/agent/identity/assertion/revoked';
/** The revoked event of `logout+jwt` deliveries to `agent_auth.revocation_uri`. */
export const LOGOUT_REVOKED_EVENT = 'https://schemas.workos.com/events/agent/auth/identity/assertion/revoked';

const ALGORITHMS = ['ES256', 'RS256', 'EdDSA'];
const CLOCK_TOLERANCE_SECONDS = 5;
const MAX_IAT_AHEAD_SECONDS = 60;
const MAX_BODY_BYTES = 64 * 1024;
const ACCESS_TOKEN_TTL_SECONDS = 3600;
const DEFAULT_SCOPES = ['read', 'write'];

export interface VerifiedJwt {
  claims: JWTPayload;
  header: ProtectedHeaderParameters;
}

export interface ReceivedEvent extends VerifiedJwt {
  contentType: string;
}

export interface ServiceCredential {
  iss: string;
  sub: string;
  aud: string;
  email: string | undefined;
  scopes: string[];
}

export interface AuthMdServiceOptions {
  trustedIssuers: string[];
  /** `scopes_supported`, and what a credential grants. Default `['read', 'write']`. */
  scopes?: string[];
  /** `resource_name`. Default `'Test Service'`. */
  name?: string;
  /** How revocations arrive. Default `'events'`. */
  dialect?: 'events' | 'logout';
  /** Port on 127.0.0.1. Default 0 (any free port). */
  port?: number;
}

export interface AuthMdService {
  url: string;
  issuer: string;
  /** The API's resource identifier, `<url>/api`. */
  resource: string;
  /** Every ID-JAG that was verified and exchanged for a credential, in order. */
  accepted: VerifiedJwt[];
  /** Live credentials by value. */
  credentials: Map<string, ServiceCredential>;
  /** Every revocation that was verified and applied, in order. */
  events: ReceivedEvent[];
  /** Every POST to the events or revocation endpoint, including refused and failed ones. */
  readonly deliveries: number;
  /** Drops every credential for (iss, sub, aud); returns how many. */
  revokeAll(iss: string, sub: string, aud: string): number;
  /** The next `n` event deliveries answer `status` without being looked at. */
  failNext(n: number, status?: number): void;
  close(): Promise<void>;
}

export interface ResourceAuthorizationServerOptions {
  trustedIssuers: string[];
  /** client_id → client_secret. */
  clients: Record<string, string>;
  /** Scopes this server grants. Default `['read', 'write']`. */
  scopes?: string[];
}

export interface ResourceAuthorizationServer {
  url: string;
  issuer: string;
  /** The protected resource, `<url>/mcp`. */
  resource: string;
  /** Every ID-JAG redeemed for an access token, in order. */
  accepted: VerifiedJwt[];
  close(): Promise<void>;
}

/** A refusal: `code` is the auth.md error code (Consumer Guide), `message` says why. */
class Rejection extends Error {
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.code = code;
  }
}

export async function startAuthMdService(options: AuthMdServiceOptions): Promise<AuthMdService> {
  const { server, url } = await listen(options.port);
  const issuer = url;
  const resource = `${url}/api`;
  const resourceMetadataUrl = `${url}/.well-known/oauth-protected-resource/api`;
  const scopes = options.scopes ?? DEFAULT_SCOPES;
  const dialect = options.dialect ?? 'events';
  const verifier = jwtVerifier(options.trustedIssuers);
  const seenAssertions = replayCache();
  const seenEvents = replayCache();
  const accepted: VerifiedJwt[] = [];
  const credentials = new Map<string, ServiceCredential>();
  const events: ReceivedEvent[] = [];
  const outage = { remaining: 0, status: 503, deliveries: 0 };

  function protectedResource(id: string): Reply {
    return json(200, {
      resource: id,
      resource_name: options.name ?? 'Test Service',
      resource_logo_uri: 'https://service.example/logo.png',
      authorization_servers: [issuer],
      scopes_supported: scopes,
      bearer_methods_supported: ['header'],
    });
  }

  const identityAssertion = {
    assertion_types_supported: [ID_JAG_TOKEN_TYPE],
    credential_types_supported: ['access_token'],
  };
  const agentAuth =
    dialect === 'events'
      ? {
          registration_endpoint: `${url}/agent/auth`,
          events_endpoint: `${url}/agent/events`,
          events_supported: [REVOKED_EVENT],
          identity_types_supported: ['identity_assertion'],
          identity_assertion: identityAssertion,
        }
      : {
          register_uri: `${url}/agent/auth`,
          revocation_uri: `${url}/agent/auth/revoke`,
          events_supported: [LOGOUT_REVOKED_EVENT],
          identity_types_supported: ['identity_assertion'],
          identity_assertion: identityAssertion,
        };

  /** `POST /agent/auth` (SPEC 2.6), checked in the Consumer Guide's order (SPEC 2.3). */
  async function register(request: IncomingMessage, body: string): Promise<Reply> {
    try {
      const assertion = registrationAssertion(request, body);
      const verified = await verifier.verify(assertion, { typ: ID_JAG_TYP, audience: issuer, idJag: true });
      const { claims } = verified;
      const iss = claims.iss as string;
      const sub = claims.sub as string;
      if (!seenAssertions.use(iss, claims.jti as string, claims.exp as number)) {
        throw new Rejection('replay_detected', 'this jti was already used');
      }
      await resolveClientId(claims.client_id, iss);
      if (claims.email_verified !== true && claims.phone_number_verified !== true) {
        throw new Rejection('missing_verified_email', 'neither email_verified nor phone_number_verified is true');
      }

      accepted.push(verified);
      // An assertion without `scope` proves who the person is and grants nothing more here.
      const granted = claims.scope === undefined ? [] : grantedScopes(claims.scope, scopes);
      const credential = randomBytes(32).toString('base64url');
      const email = typeof claims.email === 'string' ? claims.email : undefined;
      credentials.set(credential, { iss, sub, aud: issuer, email, scopes: granted });
      return json(200, {
        registration_id: `reg_${createHash('sha256').update(`${iss}|${sub}|${issuer}`).digest('hex').slice(0, 24)}`,
        registration_type: 'agent-provider',
        credential_type: 'access_token',
        credential,
        credential_expires: null,
        scopes: granted,
      });
    } catch (error) {
      return refusal(error);
    }
  }

  function me(request: IncomingMessage): Reply {
    const token = bearerToken(request);
    const credential = token === undefined ? undefined : credentials.get(token);
    if (credential === undefined) {
      const error = token === undefined ? '' : 'error="invalid_token", ';
      return json(401, { error: 'invalid_token', message: 'a valid credential is required' }, {
        'www-authenticate': `Bearer ${error}resource_metadata="${resourceMetadataUrl}"`,
      });
    }
    return json(200, { sub: credential.sub, email: credential.email ?? null, iss: credential.iss });
  }

  function revokeAll(iss: string, sub: string, aud: string): number {
    let revoked = 0;
    for (const [value, credential] of credentials) {
      if (credential.iss === iss && credential.sub === sub && credential.aud === aud) {
        credentials.delete(value);
        revoked += 1;
      }
    }
    return revoked;
  }

  /** A revocation pushed by the provider: RFC 8935 `secevent+jwt` or WorkOS `logout+jwt`. */
  async function receiveEvent(request: IncomingMessage, body: string): Promise<Reply> {
    outage.deliveries += 1;
    if (outage.remaining > 0) {
      outage.remaining -= 1;
      return json(outage.status, { error: 'temporarily_unavailable', message: 'failing on purpose' });
    }

    const typ = dialect === 'events' ? 'secevent+jwt' : 'logout+jwt';
    const contentType = `application/${typ}`;
    const event = dialect === 'events' ? REVOKED_EVENT : LOGOUT_REVOKED_EVENT;
    try {
      if (mediaType(request) !== contentType) {
        throw new Rejection('invalid_request', `Content-Type must be ${contentType}`);
      }
      const verified = await verifier.verify(body.trim(), { typ, audience: issuer, idJag: false });
      const { claims } = verified;
      const listed = claims.events;
      if (typeof listed !== 'object' || listed === null || Array.isArray(listed) || !Object.hasOwn(listed, event)) {
        throw new Rejection('invalid_request', `events must contain ${event}`);
      }
      if (!seenEvents.use(claims.iss as string, claims.jti as string, claims.exp as number)) {
        throw new Rejection('replay_detected', 'this jti was already used');
      }

      events.push({ ...verified, contentType });
      const revoked = revokeAll(claims.iss as string, claims.sub as string, issuer);
      return dialect === 'events' ? { status: 202 } : json(200, { revoked });
    } catch (error) {
      return refusal(error);
    }
  }

  const routes: Routes = {
    'GET /.well-known/oauth-protected-resource': () => protectedResource(url),
    'GET /.well-known/oauth-protected-resource/api': () => protectedResource(resource),
    'GET /.well-known/oauth-authorization-server': () => json(200, { issuer, agent_auth: agentAuth }),
    'POST /agent/auth': register,
    'GET /api/me': me,
    ...(dialect === 'events' ? { 'POST /agent/events': receiveEvent } : { 'POST /agent/auth/revoke': receiveEvent }),
  };
  serve(server, routes);

  return {
    url,
    issuer,
    resource,
    accepted,
    credentials,
    events,
    get deliveries() {
      return outage.deliveries;
    },
    revokeAll,
    failNext(n: number, status = 503) {
      outage.remaining = n;
      outage.status = status;
    },
    close: () => closeServer(server),
  };
}

export async function startResourceAuthorizationServer(
  options: ResourceAuthorizationServerOptions,
): Promise<ResourceAuthorizationServer> {
  const { server, url } = await listen();
  const issuer = url;
  const resource = `${url}/mcp`;
  const scopes = options.scopes ?? DEFAULT_SCOPES;
  const verifier = jwtVerifier(options.trustedIssuers);
  const seen = replayCache();
  const accepted: VerifiedJwt[] = [];
  const accessTokens = new Map<string, { iss: string; sub: string; clientId: string; scope: string }>();

  /** `POST /token` with the jwt-bearer grant (SPEC 1.8, 1.9); RFC 6749 §5.2 errors. */
  async function token(request: IncomingMessage, body: string): Promise<Reply> {
    if (mediaType(request) !== 'application/x-www-form-urlencoded') {
      return oauthError(400, 'invalid_request', 'the body must be application/x-www-form-urlencoded');
    }
    const form = new URLSearchParams(body);
    const repeated = [...new Set(form.keys())].find((name) => form.getAll(name).length > 1);
    if (repeated !== undefined) return oauthError(400, 'invalid_request', `${repeated} is repeated`);

    const client = authenticateClient(request, form, options.clients);
    if ('error' in client) return client.error;

    const grantType = form.get('grant_type');
    const assertion = form.get('assertion');
    if (grantType === null) return oauthError(400, 'invalid_request', 'grant_type is missing');
    if (grantType !== JWT_BEARER_GRANT) return oauthError(400, 'unsupported_grant_type', grantType);
    if (assertion === null || assertion === '') return oauthError(400, 'invalid_request', 'assertion is missing');

    let verified: VerifiedJwt;
    try {
      verified = await verifier.verify(assertion, { typ: ID_JAG_TYP, audience: issuer, idJag: true });
    } catch (error) {
      if (error instanceof Rejection) return oauthError(400, 'invalid_grant', `${error.code}: ${error.message}`);
      throw error;
    }
    const { claims } = verified;
    if (claims.client_id !== client.clientId) {
      return oauthError(400, 'invalid_grant', 'client_id does not name the authenticated client');
    }
    const resources = claims.resource === undefined ? [] : [claims.resource].flat();
    if (resources.some((value) => value !== resource)) {
      return oauthError(400, 'invalid_grant', `resource must be ${resource}`);
    }
    const granted = grantedScopes(claims.scope, scopes);
    if (granted.length === 0) return oauthError(400, 'invalid_scope', 'none of the asserted scopes is offered here');
    if (!seen.use(claims.iss as string, claims.jti as string, claims.exp as number)) {
      return oauthError(400, 'invalid_grant', 'this jti was already used');
    }

    accepted.push(verified);
    const accessToken = randomBytes(32).toString('base64url');
    const scope = granted.join(' ');
    const iss = claims.iss as string;
    accessTokens.set(accessToken, { iss, sub: claims.sub as string, clientId: client.clientId, scope });
    return json(
      200,
      { access_token: accessToken, token_type: 'Bearer', expires_in: ACCESS_TOKEN_TTL_SECONDS, scope },
      { 'cache-control': 'no-store', pragma: 'no-cache' },
    );
  }

  function mcp(request: IncomingMessage): Reply {
    const value = bearerToken(request);
    const grant = value === undefined ? undefined : accessTokens.get(value);
    if (grant === undefined) {
      const error = value === undefined ? '' : 'error="invalid_token", ';
      return json(401, { error: 'invalid_token' }, {
        'www-authenticate': `Bearer ${error}resource_metadata="${url}/.well-known/oauth-protected-resource/mcp"`,
      });
    }
    return json(200, { sub: grant.sub, iss: grant.iss, client_id: grant.clientId, scope: grant.scope });
  }

  serve(server, {
    'GET /.well-known/oauth-authorization-server': () =>
      json(200, {
        issuer,
        token_endpoint: `${url}/token`,
        grant_types_supported: [JWT_BEARER_GRANT],
        token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
        authorization_grant_profiles_supported: [ID_JAG_GRANT_PROFILE],
        scopes_supported: scopes,
      }),
    'GET /.well-known/oauth-protected-resource/mcp': () =>
      json(200, {
        resource,
        resource_name: 'Test MCP Server',
        authorization_servers: [issuer],
        scopes_supported: scopes,
        bearer_methods_supported: ['header'],
      }),
    'POST /token': token,
    'GET /mcp': mcp,
  });

  return { url, issuer, resource, accepted, close: () => closeServer(server) };
}

// ---------------------------------------------------------------------------------------------
// Verification shared by both services.

interface VerifyRules {
  typ: string;
  audience: string;
  /** ID-JAG rules: `sub`, a single `aud`, `iat` not ahead. Events need `events` instead. */
  idJag: boolean;
}

/** Verifies JWTs from trusted issuers against `<iss>/.well-known/jwks.json` (SPEC 2.4). */
function jwtVerifier(trustedIssuers: string[]) {
  const keySets = new Map<string, ReturnType<typeof createRemoteJWKSet>>();

  function keySet(iss: string) {
    let set = keySets.get(iss);
    if (set === undefined) {
      set = createRemoteJWKSet(new URL(`${iss}/.well-known/jwks.json`));
      keySets.set(iss, set);
    }
    return set;
  }

  async function verify(token: string, rules: VerifyRules): Promise<VerifiedJwt> {
    let header: ProtectedHeaderParameters;
    let unverified: JWTPayload;
    try {
      header = decodeProtectedHeader(token);
      unverified = decodeJwt(token);
    } catch {
      throw new Rejection('invalid_request', 'the token is not a signed JWT');
    }
    if (header.typ !== rules.typ) throw new Rejection('invalid_request', `typ must be ${rules.typ}`);
    const iss = unverified.iss;
    if (typeof iss !== 'string' || !trustedIssuers.includes(iss)) {
      throw new Rejection('invalid_issuer', `issuer ${String(iss)} is not trusted`);
    }

    let claims: JWTPayload;
    try {
      ({ payload: claims } = await jwtVerify(token, keySet(iss), {
        algorithms: ALGORITHMS,
        typ: rules.typ,
        issuer: iss,
        audience: rules.audience,
        requiredClaims: rules.idJag ? ['jti', 'iat', 'exp', 'sub'] : ['jti', 'iat', 'exp', 'sub', 'events'],
        clockTolerance: CLOCK_TOLERANCE_SECONDS,
      }));
    } catch (error) {
      throw rejectionFrom(error);
    }
    for (const name of ['jti', 'sub']) {
      const value = claims[name];
      if (typeof value !== 'string' || value === '') throw new Rejection('invalid_request', `${name} must be a string`);
    }
    if (rules.idJag) {
      // ID-JAG §4.4.1: an aud array must have exactly one member, against audience injection.
      if (Array.isArray(claims.aud) && claims.aud.length !== 1) {
        throw new Rejection('invalid_audience', 'aud must name exactly one audience');
      }
      if ((claims.iat as number) > Date.now() / 1000 + MAX_IAT_AHEAD_SECONDS) {
        throw new Rejection('invalid_request', 'iat is in the future');
      }
    }
    return { claims, header };
  }

  return { verify };
}

function rejectionFrom(error: unknown): Rejection {
  if (error instanceof errors.JWTExpired) return new Rejection('expired', error.message);
  if (error instanceof errors.JWTClaimValidationFailed) {
    if (error.claim === 'aud') return new Rejection('invalid_audience', error.message);
    if (error.claim === 'iss') return new Rejection('invalid_issuer', error.message);
    return new Rejection('invalid_request', error.message);
  }
  if (error instanceof errors.JWTInvalid) return new Rejection('invalid_request', error.message);
  // Bad signature, unknown kid, disallowed alg, or keys that could not be fetched.
  const message = error instanceof Error ? error.message : String(error);
  return new Rejection('invalid_signature', message);
}

/** One use per (iss, jti), remembered until the token's exp. */
function replayCache() {
  const seen = new Map<string, number>();
  return {
    use(iss: string, jti: string, exp: number): boolean {
      const now = Date.now() / 1000;
      for (const [key, until] of seen) if (until + CLOCK_TOLERANCE_SECONDS < now) seen.delete(key);
      const key = JSON.stringify([iss, jti]);
      if (seen.has(key)) return false;
      seen.set(key, exp);
      return true;
    },
  };
}

/** The `assertion` of an auth.md registration body, or a refusal (SPEC 2.6). */
function registrationAssertion(request: IncomingMessage, body: string): string {
  if (mediaType(request) !== 'application/json') throw new Rejection('invalid_request', 'the body must be JSON');
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    throw new Rejection('invalid_request', 'the body is not valid JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new Rejection('invalid_request', 'the body must be an object');
  }
  const fields = parsed as Record<string, unknown>;
  if (fields.type !== 'identity_assertion') throw new Rejection('invalid_request', 'type must be identity_assertion');
  if (fields.assertion_type !== ID_JAG_TOKEN_TYPE) {
    throw new Rejection('invalid_request', `assertion_type must be ${ID_JAG_TOKEN_TYPE}`);
  }
  if (typeof fields.assertion !== 'string' || fields.assertion === '') {
    throw new Rejection('invalid_request', 'assertion is missing');
  }
  const credentialType = fields.requested_credential_type;
  if (credentialType !== undefined && credentialType !== 'access_token') {
    throw new Rejection('unsupported_credential_type', 'only access_token is offered');
  }
  return fields.assertion;
}

/**
 * `client_id` must name the provider: its issuer, or a client ID metadata document whose
 * `jwks_uri` is the key set the signature was checked against (SPEC 2.5). As a test fixture it
 * fetches documents from loopback addresses only.
 */
async function resolveClientId(clientId: unknown, iss: string): Promise<void> {
  if (typeof clientId !== 'string' || clientId === '') {
    throw new Rejection('invalid_client_id', 'client_id is missing');
  }
  if (clientId === iss) return;
  let url: URL;
  try {
    url = new URL(clientId);
  } catch {
    throw new Rejection('invalid_client_id', 'client_id is neither the issuer nor a URL');
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new Rejection('invalid_client_id', 'client_id is neither the issuer nor an http(s) URL');
  }
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) {
    throw new Rejection('invalid_client_id', `the test service fetches only loopback documents, not ${url.host}`);
  }

  let document: Record<string, unknown>;
  try {
    const response = await fetch(url, { redirect: 'error', signal: AbortSignal.timeout(5000) });
    if (response.status !== 200) throw new Error(`status ${response.status}`);
    document = (await response.json()) as Record<string, unknown>;
  } catch (error) {
    throw new Rejection('invalid_client_id', `client ID metadata document: ${(error as Error).message}`);
  }
  if (document.client_id !== clientId) {
    throw new Rejection('invalid_client_id', 'the metadata document names another client_id');
  }
  if (document.jwks_uri !== `${iss}/.well-known/jwks.json`) {
    throw new Rejection('invalid_client_id', "the metadata document's jwks_uri is not the issuer's key set");
  }
}

/** RFC 6749 §2.3.1: Basic (form-urlencoded id and secret) or client_secret_post, not both. */
function authenticateClient(
  request: IncomingMessage,
  form: URLSearchParams,
  clients: Record<string, string>,
): { clientId: string } | { error: Reply } {
  const authorization = request.headers.authorization ?? '';
  const basic = /^basic /i.test(authorization);
  const challenge = { 'www-authenticate': 'Basic realm="token"' };
  const invalidClient = (description: string) => ({
    error: oauthError(401, 'invalid_client', description, challenge),
  });
  let id: string;
  let secret: string;

  if (basic && form.has('client_secret')) {
    return { error: oauthError(400, 'invalid_request', 'use one client authentication method') };
  }
  if (basic) {
    const decoded = Buffer.from(authorization.slice(6).trim(), 'base64').toString();
    const colon = decoded.indexOf(':');
    if (colon < 0) return invalidClient('malformed Basic credentials');
    try {
      id = decodeURIComponent(decoded.slice(0, colon).replaceAll('+', ' '));
      secret = decodeURIComponent(decoded.slice(colon + 1).replaceAll('+', ' '));
    } catch {
      return invalidClient('malformed Basic credentials');
    }
    if (form.has('client_id') && form.get('client_id') !== id) {
      return { error: oauthError(400, 'invalid_request', 'client_id differs from the authenticated client') };
    }
  } else {
    const postedId = form.get('client_id');
    const postedSecret = form.get('client_secret');
    if (postedId === null || postedSecret === null) return invalidClient('client authentication is required');
    id = postedId;
    secret = postedSecret;
  }

  const expected = Object.hasOwn(clients, id) ? clients[id] : undefined;
  if (expected === undefined || !sameSecret(secret, expected)) return invalidClient('client authentication failed');
  return { clientId: id };
}

function sameSecret(presented: string, expected: string): boolean {
  const digest = (value: string) => createHash('sha256').update(value).digest();
  return timingSafeEqual(digest(presented), digest(expected));
}

/** Scopes the token asserts that the service offers; all offered scopes when none is asserted. */
function grantedScopes(asserted: unknown, offered: string[]): string[] {
  if (typeof asserted !== 'string') return [...offered];
  const wanted = new Set(asserted.split(' ').filter((scope) => scope !== ''));
  return offered.filter((scope) => wanted.has(scope));
}

function bearerToken(request: IncomingMessage): string | undefined {
  const match = /^Bearer ([\w.~+/=-]+)$/i.exec(request.headers.authorization ?? '');
  return match?.[1];
}

function mediaType(request: IncomingMessage): string {
  return (request.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
}

function refusal(error: unknown): Reply {
  if (error instanceof Rejection) return json(400, { error: error.code, message: error.message });
  throw error;
}

// ---------------------------------------------------------------------------------------------
// A very small HTTP layer: exact routes, JSON replies.

interface Reply {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

type Routes = Record<string, (request: IncomingMessage, body: string) => Reply | Promise<Reply>>;

function json(status: number, body: unknown, headers: Record<string, string> = {}): Reply {
  return { status, body, headers };
}

function oauthError(status: number, error: string, description: string, headers: Record<string, string> = {}): Reply {
  return json(status, { error, error_description: description }, { 'cache-control': 'no-store', ...headers });
}

async function listen(port = 0): Promise<{ server: Server; url: string }> {
  const server = createServer();
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

function serve(server: Server, routes: Routes): void {
  server.on('request', async (request, response) => {
    const path = new URL(request.url ?? '/', 'http://service').pathname;
    const handler = routes[`${request.method} ${path}`];
    let reply: Reply;
    try {
      const body = handler === undefined ? '' : await readBody(request);
      if (body === undefined) {
        reply = json(413, { error: 'invalid_request', message: 'the request body is too large' });
      } else if (handler !== undefined) {
        reply = await handler(request, body);
      } else if (Object.keys(routes).some((route) => route.endsWith(` ${path}`))) {
        reply = json(405, { error: 'method_not_allowed', message: `${request.method} is not allowed here` });
      } else {
        reply = json(404, { error: 'not_found', message: `${path} is not served here` });
      }
    } catch (error) {
      reply = json(500, { error: 'server_error', message: (error as Error).message });
    }

    const headers: Record<string, string> = { ...reply.headers };
    if (reply.body !== undefined) headers['content-type'] = 'application/json';
    response.writeHead(reply.status, headers);
    response.end(reply.body === undefined ? undefined : JSON.stringify(reply.body));
  });
}

/** The body as text, or undefined past MAX_BODY_BYTES. */
async function readBody(request: IncomingMessage): Promise<string | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) return undefined;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  server.close();
  await once(server, 'close');
}
