/**
 * The agent registry: validation of what an administrator registers, and the credentials each
 * agent gets. A secret is 256 random bits, shown once and stored as its SHA-256: a fast hash is
 * enough for a value with that much entropy, and the token endpoint checks it on every mint.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { importJWK, type JWK } from 'jose';
import { newId, sha256, type Agent, type Store } from '../db/store.ts';

/** Bad input from the command line: printed with the usage, exit status 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export interface AgentInput {
  name: string;
  logoUri?: string | undefined;
  redirectUris: string[];
  jwks?: unknown;
  jwksUri?: string | undefined;
  /** A public client (no credentials): it can connect, never mint (SPEC 1.1, 9.1). */
  public?: boolean | undefined;
}

export interface Registered {
  agent: Agent;
  /** Only for secret-based agents, and only here: Deputy keeps its hash. */
  clientSecret?: string;
}

/** Client-assertion algorithms Deputy verifies (RFC 7523 section 5 makes RS256 mandatory). */
export const CLIENT_ASSERTION_ALGS = ['ES256', 'ES384', 'RS256', 'PS256', 'EdDSA'];
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];
const MAX_NAME = 100;

export async function registerAgent(store: Store, input: AgentInput): Promise<Registered> {
  const name = validName(input.name);
  const logoUri = input.logoUri === undefined ? null : httpsUrl('--logo-uri', input.logoUri);
  const redirectUris = input.redirectUris.map(redirectUri);

  if (input.jwks !== undefined && input.jwksUri !== undefined) {
    throw new UsageError('give either --jwks or --jwks-uri, not both');
  }

  if (input.public === true) {
    if (input.jwks !== undefined || input.jwksUri !== undefined) {
      throw new UsageError('a --public agent has no keys; drop --jwks and --jwks-uri');
    }
    const agent = await store.insertAgent({
      clientId: newId('agt'),
      name,
      logoUri,
      redirectUris,
      tokenEndpointAuthMethod: 'none',
      secretHash: null,
      jwks: null,
      jwksUri: null,
    });
    return { agent };
  }

  if (input.jwks !== undefined || input.jwksUri !== undefined) {
    const jwks = input.jwks === undefined ? null : await publicJwks(input.jwks);
    const jwksUri = input.jwksUri === undefined ? null : httpsUrl('--jwks-uri', input.jwksUri);
    const agent = await store.insertAgent({
      clientId: newId('agt'),
      name,
      logoUri,
      redirectUris,
      tokenEndpointAuthMethod: 'private_key_jwt',
      secretHash: null,
      jwks,
      jwksUri,
    });
    return { agent };
  }

  const clientSecret = randomBytes(32).toString('base64url');
  const agent = await store.insertAgent({
    clientId: newId('agt'),
    name,
    logoUri,
    redirectUris,
    tokenEndpointAuthMethod: 'client_secret_basic',
    secretHash: sha256(clientSecret),
    jwks: null,
    jwksUri: null,
  });
  return { agent, clientSecret };
}

/** Constant-time check of a presented secret against the stored hash. */
export function secretMatches(agent: Agent, presented: string): boolean {
  if (agent.secretHash === null) return false;
  const expected = Buffer.from(agent.secretHash, 'hex');
  const actual = Buffer.from(sha256(presented), 'hex');
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}

function validName(value: string): string {
  const name = value.trim();
  if (name === '' || name.length > MAX_NAME || /[\u0000-\u001f\u007f]/.test(name)) {
    throw new UsageError(`--name must be 1 to ${MAX_NAME} printable characters`);
  }
  return name;
}

function isLoopback(url: URL): boolean {
  return ['localhost', '127.0.0.1', '[::1]'].includes(url.hostname);
}

function parseUrl(option: string, value: string): URL {
  try {
    return new URL(value);
  } catch {
    throw new UsageError(`${option} must be an absolute URL, got '${value}'`);
  }
}

function httpsUrl(option: string, value: string): string {
  const url = parseUrl(option, value);
  if (url.protocol !== 'https:') throw new UsageError(`${option} must be an https URL, got '${value}'`);
  if (url.username !== '' || url.password !== '') {
    throw new UsageError(`${option} must not contain credentials`);
  }
  return url.href;
}

/** https, or http on a loopback address for native agents (RFC 8252 section 7.3); no fragment. */
function redirectUri(value: string): string {
  const url = parseUrl('--redirect-uri', value);
  if (url.hash !== '' || value.includes('#')) {
    throw new UsageError(`--redirect-uri must not have a fragment, got '${value}'`);
  }
  if (url.protocol === 'https:' || (url.protocol === 'http:' && isLoopback(url))) return value;
  throw new UsageError(`--redirect-uri must be https, or http on localhost, got '${value}'`);
}

/** A JWK Set of public signing keys, each importable with the algorithm it names. */
async function publicJwks(value: unknown): Promise<{ keys: Record<string, unknown>[] }> {
  const keys = (value as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys) || keys.length === 0) {
    throw new UsageError('--jwks must be a JWK Set: a JSON object with a non-empty "keys" array');
  }

  const checked: Record<string, unknown>[] = [];
  for (const [i, key] of keys.entries()) {
    if (typeof key !== 'object' || key === null) throw new UsageError(`--jwks key ${i} is not an object`);
    const jwk = key as JWK & Record<string, unknown>;
    if (PRIVATE_MEMBERS.some((m) => m in jwk)) {
      throw new UsageError(`--jwks key ${i} contains private or symmetric key material; give public keys only`);
    }

    const alg = jwk.alg ?? defaultAlg(jwk);
    if (alg === undefined || !CLIENT_ASSERTION_ALGS.includes(alg)) {
      throw new UsageError(
        `--jwks key ${i} needs an "alg" of ${CLIENT_ASSERTION_ALGS.join(', ')}`,
      );
    }

    try {
      await importJWK(jwk, alg);
    } catch (error) {
      throw new UsageError(`--jwks key ${i} is not a valid ${alg} public key: ${(error as Error).message}`);
    }

    if (jwk.kty === 'RSA' && Buffer.from(String(jwk.n), 'base64url').length * 8 < 2048) {
      throw new UsageError(`--jwks key ${i} is an RSA key shorter than 2048 bits`);
    }

    if (jwk.use !== undefined && jwk.use !== 'sig') {
      throw new UsageError(`--jwks key ${i} has "use": "${jwk.use}"; client assertion keys are "sig"`);
    }
    checked.push({ ...jwk, alg });
  }

  return { keys: checked };
}

function defaultAlg(jwk: JWK): string | undefined {
  if (jwk.kty === 'EC' && jwk.crv === 'P-256') return 'ES256';
  if (jwk.kty === 'EC' && jwk.crv === 'P-384') return 'ES384';
  if (jwk.kty === 'OKP' && jwk.crv === 'Ed25519') return 'EdDSA';
  if (jwk.kty === 'RSA') return 'RS256';
  return undefined;
}
