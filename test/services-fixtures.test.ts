/**
 * The test services of helpers/services.ts, checked on their own before any Deputy test leans on
 * them: a stand-in provider on 127.0.0.1 publishes an ES256 key and a client ID metadata
 * document, and the tests sign ID-JAGs and security events with that key by hand.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import {
  calculateJwkThumbprint,
  decodeJwt,
  exportJWK,
  generateKeyPair,
  SignJWT,
  type CryptoKey,
  type JWTPayload,
} from 'jose';
import {
  LOGOUT_REVOKED_EVENT,
  REVOKED_EVENT,
  startAuthMdService,
  startResourceAuthorizationServer,
  type AuthMdService,
  type ResourceAuthorizationServer,
} from './helpers/services.ts';

interface Provider {
  issuer: string;
  clientId: string;
  sign(claims: JWTPayload, typ?: string, key?: CryptoKey): Promise<string>;
  close(): Promise<void>;
}

/** Serves a JWKS and a CIMD at `http://127.0.0.1:<port>` and signs with the matching key. */
async function startProvider(): Promise<Provider> {
  const { publicKey, privateKey } = await generateKeyPair('ES256');
  const jwk = { ...(await exportJWK(publicKey)), alg: 'ES256', use: 'sig' };
  const kid = await calculateJwkThumbprint(jwk);
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const clientId = `${issuer}/agent-auth.json`;
  const documents: Record<string, unknown> = {
    '/.well-known/jwks.json': { keys: [{ ...jwk, kid }] },
    '/agent-auth.json': { client_id: clientId, client_name: 'Stand-in', jwks_uri: `${issuer}/.well-known/jwks.json` },
    '/other-keys.json': { client_id: `${issuer}/other-keys.json`, jwks_uri: 'https://keys.example/jwks.json' },
  };
  server.on('request', (request, response) => {
    const document = documents[request.url ?? ''];
    response.writeHead(document === undefined ? 404 : 200, { 'content-type': 'application/json' });
    response.end(JSON.stringify(document ?? { error: 'not_found' }));
  });

  return {
    issuer,
    clientId,
    sign: (claims, typ = 'oauth-id-jag+jwt', key = privateKey) =>
      new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid, typ }).sign(key),
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

const now = () => Math.floor(Date.now() / 1000);

function idJagClaims(provider: Provider, aud: string | string[], extra: JWTPayload = {}): JWTPayload {
  return {
    iss: provider.issuer,
    sub: 'user-1',
    aud,
    client_id: provider.clientId,
    jti: randomUUID(),
    iat: now(),
    exp: now() + 300,
    email: 'ada@example.com',
    email_verified: true,
    ...extra,
  };
}

async function post(url: string, body: string, headers: Record<string, string>) {
  const response = await fetch(url, { method: 'POST', body, headers });
  const text = await response.text();
  return { status: response.status, headers: response.headers, body: text === '' ? undefined : JSON.parse(text) };
}

/** A JSON document, parsed loosely: the tests assert on its members. */
async function getJson(url: string) {
  return JSON.parse(await (await fetch(url)).text());
}

function register(service: AuthMdService, assertion: string) {
  const body = {
    type: 'identity_assertion',
    assertion_type: 'urn:ietf:params:oauth:token-type:id-jag',
    assertion,
    requested_credential_type: 'access_token',
  };
  return post(`${service.url}/agent/auth`, JSON.stringify(body), { 'content-type': 'application/json' });
}

function me(service: AuthMdService, credential?: string) {
  const headers: Record<string, string> = credential === undefined ? {} : { authorization: `Bearer ${credential}` };
  return fetch(`${service.url}/api/me`, { headers });
}

describe('auth.md test service', () => {
  let provider: Provider;
  let service: AuthMdService;

  before(async () => {
    provider = await startProvider();
    service = await startAuthMdService({ trustedIssuers: [provider.issuer], name: 'Notes' });
  });
  after(async () => {
    await service.close();
    await provider.close();
  });

  test('publishes resource metadata at both URLs and the agent_auth block', async () => {
    const api = await getJson(`${service.url}/.well-known/oauth-protected-resource/api`);
    const origin = await getJson(`${service.url}/.well-known/oauth-protected-resource`);
    const server = await getJson(`${service.url}/.well-known/oauth-authorization-server`);

    assert.equal(api.resource, `${service.url}/api`);
    assert.equal(origin.resource, service.url);
    assert.deepEqual(api.authorization_servers, [service.issuer]);
    assert.equal(api.resource_name, 'Notes');
    assert.equal(server.issuer, service.issuer);
    assert.equal(server.agent_auth.registration_endpoint, `${service.url}/agent/auth`);
    assert.equal(server.agent_auth.events_endpoint, `${service.url}/agent/events`);
    assert.deepEqual(server.agent_auth.events_supported, [REVOKED_EVENT]);
  });

  test('exchanges a good ID-JAG for a credential that opens /api/me', async () => {
    const before = await me(service);
    assert.equal(before.status, 401);
    assert.equal(
      before.headers.get('www-authenticate'),
      `Bearer resource_metadata="${service.url}/.well-known/oauth-protected-resource/api"`,
    );

    const claims = idJagClaims(provider, service.issuer, { scope: 'read admin' });
    const answer = await register(service, await provider.sign(claims));
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.registration_type, 'agent-provider');
    assert.equal(answer.body.credential_type, 'access_token');
    assert.equal(answer.body.credential_expires, null);
    assert.deepEqual(answer.body.scopes, ['read']);
    assert.match(answer.body.registration_id, /^reg_/);
    assert.equal(service.accepted.at(-1)?.claims.jti, claims.jti);

    const after = await me(service, answer.body.credential);
    assert.equal(after.status, 200);
    assert.deepEqual(await after.json(), { sub: 'user-1', email: 'ada@example.com', iss: provider.issuer });
    const wrong = await me(service, 'not-a-credential');
    assert.equal(wrong.status, 401);
    assert.match(wrong.headers.get('www-authenticate') ?? '', /error="invalid_token"/);
  });

  test('refuses a replayed ID-JAG', async () => {
    const assertion = await provider.sign(idJagClaims(provider, service.issuer));
    assert.equal((await register(service, assertion)).status, 200);
    const again = await register(service, assertion);
    assert.equal(again.status, 400);
    assert.equal(again.body.error, 'replay_detected');
  });

  const refusals: Array<[string, string, (p: Provider, s: AuthMdService) => Promise<string>]> = [
    ['a wrong typ', 'invalid_request', (p, s) => p.sign(idJagClaims(p, s.issuer), 'JWT')],
    ['a wrong aud', 'invalid_audience', (p, s) => p.sign(idJagClaims(p, `${s.issuer}/`))],
    ['two audiences', 'invalid_audience', (p, s) => p.sign(idJagClaims(p, [s.issuer, 'https://other.example']))],
    ['an untrusted iss', 'invalid_issuer', (p, s) => p.sign(idJagClaims(p, s.issuer, { iss: 'http://127.0.0.1:9' }))],
    [
      'an unverified email',
      'missing_verified_email',
      (p, s) => p.sign(idJagClaims(p, s.issuer, { email_verified: false, phone_number_verified: false })),
    ],
    ['an expired one', 'expired', (p, s) => p.sign(idJagClaims(p, s.issuer, { iat: now() - 600, exp: now() - 60 }))],
    ['no jti', 'invalid_request', (p, s) => p.sign(idJagClaims(p, s.issuer, { jti: undefined }))],
    [
      'a client_id that is not a metadata document',
      'invalid_client_id',
      (p, s) => p.sign(idJagClaims(p, s.issuer, { client_id: `${p.issuer}/.well-known/jwks.json` })),
    ],
    [
      'a client_id whose document has other keys',
      'invalid_client_id',
      (p, s) => p.sign(idJagClaims(p, s.issuer, { client_id: `${p.issuer}/other-keys.json` })),
    ],
    [
      'a signature by another key',
      'invalid_signature',
      async (p, s) => p.sign(idJagClaims(p, s.issuer), undefined, (await generateKeyPair('ES256')).privateKey),
    ],
  ];
  for (const [what, code, make] of refusals) {
    test(`refuses ${what} with ${code}`, async () => {
      const count = service.accepted.length;
      const answer = await register(service, await make(provider, service));
      assert.equal(answer.status, 400);
      assert.equal(answer.body.error, code, answer.body.message);
      assert.equal(service.accepted.length, count);
    });
  }
});

describe('auth.md test service: revocation', () => {
  let provider: Provider;
  let events: AuthMdService;
  let logout: AuthMdService;

  before(async () => {
    provider = await startProvider();
    events = await startAuthMdService({ trustedIssuers: [provider.issuer] });
    logout = await startAuthMdService({ trustedIssuers: [provider.issuer], dialect: 'logout' });
  });
  after(async () => {
    await events.close();
    await logout.close();
    await provider.close();
  });

  function revocation(service: AuthMdService, event: string, extra: JWTPayload = {}): JWTPayload {
    const { iss, sub, jti, iat } = idJagClaims(provider, service.issuer);
    return { iss, sub, aud: service.issuer, jti, iat, exp: now() + 120, events: { [event]: {} }, ...extra };
  }

  async function credentialFor(service: AuthMdService): Promise<string> {
    const answer = await register(service, await provider.sign(idJagClaims(provider, service.issuer)));
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    return answer.body.credential;
  }

  test('a secevent+jwt revokes the credentials of that sub, after failNext outages', async () => {
    const credential = await credentialFor(events);
    const token = await provider.sign(revocation(events, REVOKED_EVENT), 'secevent+jwt');
    const deliver = () => post(`${events.url}/agent/events`, token, { 'content-type': 'application/secevent+jwt' });

    events.failNext(2);
    assert.equal((await deliver()).status, 503);
    assert.equal((await deliver()).status, 503);
    assert.equal(events.events.length, 0);
    assert.equal((await me(events, credential)).status, 200);

    const delivered = await deliver();
    assert.equal(delivered.status, 202);
    assert.equal(delivered.body, undefined);
    assert.equal(events.deliveries, 3);
    assert.equal(events.events.length, 1);
    assert.equal(events.events[0].contentType, 'application/secevent+jwt');
    assert.equal((await me(events, credential)).status, 401);

    const replayed = await deliver();
    assert.equal(replayed.status, 400);
    assert.equal(replayed.body.error, 'replay_detected');
  });

  test('an event is refused without the revoked event, with the wrong typ or media type', async () => {
    const credential = await credentialFor(events);
    const set = 'application/secevent+jwt';
    const cases = [
      [await provider.sign(revocation(events, LOGOUT_REVOKED_EVENT), 'secevent+jwt'), set],
      [await provider.sign(revocation(events, REVOKED_EVENT), 'logout+jwt'), set],
      [await provider.sign(revocation(events, REVOKED_EVENT, { exp: undefined }), 'secevent+jwt'), set],
      [await provider.sign(revocation(events, REVOKED_EVENT), 'secevent+jwt'), 'application/jwt'],
    ];
    for (const [token, contentType] of cases) {
      const answer = await post(`${events.url}/agent/events`, token, { 'content-type': contentType });
      assert.equal(answer.status, 400);
      assert.equal(answer.body.error, 'invalid_request', answer.body.message);
    }
    events.failNext(1, 500);
    const failed = await post(`${events.url}/agent/events`, cases[0][0], { 'content-type': cases[0][1] });
    assert.equal(failed.status, 500);
    assert.equal((await me(events, credential)).status, 200);
  });

  test('the logout dialect advertises register_uri and revokes with logout+jwt', async () => {
    const metadata = await getJson(`${logout.url}/.well-known/oauth-authorization-server`);
    assert.equal(metadata.agent_auth.register_uri, `${logout.url}/agent/auth`);
    assert.equal(metadata.agent_auth.revocation_uri, `${logout.url}/agent/auth/revoke`);
    assert.equal(metadata.agent_auth.events_endpoint, undefined);
    assert.deepEqual(metadata.agent_auth.events_supported, [LOGOUT_REVOKED_EVENT]);

    const first = await credentialFor(logout);
    const second = await credentialFor(logout);
    const token = await provider.sign(revocation(logout, LOGOUT_REVOKED_EVENT), 'logout+jwt');
    const answer = await post(`${logout.url}/agent/auth/revoke`, token, { 'content-type': 'application/logout+jwt' });
    assert.equal(answer.status, 200);
    assert.deepEqual(answer.body, { revoked: 2 });
    assert.equal((await me(logout, first)).status, 401);
    assert.equal((await me(logout, second)).status, 401);
    assert.equal((await post(`${logout.url}/agent/events`, token, {})).status, 404);
  });
});

describe('resource authorization server test service', () => {
  let provider: Provider;
  let ras: ResourceAuthorizationServer;
  const clients = { 'agent-a': 'secret-a', 'agent-b': 'secret-b' };

  before(async () => {
    provider = await startProvider();
    ras = await startResourceAuthorizationServer({
      trustedIssuers: [provider.issuer],
      clients,
      scopes: ['tools', 'files'],
    });
  });
  after(async () => {
    await ras.close();
    await provider.close();
  });

  function redeem(assertion: string, client: [string, string], method: 'basic' | 'post' = 'basic') {
    const form = new URLSearchParams({ grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer', assertion });
    const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
    if (method === 'basic') {
      headers.authorization = `Basic ${Buffer.from(client.map(encodeURIComponent).join(':')).toString('base64')}`;
    } else {
      form.set('client_id', client[0]);
      form.set('client_secret', client[1]);
    }
    return post(`${ras.url}/token`, form.toString(), headers);
  }

  function grant(extra: JWTPayload = {}) {
    const claims = idJagClaims(provider, ras.issuer, { client_id: 'agent-a', resource: ras.resource, ...extra });
    return provider.sign(claims);
  }

  test('publishes metadata for the jwt-bearer grant and the ID-JAG profile', async () => {
    const metadata = await getJson(`${ras.url}/.well-known/oauth-authorization-server`);
    const resource = await getJson(`${ras.url}/.well-known/oauth-protected-resource/mcp`);
    assert.equal(metadata.issuer, ras.issuer);
    assert.equal(metadata.token_endpoint, `${ras.url}/token`);
    assert.ok(metadata.grant_types_supported.includes('urn:ietf:params:oauth:grant-type:jwt-bearer'));
    assert.deepEqual(metadata.authorization_grant_profiles_supported, ['urn:ietf:params:oauth:grant-profile:id-jag']);
    assert.deepEqual(resource.authorization_servers, [ras.issuer]);
    assert.equal(resource.resource, ras.resource);
  });

  test('issues a token to the client the ID-JAG names, with the scopes both allow', async () => {
    const answer = await redeem(await grant({ scope: 'files admin' }), ['agent-a', 'secret-a']);
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.token_type, 'Bearer');
    assert.equal(answer.body.scope, 'files');
    assert.equal(typeof answer.body.expires_in, 'number');
    assert.equal(answer.headers.get('cache-control'), 'no-store');
    assert.equal(ras.accepted.length, 1);

    const posted = await redeem(await grant({ aud: [ras.issuer] }), ['agent-a', 'secret-a'], 'post');
    assert.equal(posted.status, 200, JSON.stringify(posted.body));
    assert.equal(posted.body.scope, 'tools files');
  });

  test('refuses the ID-JAG from any other client, and bad client credentials', async () => {
    const assertion = await grant();
    const other = await redeem(assertion, ['agent-b', 'secret-b']);
    assert.equal(other.status, 400);
    assert.equal(other.body.error, 'invalid_grant');

    const badSecret = await redeem(assertion, ['agent-a', 'secret-b']);
    assert.equal(badSecret.status, 401);
    assert.equal(badSecret.body.error, 'invalid_client');
    assert.match(badSecret.headers.get('www-authenticate') ?? '', /^Basic /);

    const anonymous = await post(`${ras.url}/token`, new URLSearchParams({
      grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer',
      assertion,
      client_id: 'agent-a',
    }).toString(), { 'content-type': 'application/x-www-form-urlencoded' });
    assert.equal(anonymous.status, 401);
    assert.equal(anonymous.body.error, 'invalid_client');

    // Refusing the wrong client did not use the grant up.
    assert.equal((await redeem(assertion, ['agent-a', 'secret-a'])).status, 200);
  });

  const refusals: Array<[string, number, string, () => Promise<string>]> = [
    ['a replayed ID-JAG', 400, 'invalid_grant', async () => ''],
    ['two audiences', 400, 'invalid_grant', () => grant({ aud: [ras.issuer, 'https://other.example'] })],
    ['another audience', 400, 'invalid_grant', () => grant({ aud: 'https://other.example' })],
    ['a wrong typ', 400, 'invalid_grant', async () => provider.sign(decodeJwt(await grant()), 'JWT')],
    ['another resource', 400, 'invalid_grant', () => grant({ resource: `${ras.url}/other` })],
    ['no scope in common', 400, 'invalid_scope', () => grant({ scope: 'admin' })],
  ];
  for (const [what, status, code, make] of refusals) {
    test(`refuses ${what} with ${code}`, async () => {
      let assertion = await make();
      if (assertion === '') {
        assertion = await grant();
        assert.equal((await redeem(assertion, ['agent-a', 'secret-a'])).status, 200);
      }
      const count = ras.accepted.length;
      const answer = await redeem(assertion, ['agent-a', 'secret-a']);
      assert.equal(answer.status, status);
      assert.equal(answer.body.error, code, answer.body.error_description);
      assert.equal(ras.accepted.length, count);
    });
  }
});
