/**
 * An example agent: it connects to Deputy on behalf of a person, then asks Deputy for an ID-JAG
 * for one service and, if the service takes auth.md registrations, presents it there.
 *
 *   node --import tsx examples/agent.ts --deputy http://localhost:4000 \
 *     --client-id ID --client-secret SECRET --service URL [--scope "a b"] [--print-token]
 *
 * DEPUTY_URL, DEPUTY_CLIENT_ID and DEPUTY_CLIENT_SECRET stand in for the first three options.
 * Register the agent first with `npx deputy agents add --name "Example agent"`.
 *
 * 1. Connect: the device authorization grant (RFC 8628). The person opens a link, signs in to
 *    Deputy and approves; openid-client polls the token endpoint, honouring `interval` and
 *    `slow_down`, and gives up on `access_denied` or `expired_token`.
 * 2. Discover the service: its protected resource metadata (RFC 9728) names the audience, the
 *    authorization server; a URL without one is taken as the audience itself.
 * 3. Mint: token exchange (RFC 8693) of the refresh token for an ID-JAG. Without a delegation
 *    Deputy answers `consent_required` with a link for the person; the agent retries meanwhile
 *    (getting the same link back), and stops when the person denies (`access_denied`).
 * 4. Register: POST the ID-JAG to the service's `agent_auth` registration endpoint, if any.
 *
 * Exits 0 on success and 1 with a one-line message otherwise.
 */
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { decodeJwt, decodeProtectedHeader } from 'jose';
import * as client from 'openid-client';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ID_JAG = 'urn:ietf:params:oauth:token-type:id-jag';
const REFRESH_TOKEN = 'urn:ietf:params:oauth:token-type:refresh_token';
const CONSENT_RETRY_SECONDS = 5;

interface Options {
  deputy: string;
  clientId: string;
  clientSecret: string;
  service: string;
  scope: string | undefined;
  printToken: boolean;
}

interface Service {
  audience: string;
  resource: string | undefined;
  registrationEndpoint: string | undefined;
}

type Json = Record<string, unknown>;

function readOptions(): Options {
  const { values } = parseArgs({
    options: {
      deputy: { type: 'string', default: process.env.DEPUTY_URL },
      'client-id': { type: 'string', default: process.env.DEPUTY_CLIENT_ID },
      'client-secret': { type: 'string', default: process.env.DEPUTY_CLIENT_SECRET },
      service: { type: 'string' },
      scope: { type: 'string' },
      'print-token': { type: 'boolean', default: false },
    },
  });
  const { deputy, 'client-id': clientId, 'client-secret': clientSecret, service } = values;
  if (!deputy || !clientId || !clientSecret || !service) {
    throw new Error(
      'usage: agent.ts --deputy URL --client-id ID --client-secret SECRET --service URL [--scope "a b"]',
    );
  }
  return {
    deputy: deputy.replace(/\/$/, ''),
    clientId,
    clientSecret,
    service,
    scope: values.scope,
    printToken: values['print-token'],
  };
}

/** Deputy's RFC 8414 metadata, at `<deputy>/.well-known/oauth-authorization-server`. */
function discoverDeputy(options: Options): Promise<client.Configuration> {
  const url = new URL(options.deputy);
  const auth = client.ClientSecretBasic(options.clientSecret);
  return client.discovery(url, options.clientId, undefined, auth, {
    algorithm: 'oauth2',
    // openid-client refuses plain http unless told; a local Deputy runs on http://localhost.
    execute: url.protocol === 'http:' ? [client.allowInsecureRequests] : [],
  });
}

/** Step 1: the person approves this agent in the browser; returns the refresh token. */
async function connect(deputy: client.Configuration): Promise<string> {
  const device = await client.initiateDeviceAuthorization(deputy, {
    scope: 'openid offline_access email profile',
  });
  console.log(`Open ${device.verification_uri_complete ?? device.verification_uri} in a browser`);
  console.log(`and check that it shows the code ${device.user_code}. Waiting for approval...`);
  const tokens = await client.pollDeviceAuthorizationGrant(deputy, device);
  if (tokens.refresh_token === undefined) {
    throw new Error('Deputy issued no refresh token (offline_access not granted)');
  }
  console.log('Connected.');
  return tokens.refresh_token;
}

/** RFC 9728 §3.1 and RFC 8414 §3.1: the well-known suffix goes between the host and the path. */
function wellKnown(url: string, suffix: string): string {
  const { origin, pathname } = new URL(url);
  return `${origin}/.well-known/${suffix}${pathname.replace(/\/$/, '')}`;
}

async function getJson(url: string): Promise<Json | undefined> {
  const response = await fetch(url, { headers: { accept: 'application/json' }, redirect: 'error' });
  if (response.status === 404) return undefined;
  if (!response.ok) throw new Error(`${url} answered ${response.status}`);
  return (await response.json()) as Json;
}

/** Step 2: the audience (and resource) to ask for, and where the service takes ID-JAGs. */
async function discoverService(url: string): Promise<Service> {
  const metadata = await getJson(wellKnown(url, 'oauth-protected-resource'));
  let audience = url;
  let resource: string | undefined;
  if (metadata !== undefined) {
    const servers = metadata.authorization_servers;
    resource = String(metadata.resource);
    // RFC 9728 §3.3: the document must be about the URL it was fetched for.
    if (resource.replace(/\/$/, '') !== url.replace(/\/$/, '')) {
      throw new Error(`${url} publishes metadata for ${resource}`);
    }
    if (!Array.isArray(servers) || typeof servers[0] !== 'string') {
      throw new Error(`${url} names no authorization server`);
    }
    audience = servers[0];
  }

  const server = await getJson(wellKnown(audience, 'oauth-authorization-server')).catch(() => undefined);
  const agentAuth = (server?.agent_auth ?? {}) as Json;
  const endpoint = agentAuth.registration_endpoint ?? agentAuth.register_uri;
  return { audience, resource, registrationEndpoint: typeof endpoint === 'string' ? endpoint : undefined };
}

/** Step 3: an ID-JAG for the service, waiting for the person's consent if Deputy asks for it. */
async function mint(
  deputy: client.Configuration,
  refreshToken: string,
  service: Service,
  scope: string | undefined,
): Promise<string> {
  const parameters: Record<string, string> = {
    requested_token_type: ID_JAG,
    subject_token: refreshToken,
    subject_token_type: REFRESH_TOKEN,
    audience: service.audience,
    ...(service.resource !== undefined ? { resource: service.resource } : {}),
    ...(scope !== undefined ? { scope } : {}),
  };
  let deadline: number | undefined;
  for (;;) {
    try {
      return (await client.genericGrantRequest(deputy, TOKEN_EXCHANGE, parameters)).access_token;
    } catch (error) {
      if (!(error instanceof client.ResponseBodyError) || error.error !== 'consent_required') throw error;
      if (deadline === undefined) {
        deadline = Date.now() + Number(error.cause.expires_in ?? 600) * 1000;
        console.log(`Deputy needs your consent for ${service.audience}. Open:`);
        console.log(`  ${String(error.cause.consent_uri)}`);
      }
      if (Date.now() >= deadline) throw new Error('consent was not given in time');
      await sleep(CONSENT_RETRY_SECONDS * 1000);
    }
  }
}

/** Step 4: the auth.md registration (SPEC 2.6); the credential is masked in what is printed. */
async function register(endpoint: string, assertion: string): Promise<void> {
  const response = await fetch(endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({
      type: 'identity_assertion',
      assertion_type: ID_JAG,
      assertion,
      requested_credential_type: 'access_token',
    }),
  });
  const answer = (await response.json().catch(() => ({}))) as Json;
  if (typeof answer.credential === 'string') answer.credential = `${answer.credential.slice(0, 4)}...`;
  console.log(`The service answered ${response.status}:\n${JSON.stringify(answer, null, 2)}`);
  if (!response.ok) throw new Error(`registration refused: ${String(answer.error ?? response.status)}`);
}

async function main(): Promise<void> {
  const options = readOptions();
  const deputy = await discoverDeputy(options);
  const refreshToken = await connect(deputy);
  const service = await discoverService(options.service);
  console.log(`Audience: ${service.audience}${service.resource ? `, resource: ${service.resource}` : ''}`);

  const assertion = await mint(deputy, refreshToken, service, options.scope);
  const decoded = { header: decodeProtectedHeader(assertion), claims: decodeJwt(assertion) };
  console.log(JSON.stringify(decoded, null, 2));
  if (options.printToken) console.log(assertion);
  if (service.registrationEndpoint !== undefined) await register(service.registrationEndpoint, assertion);
}

/** One line: the OAuth error Deputy sent, or the error and what caused it. */
function describe(error: unknown): string {
  if (error instanceof client.ResponseBodyError) return `${error.error}: ${error.error_description ?? ''}`;
  if (!(error instanceof Error)) return String(error);
  return error.cause instanceof Error ? `${error.message} (${error.cause.message})` : error.message;
}

main().catch((error: unknown) => {
  console.error(`agent: ${describe(error)}`);
  process.exitCode = 1;
});
