/**
 * Service discovery (DESIGN 2.3, SPEC 2.2 and 9): what a service publishes about itself, read
 * through the guarded client before a person approves a delegation or an agent mints for an
 * audience. Two entry points:
 *
 * - `discoverService` for a URL a person typed: the protected resource metadata (RFC 9728)
 *   names the authorization server, whose metadata (RFC 8414) holds the `agent_auth` block. A
 *   URL without resource metadata is read as an authorization server issuer itself.
 * - `discoverAudience` for an audience an agent named: the authorization server metadata, then
 *   each requested resource's metadata, which must list that audience.
 *
 * The audience is the authorization server issuer identifier exactly as the service publishes
 * it, trailing slash included. What the person sees (name, logo, scopes) is what the service
 * published, cleaned up; an invalid optional member is dropped rather than failing discovery.
 * Every failure is a `ServiceDiscoveryError` whose message is fit for a web page.
 */
import { isIP } from 'node:net';
import {
  fetchJson,
  forbiddenAddressKind,
  GuardedFetchError,
  hostOf,
  isLoopbackAddress,
  type FetchGuard,
  type JsonDocument,
} from './fetch.ts';

export interface AgentAuth {
  registrationEndpoint: string | null;
  registerUri: string | null;
  revocationUri: string | null;
  eventsEndpoint: string | null;
  eventsSupported: string[];
  identityTypesSupported: string[];
}

export interface ServiceMetadata {
  /** The service's authorization server issuer identifier, exactly as published. */
  audience: string;
  resources: string[];
  name: string | null;
  logoUri: string | null;
  scopesSupported: string[];
  agentAuth: AgentAuth | null;
  /** Seconds this may be cached: the shortest max-age of the documents read, if all had one. */
  maxAge: number | undefined;
}

export type ServiceDiscoveryReason =
  | 'url'
  | 'fetch'
  | 'resource_mismatch'
  | 'issuer_mismatch'
  | 'not_governed'
  | 'invalid_metadata';

export class ServiceDiscoveryError extends Error {
  override name = 'ServiceDiscoveryError';
  readonly reason: ServiceDiscoveryReason;

  constructor(reason: ServiceDiscoveryReason, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.reason = reason;
  }
}

const NAME_MAX_LENGTH = 100;
/**
 * The longest service URL (issuer or resource) Deputy takes: audiences are keys of indexed
 * rows, which PostgreSQL limits to about 2.7 kB, and no real issuer comes near it.
 */
export const MAX_URL_LENGTH = 2048;
const PROTECTED_RESOURCE_SUFFIX = 'oauth-protected-resource';
const AUTHORIZATION_SERVER_SUFFIX = 'oauth-authorization-server';

/** Discovers the service behind a URL a person typed (DESIGN 2.3). */
export async function discoverService(url: string, guard: FetchGuard): Promise<ServiceMetadata> {
  const forms = typedForms(url);
  let resourceDocument: JsonDocument;
  try {
    resourceDocument = await readResourceMetadata(forms[0], guard);
  } catch (error) {
    if (isNotFound(error)) {
      return discoverIssuer(forms, guard);
    }
    throw error;
  }

  const resource = checkResource(resourceDocument.json, forms);
  const audience = firstAuthorizationServer(resourceDocument.json, resource);
  const serverDocument = await readAuthorizationServer(audience, guard);
  return assemble(audience, [resource], [resourceDocument], serverDocument, guard);
}

/**
 * Discovers an audience an agent named in a mint request: its authorization server metadata,
 * and the metadata of each resource, which must name that audience (DESIGN 2.4 step 4).
 */
export async function discoverAudience(
  audience: string,
  resources: string[],
  guard: FetchGuard,
): Promise<ServiceMetadata> {
  checkIssuerIdentifier(audience);
  const requested = [...new Set(resources)];
  const [serverDocument, resourceDocuments] = await Promise.all([
    readAuthorizationServer(audience, guard),
    Promise.all(requested.map((resource) => readGovernedResource(resource, audience, guard))),
  ]);

  if (requested.length === 0) {
    // No resource named: a service whose API lives at its issuer's own address says there who
    // it is (name, logo, scopes). Optional; any failure just leaves those unknown.
    const own = await readGovernedResource(audience, audience, guard).catch(() => undefined);
    if (own !== undefined) return assemble(audience, [audience], [own], serverDocument, guard);
  }
  return assemble(audience, requested, resourceDocuments, serverDocument, guard);
}

/** RFC 9728 §3.1: the well-known suffix goes between the host and the resource's path. */
export function protectedResourceMetadataUrl(resource: string): string {
  return wellKnownUrl(new URL(resource), PROTECTED_RESOURCE_SUFFIX);
}

/** RFC 8414 §3.1: the well-known suffix goes between the host and the issuer's path. */
export function authorizationServerMetadataUrl(issuer: string): string {
  return wellKnownUrl(new URL(issuer), AUTHORIZATION_SERVER_SUFFIX);
}

/** A terminating "/" is removed before the insertion (RFC 8414 §3.1, RFC 9728 §3.1). */
function wellKnownUrl(base: URL, suffix: string): string {
  const path = base.pathname.replace(/\/$/, '');
  return `${base.origin}/.well-known/${suffix}${path}${base.search}`;
}

/**
 * The identifiers a typed URL may stand for, the form as typed first. On an empty path the
 * forms with and without a trailing slash name the same thing and build the same well-known
 * address, so either is accepted back from the service.
 */
function typedForms(typed: string): [string, ...string[]] {
  const text = typed.trim();
  if (text.length > MAX_URL_LENGTH) {
    throw new ServiceDiscoveryError('url', `a service URL may be at most ${MAX_URL_LENGTH} characters long`);
  }
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `https://${text}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new ServiceDiscoveryError('url', `${quote(text)} is not a valid URL`);
  }

  const http = url.protocol === 'https:' || url.protocol === 'http:';
  if (!http || url.hash !== '' || url.username !== '' || url.password !== '') {
    throw new ServiceDiscoveryError('url', `${quote(text)} is not a service URL`);
  }

  if (url.pathname !== '/' || url.search !== '') {
    return [url.href];
  }

  const bare = url.href.slice(0, -1);
  return /\/$/.test(text) ? [url.href, bare] : [bare, url.href];
}

/** No resource metadata: the typed URL is taken as an authorization server issuer. */
async function discoverIssuer(
  forms: [string, ...string[]],
  guard: FetchGuard,
): Promise<ServiceMetadata> {
  checkIssuerIdentifier(forms[0]);
  let serverDocument: JsonDocument;
  try {
    serverDocument = await readServerMetadata(forms[0], guard);
  } catch (error) {
    if (isNotFound(error)) {
      throw new ServiceDiscoveryError(
        'fetch',
        `${quote(forms[0])} publishes neither protected resource nor authorization server metadata`,
        { cause: (error as ServiceDiscoveryError).cause },
      );
    }
    throw error;
  }

  const audience = issuerAmong(serverDocument.json, forms);
  const resource = optionalUrl(serverDocument.json.resource, guard);
  return assemble(audience, resource ? [resource] : [], [], serverDocument, guard);
}

/**
 * Which form names the issuer: the published `issuer` (RFC 8414 §3.3: it must be one the
 * address was built from), else the form the auth.md sample lists in `authorization_servers`,
 * else the form without a trailing slash (the first form when there is only one).
 */
function issuerAmong(metadata: Record<string, unknown>, forms: [string, ...string[]]): string {
  if (metadata.issuer !== undefined) {
    if (typeof metadata.issuer !== 'string' || !forms.includes(metadata.issuer)) {
      throw issuerMismatch(metadata.issuer, forms[0]);
    }
    return metadata.issuer;
  }

  const listed = stringArray(metadata.authorization_servers);
  return forms.find((form) => listed.includes(form)) ?? forms.find((form) => !form.endsWith('/')) ?? forms[0];
}

async function readAuthorizationServer(audience: string, guard: FetchGuard): Promise<JsonDocument> {
  const document = await readServerMetadata(audience, guard);
  const { issuer } = document.json;
  // RFC 8414 §3.3: a published issuer must be the one we asked for, or the data is not used.
  // auth.md services publish none (SPEC 2.2); that is accepted, with one name for the service
  // (issuerAmong): `h` and `h/` build one metadata URL, and must not make two audiences.
  if (issuer !== undefined && issuer !== audience) {
    throw issuerMismatch(issuer, audience);
  }
  if (issuer === undefined) {
    const named = issuerAmong(document.json, typedForms(audience));
    if (named !== audience) {
      throw new ServiceDiscoveryError(
        'issuer_mismatch',
        `${quote(audience)} publishes no issuer and is named ${quote(named)}; use that as the audience`,
      );
    }
  }
  return document;
}

/**
 * A resource the agent named under a delegation for a whole service (whose audience was
 * discovered when it was made): its metadata must name the audience among its authorization
 * servers. Answers the metadata's cache lifetime; throws a discovery failure otherwise.
 */
export async function governedResource(
  resource: string,
  audience: string,
  guard: FetchGuard,
): Promise<{ maxAge: number | undefined }> {
  return { maxAge: (await readGovernedResource(resource, audience, guard)).maxAge };
}

async function readGovernedResource(
  resource: string,
  audience: string,
  guard: FetchGuard,
): Promise<JsonDocument> {
  checkResourceIdentifier(resource);
  const document = await readResourceMetadata(resource, guard);
  checkResource(document.json, [resource]);

  if (!stringArray(document.json.authorization_servers).includes(audience)) {
    throw new ServiceDiscoveryError(
      'not_governed',
      `${quote(resource)} does not list ${quote(audience)} among its authorization servers`,
    );
  }
  return document;
}

function readResourceMetadata(resource: string, guard: FetchGuard): Promise<JsonDocument> {
  const what = `the protected resource metadata of ${quote(resource)}`;
  return readDocument(protectedResourceMetadataUrl(resource), what, guard);
}

function readServerMetadata(issuer: string, guard: FetchGuard): Promise<JsonDocument> {
  const what = `the authorization server metadata of ${quote(issuer)}`;
  return readDocument(authorizationServerMetadataUrl(issuer), what, guard);
}

/** Fetch failures become discovery failures that say which document could not be read. */
async function readDocument(url: string, what: string, guard: FetchGuard): Promise<JsonDocument> {
  try {
    return await fetchJson(url, guard);
  } catch (error) {
    if (error instanceof GuardedFetchError) {
      throw new ServiceDiscoveryError('fetch', `could not read ${what}: ${error.message}`, {
        cause: error,
      });
    }
    throw error;
  }
}

function isNotFound(error: unknown): boolean {
  return error instanceof ServiceDiscoveryError
    && error.cause instanceof GuardedFetchError
    && error.cause.status === 404;
}

/** RFC 9728 §3.3: `resource` must be the identifier the address was built from, exactly. */
function checkResource(metadata: Record<string, unknown>, forms: string[]): string {
  const { resource } = metadata;
  if (typeof resource !== 'string') {
    throw new ServiceDiscoveryError(
      'invalid_metadata',
      `the protected resource metadata of ${quote(forms[0])} names no resource`,
    );
  }

  if (!forms.includes(resource)) {
    throw new ServiceDiscoveryError(
      'resource_mismatch',
      `the protected resource metadata of ${quote(forms[0])} describes ${quote(resource)} instead`,
    );
  }
  return resource;
}

/** SPEC 2.2: the audience is `authorization_servers[0]`, exactly as written there. */
function firstAuthorizationServer(metadata: Record<string, unknown>, resource: string): string {
  const [first] = stringArray(metadata.authorization_servers);
  if (first === undefined) {
    throw new ServiceDiscoveryError(
      'invalid_metadata',
      `the protected resource metadata of ${quote(resource)} names no authorization server`,
    );
  }

  checkIssuerIdentifier(first);
  return first;
}

/**
 * RFC 8414 §2: an issuer is an https URL with no query or fragment. Scheme and address are
 * left to the guarded client, which says more precisely what is wrong with them.
 */
function checkIssuerIdentifier(issuer: string): void {
  const url = parseHttpUrl(issuer);
  if (url === null || issuer.includes('?') || issuer.includes('#')) {
    throw new ServiceDiscoveryError(
      'url',
      `${quote(issuer)} is not an authorization server issuer URL`,
    );
  }
}

/** RFC 9728 §1.2: a resource identifier is an https URL with no fragment. */
function checkResourceIdentifier(resource: string): void {
  if (parseHttpUrl(resource) === null || resource.includes('#')) {
    throw new ServiceDiscoveryError('url', `${quote(resource)} is not a resource URL`);
  }
}

function issuerMismatch(published: unknown, expected: string): ServiceDiscoveryError {
  const shown = typeof published === 'string' ? quote(published) : 'an invalid issuer';
  return new ServiceDiscoveryError(
    'issuer_mismatch',
    `the authorization server metadata of ${quote(expected)} names ${shown} as its issuer`,
  );
}

function assemble(
  audience: string,
  resources: string[],
  resourceDocuments: JsonDocument[],
  serverDocument: JsonDocument,
  guard: FetchGuard,
): ServiceMetadata {
  const primary = resourceDocuments[0]?.json ?? {};
  const server = serverDocument.json;
  // RFC 6749 section 3.3: a scope is one token; a published "a b" would grant two unseen.
  const scopes = stringArray(primary.scopes_supported).filter((s) => /^[\x21\x23-\x5b\x5d-\x7e]+$/.test(s));
  return {
    audience,
    resources,
    name: cleanName(primary.resource_name) ?? cleanName(server.resource_name),
    logoUri:
      optionalUrl(primary.resource_logo_uri, guard) ?? optionalUrl(server.resource_logo_uri, guard),
    scopesSupported: scopes.length > 0 ? scopes : stringArray(server.scopes_supported),
    agentAuth: parseAgentAuth(server.agent_auth, guard),
    maxAge: shortestMaxAge([serverDocument, ...resourceDocuments]),
  };
}

/** The auth.md `agent_auth` block (SPEC 2.2), newer and older members both. */
function parseAgentAuth(value: unknown, guard: FetchGuard): AgentAuth | null {
  if (!isObject(value)) {
    return null;
  }

  return {
    registrationEndpoint: optionalUrl(value.registration_endpoint, guard),
    registerUri: optionalUrl(value.register_uri, guard),
    revocationUri: optionalUrl(value.revocation_uri, guard),
    eventsEndpoint: optionalUrl(value.events_endpoint, guard),
    eventsSupported: stringArray(value.events_supported),
    identityTypesSupported: stringArray(value.identity_types_supported),
  };
}

function shortestMaxAge(documents: JsonDocument[]): number | undefined {
  const ages = documents.map((document) => document.maxAge);
  if (ages.some((age) => age === undefined)) {
    return undefined;
  }
  return Math.min(...(ages as number[]));
}

/**
 * A URL published in metadata, as published, if Deputy could ever fetch it: absolute https
 * (or http to loopback in development), no credentials or fragment, and not an IP literal in
 * a special-use range (CIMD §6.5). Anything else is dropped.
 */
function optionalUrl(value: unknown, guard: FetchGuard): string | null {
  if (typeof value !== 'string') {
    return null;
  }

  const url = parseServiceUrl(value, guard);
  return url === null || url.hash !== '' || value.includes('#') ? null : value;
}

/** An absolute http(s) URL without credentials, or null. */
function parseHttpUrl(value: string): URL | null {
  if (value.length > MAX_URL_LENGTH) return null;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return null;
  }

  const http = url.protocol === 'https:' || url.protocol === 'http:';
  return http && url.username === '' && url.password === '' ? url : null;
}

function parseServiceUrl(value: string, guard: FetchGuard): URL | null {
  const url = parseHttpUrl(value);
  if (url === null) {
    return null;
  }

  const host = hostOf(url);
  const literal = isIP(host) !== 0;
  if (url.protocol === 'https:') {
    return literal && forbiddenAddressKind(host, guard.allowLoopback) !== null ? null : url;
  }

  // Plain http: only to loopback, in development (as the guarded client would allow).
  const loopback = host === 'localhost' || (literal && isLoopbackAddress(host));
  return guard.allowLoopback && loopback ? url : null;
}

/** A display name: control and bidi-override characters out, whitespace collapsed, capped. */
function cleanName(value: unknown): string | null {
  if (typeof value !== 'string') {
    return null;
  }

  const cleaned = value
    .replace(/[\p{Cc}\u202A-\u202E\u2066-\u2069]/gu, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  const capped = Array.from(cleaned).slice(0, NAME_MAX_LENGTH).join('').trim();
  return capped === '' ? null : capped;
}

/** An array of strings, or nothing: a list with anything else in it is ignored whole. */
function stringArray(value: unknown): string[] {
  if (!Array.isArray(value) || !value.every((item) => typeof item === 'string')) {
    return [];
  }
  return [...value];
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A value from outside, quoted and cut short for a message. */
function quote(value: string): string {
  return value.length > 200 ? `'${value.slice(0, 200)}…'` : `'${value}'`;
}
