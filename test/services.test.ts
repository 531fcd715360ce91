/**
 * The guarded client and service discovery against real HTTP servers on 127.0.0.1. Nothing
 * here sends a packet anywhere but loopback: every other address is refused before a
 * connection is made, which is itself what several tests assert.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import {
  discoverAudience,
  discoverService,
  ServiceDiscoveryError,
  type ServiceDiscoveryReason,
} from '../src/services/discovery.ts';
import {
  fetchJson,
  guardedFetch,
  GuardedFetchError,
  type FetchGuard,
  type GuardedFetchReason,
} from '../src/services/fetch.ts';

const DEV: FetchGuard = { allowLoopback: true };
const STRICT: FetchGuard = { allowLoopback: false };
const REVOKED_EVENT = 'https://schemas.workos.com/events/agent/identity/assertion/revoked';
const OLD_REVOKED_EVENT = 'https://schemas.workos.com/events/agent/auth/identity/assertion/revoked';

type Handler = (request: IncomingMessage, response: ServerResponse, base: string) => void;

interface TestServer {
  base: string;
  port: number;
  /** Paths requested so far, in order. */
  hits: string[];
  /** TCP connections accepted so far. */
  connections: number;
  close(): Promise<void>;
}

async function startServer(routes: Record<string, Handler>): Promise<TestServer> {
  const server: Server = createServer();
  const state = { hits: [] as string[], connections: 0 };
  server.on('connection', () => {
    state.connections += 1;
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  const base = `http://127.0.0.1:${port}`;

  server.on('request', (request: IncomingMessage, response: ServerResponse) => {
    const path = request.url ?? '/';
    state.hits.push(path);
    const route = routes[path];
    if (route === undefined) {
      response.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    route(request, response, base);
  });

  return {
    base,
    port,
    get hits() {
      return state.hits;
    },
    get connections() {
      return state.connections;
    },
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

function json(document: (base: string) => unknown, headers: Record<string, string> = {}): Handler {
  return (_request, response, base) => {
    response.writeHead(200, { 'content-type': 'application/json', ...headers });
    response.end(JSON.stringify(document(base)));
  };
}

async function rejectsWith(work: Promise<unknown>, reason: GuardedFetchReason, message?: RegExp) {
  await assert.rejects(work, (error: unknown) => {
    assert.ok(error instanceof GuardedFetchError, `expected a GuardedFetchError, got ${String(error)}`);
    assert.equal(error.reason, reason, error.message);
    if (message) assert.match(error.message, message);
    return true;
  });
}

async function discoveryFails(
  work: Promise<unknown>,
  reason: ServiceDiscoveryReason,
  message: RegExp,
  fetchReason?: GuardedFetchReason,
) {
  await assert.rejects(work, (error: unknown) => {
    assert.ok(error instanceof ServiceDiscoveryError, `expected a ServiceDiscoveryError, got ${String(error)}`);
    assert.equal(error.reason, reason, error.message);
    assert.match(error.message, message);
    if (fetchReason) {
      assert.ok(error.cause instanceof GuardedFetchError);
      assert.equal(error.cause.reason, fetchReason);
    }
    return true;
  });
}

describe('service discovery', () => {
  /** A current auth.md service: PRM plus AS metadata without `issuer`, with `agent_auth`. */
  let modern: TestServer;
  /** An older auth.md service: no PRM at its root, AS metadata repeating the PRM fields. */
  let legacy: TestServer;
  /** An RFC 8414 authorization server with a path and a trailing slash in its issuer. */
  let tenant: TestServer;

  before(async () => {
    modern = await startServer({
      '/.well-known/oauth-protected-resource/api': json(
        (base) => ({
          resource: `${base}/api`,
          resource_name: '  Acme \n  API ',
          resource_logo_uri: `${base}/logo.png`,
          scopes_supported: ['read', 'write'],
          authorization_servers: [base],
          bearer_methods_supported: ['header'],
        }),
        { 'cache-control': 'public, max-age=600' },
      ),
      '/.well-known/oauth-protected-resource/other': json(() => ({
        resource: `${modern.base}/other`,
        authorization_servers: ['https://auth.elsewhere.example'],
      })),
      '/.well-known/oauth-protected-resource/wrong': json((base) => ({
        resource: `${base}/somewhere-else`,
        authorization_servers: [base],
      })),
      '/.well-known/oauth-protected-resource/moved': (_request, response, base) => {
        response.writeHead(302, { location: `${base}/.well-known/oauth-protected-resource/api` }).end();
      },
      '/.well-known/oauth-protected-resource/foreign': json((base) => ({
        resource: `${base}/foreign`,
        authorization_servers: [`${tenant.base}/impostor`],
      })),
      '/.well-known/oauth-authorization-server': json(
        (base) => ({
          resource: `${base}/api`,
          authorization_servers: [base],
          resource_name: 'Acme',
          resource_logo_uri: `${base}/as-logo.png`,
          scopes_supported: ['openid'],
          agent_auth: {
            skill: `${base}/auth.md`,
            registration_endpoint: `${base}/agent/register`,
            events_endpoint: `${base}/agent/events`,
            events_supported: [REVOKED_EVENT],
            identity_types_supported: ['identity_assertion'],
          },
        }),
        { 'cache-control': 'max-age=300' },
      ),
    });

    legacy = await startServer({
      '/.well-known/oauth-authorization-server': json((base) => ({
        resource: `${base}/api`,
        authorization_servers: [base],
        resource_name: `Legacy Notes ${'x'.repeat(150)}`,
        resource_logo_uri: 'javascript:alert(1)',
        scopes_supported: ['notes:read'],
        agent_auth: {
          register_uri: `${base}/agent/auth`,
          claim_uri: `${base}/agent/auth/claim`,
          revocation_uri: `${base}/agent/auth/revoke`,
          events_endpoint: 'https://10.1.2.3/events',
          events_supported: [OLD_REVOKED_EVENT],
          identity_types_supported: ['anonymous', 7],
        },
      })),
    });

    tenant = await startServer({
      '/.well-known/oauth-authorization-server/tenant': json((base) => ({
        issuer: `${base}/tenant/`,
        token_endpoint: `${base}/tenant/token`,
        scopes_supported: ['mcp'],
      })),
      '/.well-known/oauth-protected-resource/mcp': json((base) => ({
        resource: `${base}/mcp`,
        resource_name: 'Tenant MCP',
        authorization_servers: [`${base}/tenant/`],
      })),
      '/.well-known/oauth-authorization-server/impostor': json(() => ({
        issuer: 'https://login.example.com',
      })),
    });
  });

  after(async () => {
    await Promise.all([modern.close(), legacy.close(), tenant.close()]);
  });

  test('discovers an auth.md service from its resource URL', async () => {
    const service = await discoverService(`${modern.base}/api`, DEV);
    assert.deepEqual(service, {
      audience: modern.base,
      resources: [`${modern.base}/api`],
      name: 'Acme API',
      logoUri: `${modern.base}/logo.png`,
      scopesSupported: ['read', 'write'],
      agentAuth: {
        registrationEndpoint: `${modern.base}/agent/register`,
        registerUri: null,
        revocationUri: null,
        eventsEndpoint: `${modern.base}/agent/events`,
        eventsSupported: [REVOKED_EVENT],
        identityTypesSupported: ['identity_assertion'],
      },
      maxAge: 300,
    });
  });

  test('reads a URL without resource metadata as an authorization server issuer', async () => {
    const service = await discoverService(`${legacy.base}/`, DEV);
    assert.deepEqual(service, {
      audience: legacy.base, // as the service lists itself, without the typed slash
      resources: [`${legacy.base}/api`],
      name: `Legacy Notes ${'x'.repeat(87)}`,
      logoUri: null,
      scopesSupported: ['notes:read'],
      agentAuth: {
        registrationEndpoint: null,
        registerUri: `${legacy.base}/agent/auth`,
        revocationUri: `${legacy.base}/agent/auth/revoke`,
        eventsEndpoint: null,
        eventsSupported: [OLD_REVOKED_EVENT],
        identityTypesSupported: [],
      },
      maxAge: undefined,
    });
    assert.equal(service.name?.length, 100);
    assert.deepEqual(legacy.hits, [
      '/.well-known/oauth-protected-resource',
      '/.well-known/oauth-authorization-server',
    ]);
  });

  test('discovers an audience and the resources it governs', async () => {
    const service = await discoverAudience(modern.base, [`${modern.base}/api`], DEV);
    assert.equal(service.audience, modern.base);
    assert.deepEqual(service.resources, [`${modern.base}/api`]);
    assert.equal(service.name, 'Acme API');
    assert.equal(service.logoUri, `${modern.base}/logo.png`);
    assert.deepEqual(service.scopesSupported, ['read', 'write']);
    assert.equal(service.agentAuth?.eventsEndpoint, `${modern.base}/agent/events`);
    assert.equal(service.maxAge, 300);
  });

  test('falls back to the authorization server metadata for an audience without resources', async () => {
    const service = await discoverAudience(modern.base, [], DEV);
    assert.deepEqual(service.resources, []);
    assert.equal(service.name, 'Acme');
    assert.equal(service.logoUri, `${modern.base}/as-logo.png`);
    assert.deepEqual(service.scopesSupported, ['openid']);
  });

  test('names a service that publishes no issuer one way only', async () => {
    assert.equal((await discoverAudience(modern.base, [], DEV)).audience, modern.base);
    await discoveryFails(
      discoverAudience(`${modern.base}/`, [], DEV),
      'issuer_mismatch',
      /publishes no issuer and is named '.*'; use that as the audience/,
    );
    assert.equal((await discoverService(`${modern.base}/`, DEV)).audience, modern.base, 'as typed with a slash');
  });

  test('inserts the well-known suffix before an issuer path and keeps its trailing slash', async () => {
    const service = await discoverAudience(`${tenant.base}/tenant/`, [`${tenant.base}/mcp`], DEV);
    assert.equal(service.audience, `${tenant.base}/tenant/`);
    assert.equal(service.name, 'Tenant MCP');
    assert.deepEqual(service.scopesSupported, ['mcp']);
    assert.equal(service.agentAuth, null);

    const typed = await discoverService(`${tenant.base}/mcp`, DEV);
    assert.equal(typed.audience, `${tenant.base}/tenant/`);
  });

  test('says so when a URL publishes no metadata at all', async () => {
    await discoveryFails(
      discoverService(`${tenant.base}/nothing`, DEV),
      'fetch',
      /'.*\/nothing' publishes neither protected resource nor authorization server metadata/,
      'status',
    );
  });

  test('refuses resource metadata that describes another resource', async () => {
    await discoveryFails(
      discoverService(`${modern.base}/wrong`, DEV),
      'resource_mismatch',
      /describes '.*\/somewhere-else' instead/,
    );
  });

  test('refuses authorization server metadata whose issuer is not the audience', async () => {
    await discoveryFails(
      discoverAudience(`${tenant.base}/tenant`, [], DEV),
      'issuer_mismatch',
      /names '.*\/tenant\/' as its issuer/,
    );
    await discoveryFails(
      discoverService(`${modern.base}/foreign`, DEV),
      'issuer_mismatch',
      /names 'https:\/\/login\.example\.com' as its issuer/,
    );
  });

  test('refuses a resource that does not list the audience', async () => {
    await discoveryFails(
      discoverAudience(modern.base, [`${modern.base}/api`, `${modern.base}/other`], DEV),
      'not_governed',
      /'.*\/other' does not list '.*' among its authorization servers/,
    );
  });

  test('refuses a redirect without following it', async () => {
    await discoveryFails(
      discoverService(`${modern.base}/moved`, DEV),
      'fetch',
      /answered with a redirect \(302\)/,
      'redirect',
    );
    assert.equal(modern.hits.at(-1), '/.well-known/oauth-protected-resource/moved');
  });

  test('refuses a service on a private address before connecting', async () => {
    await discoveryFails(discoverService('https://10.0.0.1/api', DEV), 'fetch', /private address/, 'address');
    await discoveryFails(discoverAudience('https://192.168.1.1', [], DEV), 'fetch', /private address/, 'address');
  });

  test('refuses audiences and resources that are not URLs', async () => {
    await discoveryFails(discoverAudience('acme', [], DEV), 'url', /not an authorization server issuer URL/);
    await discoveryFails(discoverAudience(`${modern.base}?x=1`, [], DEV), 'url', /issuer URL/);
    await discoveryFails(discoverAudience(modern.base, ['not a url'], DEV), 'url', /not a resource URL/);
    await discoveryFails(discoverService('https://exa mple.com', DEV), 'url', /not a valid URL/);
  });

  test('refuses plain http to a service when loopback is not allowed', async () => {
    const before = modern.connections;
    await discoveryFails(discoverService(`${modern.base}/api`, STRICT), 'fetch', /not an https URL/, 'url');
    assert.equal(modern.connections, before);
  });
});

describe('guarded fetch', () => {
  let server: TestServer;
  let stalled: IncomingMessage[] = [];

  before(async () => {
    server = await startServer({
      '/doc': json(() => ({ ok: true }), { 'cache-control': 'public, max-age=120' }),
      '/typed': json(() => ({ ok: true }), { 'content-type': 'application/metadata+json; charset=utf-8' }),
      '/no-store': json(() => ({ ok: true }), { 'cache-control': 'no-store, max-age=60' }),
      '/array': json(() => [1, 2]),
      '/malformed': (_request, response) => {
        response.writeHead(200, { 'content-type': 'application/json' }).end('{"ok": tru');
      },
      '/html': (_request, response) => {
        response.writeHead(200, { 'content-type': 'text/html' }).end('<h1>hello</h1>');
      },
      '/gone': (_request, response) => {
        response.writeHead(410, { 'content-type': 'application/json' }).end('{}');
      },
      '/redirect': (_request, response) => {
        response.writeHead(301, { location: 'http://10.0.0.1/' }).end();
      },
      '/big': json(() => ({ padding: 'x'.repeat(10_000) })),
      '/big-chunked': (_request, response) => {
        response.writeHead(200, { 'content-type': 'application/json' });
        response.write(`{"padding":"${'x'.repeat(800)}`);
        response.write('x'.repeat(800));
        // The rest never comes: the client must stop reading on its own.
      },
      '/slow': (request) => {
        stalled.push(request);
      },
      '/echo': (request, response) => {
        const chunks: Buffer[] = [];
        request.on('data', (chunk: Buffer) => chunks.push(chunk));
        request.on('end', () => {
          response.writeHead(202, { 'content-type': 'text/plain', 'x-seen-type': request.headers['content-type'] });
          response.end(`${request.method} ${Buffer.concat(chunks).toString()}`);
        });
      },
    });
  });

  after(async () => {
    stalled = [];
    await server.close();
  });

  test('fetches a JSON document and its cache lifetime', async () => {
    assert.deepEqual(await fetchJson(`${server.base}/doc`, DEV), { json: { ok: true }, maxAge: 120 });
    assert.deepEqual(await fetchJson(`${server.base}/typed`, DEV), { json: { ok: true }, maxAge: undefined });
    assert.deepEqual(await fetchJson(`${server.base}/no-store`, DEV), { json: { ok: true }, maxAge: undefined });
  });

  test('posts a body and returns whatever status the service answers', async () => {
    const response = await guardedFetch(
      `${server.base}/echo`,
      { method: 'POST', headers: { 'content-type': 'application/secevent+jwt' }, body: 'a.b.c' },
      DEV,
    );
    assert.equal(response.status, 202);
    assert.equal(response.headers.get('x-seen-type'), 'application/secevent+jwt');
    assert.equal(response.body.toString(), 'POST a.b.c');

    const gone = await guardedFetch(`${server.base}/gone`, {}, DEV);
    assert.equal(gone.status, 410);
  });

  test('requires 200 and a JSON object for a document', async () => {
    await rejectsWith(fetchJson(`${server.base}/gone`, DEV), 'status', /\/gone answered 410$/);
    await rejectsWith(fetchJson(`${server.base}/html`, DEV), 'not_json', /did not answer with JSON/);
    await rejectsWith(fetchJson(`${server.base}/array`, DEV), 'not_json', /JSON object/);
    await rejectsWith(fetchJson(`${server.base}/malformed`, DEV), 'not_json', /malformed JSON/);
  });

  test('refuses redirects without following them', async () => {
    await rejectsWith(guardedFetch(`${server.base}/redirect`, {}, DEV), 'redirect', /redirect \(301\)/);
  });

  test('gives up on a service that does not answer in time', async () => {
    const started = Date.now();
    await rejectsWith(
      guardedFetch(`${server.base}/slow`, {}, { allowLoopback: true, timeoutMs: 200 }),
      'timeout',
      /did not answer within 200 ms/,
    );
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 190 && elapsed < 2_000, `took ${elapsed} ms`);
    assert.equal(stalled.length, 1);
  });

  test('refuses a body larger than the cap, declared or streamed', async () => {
    const guard = { allowLoopback: true, maxBytes: 1_024 };
    await rejectsWith(guardedFetch(`${server.base}/big`, {}, guard), 'too_large', /larger than 1024 bytes/);
    await rejectsWith(guardedFetch(`${server.base}/big-chunked`, {}, guard), 'too_large');
  });

  test('refuses plain http unless loopback is allowed', async () => {
    const before = server.connections;
    await rejectsWith(guardedFetch(`${server.base}/doc`, {}, STRICT), 'url', /not an https URL/);
    await rejectsWith(guardedFetch(`http://localhost:${server.port}/doc`, {}, STRICT), 'url');
    await rejectsWith(guardedFetch('ftp://127.0.0.1/doc', {}, DEV), 'url');
    await rejectsWith(guardedFetch(`http://user:pw@127.0.0.1:${server.port}/doc`, {}, DEV), 'url');
    assert.equal(server.connections, before);
  });

  test('allows plain http only to loopback, even in development', async () => {
    // A public literal: refused by the scheme rule without any packet sent.
    await rejectsWith(guardedFetch('http://93.184.215.14/', {}, DEV), 'url', /not an https URL/);
  });

  test('refuses loopback addresses unless allowed', async () => {
    const before = server.connections;
    await rejectsWith(guardedFetch('https://127.0.0.1:1/', {}, STRICT), 'address', /127\.0\.0\.1 is a loopback address/);
    await rejectsWith(guardedFetch('https://[::1]:1/', {}, STRICT), 'address', /loopback/);
    await rejectsWith(guardedFetch('https://[::ffff:127.0.0.1]:1/', {}, STRICT), 'address', /loopback/);
    await rejectsWith(
      guardedFetch(`https://localhost:${server.port}/doc`, {}, STRICT),
      'address',
      /localhost resolves to a loopback address \(127\.0\.0\.1\)/,
    );
    assert.equal(server.connections, before);
  });

  test('reaches a loopback host name when allowed', async () => {
    const { json } = await fetchJson(`http://localhost:${server.port}/doc`, DEV);
    assert.deepEqual(json, { ok: true });
  });

  test('refuses special-use address literals before connecting, even in development', async () => {
    const cases: Array<[string, RegExp]> = [
      ['https://10.0.0.1/', /^10\.0\.0\.1 is a private address$/],
      ['https://192.168.1.1/', /private address/],
      ['https://172.16.5.4/', /private address/],
      ['https://169.254.169.254/latest/meta-data/', /link-local address/],
      ['https://[::ffff:10.0.0.1]/', /private address/],
      ['https://[::ffff:a9fe:a9fe]/', /link-local address/],
      ['https://[fc00::1]/', /private address/],
      ['https://[fe80::1]/', /link-local address/],
      ['https://0.0.0.0/', /unspecified address/],
      ['https://[::]/', /unspecified address/],
      ['https://100.64.0.1/', /carrier-grade NAT address/],
      ['https://224.0.0.1/', /multicast address/],
      ['https://255.255.255.255/', /broadcast address/],
      ['https://192.0.2.1/', /reserved address/],
      ['https://240.0.0.1/', /reserved address/],
      ['https://[2001:db8::1]/', /reserved address/],
      ['https://[64:ff9b::a00:1]/', /special-use address/],
      ['https://[::a00:1]/', /reserved address/],
      ['https://0x7f.1/', /127\.0\.0\.1 is a loopback address/],
    ];
    for (const [url, message] of cases) {
      const guard = message.source.includes('loopback') ? STRICT : DEV;
      await rejectsWith(guardedFetch(url, {}, guard), 'address', message);
    }
  });
});
