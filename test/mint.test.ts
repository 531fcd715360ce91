import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  calculateJwkThumbprint,
  createRemoteJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  exportJWK,
  generateKeyPair,
  jwtVerify,
  SignJWT,
  type CryptoKey,
} from 'jose';
import { registerAgent } from '../src/agents/registry.ts';
import { Browser, formAction, type Page } from './helpers/browser.ts';
import { listen, startDeputy, tempDir, upstreamEnv, type RunningDeputy } from './helpers/deputy.ts';
import {
  addAgent,
  basic,
  connectByCode,
  connectByDevice,
  ID_JAG,
  ID_TOKEN,
  mint,
  post,
  REFRESH_TOKEN,
  type TestAgent,
} from './helpers/agent.ts';
import {
  startAuthMdService,
  startResourceAuthorizationServer,
  type AuthMdService,
  type ResourceAuthorizationServer,
} from './helpers/services.ts';
import { startUpstream, type TestUpstream } from './helpers/upstream.ts';

const TTL = 240;

/** Opens a consent link as the person and answers it. */
async function approve(browser: Browser, consentUri: string, mode = 'once', extra: Record<string, string> = {}): Promise<Page> {
  const page = await browser.go(consentUri);
  assert.equal(page.status, 200, page.body.slice(0, 500));
  const csrf = /name="csrf" value="([^"]+)"/.exec(page.body)?.[1] as string;
  // As a browser would: the scopes the page ticked are sent.
  const scope = [...page.body.matchAll(/name="scope" value="([^"]+)" checked/g)].map((m) => m[1] as string);
  return browser.submit(consentUri, { csrf, decision: 'approve', mode, ...(scope.length > 0 ? { scope } : {}), ...extra });
}

describe('the mint', () => {
  const dir = tempDir();
  let upstream: TestUpstream;
  let deputy: RunningDeputy;
  let service: AuthMdService;
  let ras: ResourceAuthorizationServer;
  let agent: TestAgent;
  let other: TestAgent;
  const ada = new Browser();
  const bob = new Browser();
  let tokens: { id_token: string; refresh_token: string };

  async function signIn(browser: Browser, sub: string) {
    const form = await browser.go(`${deputy.url}/login`);
    await browser.submit(formAction(form), { sub });
  }

  before(async () => {
    const listening = await listen();
    upstream = await startUpstream(`${listening.url}/login/callback`);
    upstream.accounts.set('ada', {
      sub: 'ada',
      email: 'ada@example.com',
      email_verified: true,
      name: 'Ada Lovelace',
      phone_number: '+1 555 0100',
      phone_number_verified: true,
    });
    upstream.accounts.set('bob', { sub: 'bob', email: 'bob@example.com', email_verified: true, name: 'Bob' });
    deputy = await startDeputy({
      dbPath: `${dir.path}/deputy.db`,
      env: { ...upstreamEnv(upstream), DEPUTY_ALLOW_LOOPBACK_SERVICES: 'true', DEPUTY_ID_JAG_TTL: String(TTL) },
      listening,
    });
    service = await startAuthMdService({ trustedIssuers: [deputy.url], name: 'Acme Files' });
    agent = await addAgent(deputy, 'Research Bot');
    other = await addAgent(deputy, 'Other Bot');
    ras = await startResourceAuthorizationServer({
      trustedIssuers: [deputy.url],
      clients: { 'research-bot-at-ras': 'ras-secret' },
    });
    await signIn(ada, 'ada');
    await signIn(bob, 'bob');
    tokens = await connectByDevice(deputy, agent, ada);
  });

  after(async () => {
    await deputy.stop();
    await service.close();
    await ras.close();
    await upstream.close();
    dir.remove();
  });

  test('asks for consent, and mints after the person approves the consent_uri', async () => {
    const first = await mint(deputy, agent, {
      audience: service.issuer,
      resource: service.resource,
      scope: 'read',
      subject_token: tokens.id_token,
      subject_token_type: ID_TOKEN,
    });
    assert.equal(first.status, 400);
    assert.equal(first.body.error, 'consent_required');

    const page = await ada.go(first.body.consent_uri as string);
    assert.match(page.body, /Research Bot/);
    assert.match(page.body, /Acme Files/, 'the service name as the service publishes it');
    const done = await approve(ada, first.body.consent_uri as string, 'always');
    assert.equal(done.status, 200);
    assert.match(done.body, /Approved/);

    const second = await mint(deputy, agent, {
      audience: service.issuer,
      resource: service.resource,
      scope: 'read',
      subject_token: tokens.id_token,
      subject_token_type: ID_TOKEN,
    });
    assert.equal(second.status, 200, JSON.stringify(second.body));
    assert.equal(second.headers.get('cache-control'), 'no-store');
    assert.equal(second.headers.get('pragma'), 'no-cache');
    assert.deepEqual(Object.keys(second.body).sort(), ['access_token', 'expires_in', 'issued_token_type', 'scope', 'token_type']);
    assert.equal(second.body.issued_token_type, ID_JAG);
    assert.equal(second.body.token_type, 'N_A');
    assert.equal(second.body.expires_in, TTL);
    assert.equal(second.body.scope, 'read');
  });

  test('signs an ID-JAG that verifies against the published JWKS, with every claim', async () => {
    const answer = await mint(deputy, agent, {
      audience: service.issuer,
      subject_token: tokens.refresh_token,
      subject_token_type: REFRESH_TOKEN,
    });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    const jwt = answer.body.access_token as string;

    const jwks = createRemoteJWKSet(new URL(`${deputy.url}/.well-known/jwks.json`));
    const { payload, protectedHeader } = await jwtVerify(jwt, jwks, {
      issuer: deputy.url,
      audience: service.issuer,
      typ: 'oauth-id-jag+jwt',
      algorithms: ['ES256'],
    });
    const published = (await (await fetch(`${deputy.url}/.well-known/jwks.json`)).json()) as { keys: { kid: string }[] };
    assert.equal(protectedHeader.alg, 'ES256');
    assert.equal(protectedHeader.kid, published.keys[0]?.kid);
    assert.equal(protectedHeader.kid, await calculateJwkThumbprint(published.keys[0] as never));

    const user = await deputy.deputy.store.findUser(payload.sub as string);
    assert.ok(user);
    assert.equal(payload.exp! - payload.iat!, TTL);
    assert.match(payload.jti as string, /^[0-9a-f-]{36}$/);
    assert.deepEqual(
      { ...payload, iat: 0, exp: 0, jti: '', auth_time: 0 },
      {
        iss: deputy.url,
        sub: user.id,
        aud: service.issuer,
        client_id: `${deputy.url}/agent-auth.json`,
        jti: '',
        iat: 0,
        exp: 0,
        resource: service.resource,
        scope: 'read',
        auth_time: 0,
        amr: ['pwd', 'otp'],
        acr: 'urn:example:loa:2',
        email: 'ada@example.com',
        email_verified: true,
        phone_number: '+1 555 0100',
        phone_number_verified: true,
        name: 'Ada Lovelace',
        agent_platform: 'Research Bot',
      },
    );
    assert.equal(payload.auth_time, user.authTime);
  });

  test('an auth.md service accepts the ID-JAG once and refuses it replayed', async () => {
    const answer = await mint(deputy, agent, {
      audience: service.issuer,
      subject_token: tokens.id_token,
      subject_token_type: ID_TOKEN,
    });
    const body = {
      type: 'identity_assertion',
      assertion_type: ID_JAG,
      assertion: answer.body.access_token,
      requested_credential_type: 'access_token',
    };
    const register = (await fetch(`${service.url}/agent/auth`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })) as Response;
    const registered = (await register.json()) as Record<string, unknown>;
    assert.equal(register.status, 200, JSON.stringify(registered));
    const me = await fetch(`${service.url}/api/me`, { headers: { authorization: `Bearer ${registered.credential}` } });
    assert.equal(me.status, 200);
    assert.equal(((await me.json()) as { email: string }).email, 'ada@example.com');

    const replay = await fetch(`${service.url}/agent/auth`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    assert.equal(replay.status, 400);
    assert.equal(((await replay.json()) as { error: string }).error, 'replay_detected');
  });

  test('a resource authorization server accepts it only from the client named in client_id', async () => {
    const first = await mint(deputy, agent, {
      audience: ras.issuer,
      resource: ras.resource,
      subject_token: tokens.id_token,
      subject_token_type: ID_TOKEN,
    });
    assert.equal(first.body.error, 'consent_required');
    await approve(ada, first.body.consent_uri as string, 'always');
    await deputy.deputy.delegations.mapServiceClientId(agent.clientId, ras.issuer, 'research-bot-at-ras');

    const assertion = async () =>
      (
        await mint(deputy, agent, {
          audience: ras.issuer,
          resource: ras.resource,
          subject_token: tokens.id_token,
          subject_token_type: ID_TOKEN,
        })
      ).body.access_token as string;

    const grant = (jwt: string, auth: string) =>
      post(`${ras.url}/token`, { grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer', assertion: jwt }, { authorization: auth });

    const wrongClient = await grant(await assertion(), `Basic ${Buffer.from('someone-else:x').toString('base64')}`);
    assert.equal(wrongClient.status, 401);
    const accepted = await grant(await assertion(), `Basic ${Buffer.from('research-bot-at-ras:ras-secret').toString('base64')}`);
    assert.equal(accepted.status, 200, JSON.stringify(accepted.body));
    assert.equal(accepted.body.token_type, 'Bearer');
    assert.equal(ras.accepted.at(-1)?.claims.client_id, 'research-bot-at-ras');
  });

  test('a once delegation under 20 parallel mints: exactly one succeeds', async () => {
    const onceService = await startAuthMdService({ trustedIssuers: [deputy.url], name: 'Once Service' });
    try {
      const first = await mint(deputy, agent, {
        audience: onceService.issuer,
        subject_token: tokens.id_token,
        subject_token_type: ID_TOKEN,
      });
      await approve(ada, first.body.consent_uri as string, 'once');
      const answers = await Promise.all(
        Array.from({ length: 20 }, () =>
          mint(deputy, agent, {
            audience: onceService.issuer,
            subject_token: tokens.id_token,
            subject_token_type: ID_TOKEN,
          }),
        ),
      );
      const statuses = answers.map((a) => a.status).sort();
      assert.equal(answers.filter((a) => a.status === 200).length, 1, JSON.stringify(statuses));
      assert.ok(answers.filter((a) => a.status !== 200).every((a) => a.status === 400 && a.body.error === 'consent_required'));
    } finally {
      await onceService.close();
    }
  });

  test('a service whose metadata holds a lone surrogate or U+0000 still gets a consent page', async () => {
    const odd = await startAuthMdService({ trustedIssuers: [deputy.url], name: 'Odd \ud800 Serv\u0000ice' });
    try {
      const asked = await mint(deputy, agent, { audience: odd.issuer, subject_token: tokens.id_token, subject_token_type: ID_TOKEN });
      assert.equal(asked.body.error, 'consent_required');
      const page = await ada.go(asked.body.consent_uri as string);
      assert.equal(page.status, 200);
      assert.match(page.body, /<strong>Odd \uFFFD Serv.?ice<\/strong>/);
    } finally {
      await odd.close();
    }
  });

  test('an agent may have at most 20 consent requests waiting for one person', async () => {
    const asker = await addAgent(deputy, 'Asking Bot');
    const asked = await connectByDevice(deputy, asker, ada);
    const ask = (i: number) =>
      mint(deputy, asker, { audience: `https://service-${i}.example`, subject_token: asked.id_token, subject_token_type: ID_TOKEN });
    for (let i = 0; i < 20; i += 1) assert.equal((await ask(i)).body.error, 'consent_required');
    // The same request again gets its link back; a new one waits for answers.
    assert.equal((await ask(0)).body.error, 'consent_required');
    const refused = await ask(20);
    assert.equal(refused.status, 400);
    assert.equal(refused.body.error, 'invalid_request');
    assert.match(refused.body.error_description as string, /already has 20 consent requests waiting/);
  });

  test('refuses the consent link to anyone but the person it is for', async () => {
    const first = await mint(deputy, agent, {
      audience: `${service.issuer}/elsewhere`,
      subject_token: tokens.id_token,
      subject_token_type: ID_TOKEN,
    });
    assert.equal(first.body.error, 'consent_required');
    const page = await bob.go(first.body.consent_uri as string);
    assert.equal(page.status, 403);
    assert.match(page.body, /for someone else/);

    const anonymous = await new Browser().request(first.body.consent_uri as string);
    assert.equal(anonymous.status, 302);
    assert.match(anonymous.headers.get('location') as string, /^\/login\?return_to=%2Fconsent%2Fcns_/);
  });

  test('stops minting after the person revokes the delegation', async () => {
    const revokedService = await startAuthMdService({ trustedIssuers: [deputy.url], name: 'Revoked Service' });
    try {
      const params = {
        audience: revokedService.issuer,
        resource: revokedService.resource,
        subject_token: tokens.id_token,
        subject_token_type: ID_TOKEN,
      };
      await approve(ada, (await mint(deputy, agent, params)).body.consent_uri as string, 'always');
      assert.equal((await mint(deputy, agent, params)).status, 200);

      const home = await ada.go(`${deputy.url}/`);
      const card = home.body.split('<li class="card delegation').find((c) => c.includes('Revoked Service'));
      const delegationId = /\/delegations\/(dlg_[A-Za-z0-9_-]+)\/revoke/.exec(card ?? '')?.[1];
      assert.ok(delegationId, 'a revoke button for the delegation');
      const csrf = /name="csrf" value="([^"]+)"/.exec(home.body)?.[1] as string;
      const after = await ada.submit(`${deputy.url}/delegations/${delegationId}/revoke`, { csrf });
      assert.equal(after.status, 200);

      const refused = await mint(deputy, agent, params);
      assert.equal(refused.status, 400);
      assert.equal(refused.body.error, 'consent_required');
    } finally {
      await revokedService.close();
    }
  });

  test('keeps one delegation per service: a second approval is refused, so one revoke stops the minting', async () => {
    const twice = await startAuthMdService({ trustedIssuers: [deputy.url], name: 'Twice Service' });
    try {
      const params = { audience: twice.issuer, subject_token: tokens.id_token, subject_token_type: ID_TOKEN };
      const first = await mint(deputy, agent, { ...params, scope: 'read' });
      const retried = await mint(deputy, agent, { ...params, scope: 'read' });
      const second = await mint(deputy, agent, { ...params, scope: 'write' });
      assert.equal(first.body.error, 'consent_required');
      assert.equal(retried.body.consent_uri, first.body.consent_uri, 'a retry gets the same link');
      assert.ok((retried.body.expires_in as number) <= (first.body.expires_in as number));
      assert.equal(second.body.error, 'consent_required');
      assert.notEqual(second.body.consent_uri, first.body.consent_uri, 'another request gets another');

      assert.equal((await approve(ada, first.body.consent_uri as string, 'always')).status, 200);
      const refused = await approve(ada, second.body.consent_uri as string, 'always');
      assert.equal(refused.status, 409);
      assert.match(refused.body, /Already allowed/);

      const home = await ada.go(`${deputy.url}/`);
      const cards = home.body.split('<li class="card delegation').filter((c) => c.includes('Twice Service'));
      assert.equal(cards.length, 1, 'one delegation for the service');
      const delegationId = /\/delegations\/(dlg_[A-Za-z0-9_-]+)\/revoke/.exec(cards[0] ?? '')?.[1];
      const csrf = /name="csrf" value="([^"]+)"/.exec(home.body)?.[1] as string;
      await ada.submit(`${deputy.url}/delegations/${delegationId}/revoke`, { csrf });

      const after = await mint(deputy, agent, { ...params, scope: 'read' });
      assert.equal(after.status, 400);
      assert.equal(after.body.error, 'consent_required');
    } finally {
      await twice.close();
    }
  });

  test('a refused consent form links back to the request, which stays open', async () => {
    const dated = await startAuthMdService({ trustedIssuers: [deputy.url], name: 'Dated Service' });
    try {
      const asked = await mint(deputy, agent, { audience: dated.issuer, subject_token: tokens.id_token, subject_token_type: ID_TOKEN });
      const uri = asked.body.consent_uri as string;
      const refused = await approve(ada, uri, 'until'); // no date given
      assert.equal(refused.status, 400);
      assert.match(refused.body, /Choose a date/);
      assert.match(refused.body, new RegExp(`<a href="${new URL(uri).pathname}">Back to the request</a>`));
      assert.equal((await ada.go(uri)).status, 200, 'still open');
    } finally {
      await dated.close();
    }
  });

  test('answers access_denied once the person denies, while the denial stands', async () => {
    const denied = await startAuthMdService({ trustedIssuers: [deputy.url], name: 'Denied Service' });
    try {
      const params = { audience: denied.issuer, subject_token: tokens.id_token, subject_token_type: ID_TOKEN };
      const asked = await mint(deputy, agent, params);
      assert.equal(asked.body.error, 'consent_required');
      const page = await ada.go(asked.body.consent_uri as string);
      const csrf = /name="csrf" value="([^"]+)"/.exec(page.body)?.[1] as string;
      const done = await ada.submit(asked.body.consent_uri as string, { csrf, decision: 'deny' });
      assert.equal(done.status, 200);
      assert.match(done.body, /Denied/);

      const refused = await mint(deputy, agent, params);
      assert.equal(refused.status, 400);
      assert.equal(refused.body.error, 'access_denied');
      assert.equal(refused.body.consent_uri, undefined);
    } finally {
      await denied.close();
    }
  });

  test('refuses to approve a consent request for an agent disconnected since it asked', async () => {
    const gone = await addAgent(deputy, 'Gone Bot');
    const goneTokens = await connectByDevice(deputy, gone, ada);
    const asked = await mint(deputy, gone, { audience: service.issuer, subject_token: goneTokens.id_token, subject_token_type: ID_TOKEN });
    assert.equal(asked.body.error, 'consent_required');

    const home = await ada.go(`${deputy.url}/`);
    const csrf = /name="csrf" value="([^"]+)"/.exec(home.body)?.[1] as string;
    await ada.submit(`${deputy.url}/agents/${gone.clientId}/disconnect`, { csrf });

    const page = await ada.go(asked.body.consent_uri as string);
    assert.equal(page.status, 400);
    assert.match(page.body, /This agent is not connected/);
    const approved = await ada.submit(asked.body.consent_uri as string, { csrf, decision: 'approve', mode: 'always' });
    assert.equal(approved.status, 400);
    const after = await ada.go(`${deputy.url}/`);
    assert.doesNotMatch(after.body.split('id="delegations-heading"')[1] ?? '', /Gone Bot[\s\S]*status-active/);
    const userId = decodeJwt(goneTokens.id_token).sub as string;
    assert.equal(await deputy.deputy.delegations.activeDelegation(userId, gone.clientId, service.issuer), undefined);

    // An approval already past the page's check when the disconnect landed is refused where it
    // writes.
    const consentId = /\/consent\/(cns_[A-Za-z0-9_-]+)/.exec(asked.body.consent_uri as string)?.[1] as string;
    const late = await deputy.deputy.delegations.answerConsentRequest(userId, consentId, 'approved', {
      userId,
      agentClientId: gone.clientId,
      audience: service.issuer,
      resources: [],
      scope: '',
      mode: 'always',
      expiresAt: null,
      serviceName: null,
      serviceLogoUri: null,
      serviceAgentAuth: null,
    });
    assert.equal(late, 'not-connected');
    assert.equal(await deputy.deputy.delegations.activeDelegation(userId, gone.clientId, service.issuer), undefined);
  });

  test('grants from a consent request only the scopes the service publishes', async () => {
    const scoped = await startAuthMdService({ trustedIssuers: [deputy.url], name: 'Scoped Service', scopes: ['read', 'write'] });
    try {
      const params = {
        audience: scoped.issuer,
        scope: 'read admin',
        subject_token: tokens.id_token,
        subject_token_type: ID_TOKEN,
      };
      const asked = await mint(deputy, agent, params);
      assert.equal(asked.body.error, 'consent_required');
      const page = await ada.go(asked.body.consent_uri as string);
      assert.match(page.body, /name="scope" value="read" checked>/);
      assert.match(page.body, /name="scope" value="write">/);
      assert.doesNotMatch(page.body, /value="admin"/);
      assert.match(page.body, /<dt>Not granted<\/dt><dd>admin \(asked for, but not published by the service\)<\/dd>/);
      assert.equal((await approve(ada, asked.body.consent_uri as string, 'always')).status, 200);

      const minted = await mint(deputy, agent, params);
      assert.equal(minted.status, 200, JSON.stringify(minted.body));
      assert.equal(minted.body.scope, 'read');
      assert.equal(decodeJwt(minted.body.access_token as string).scope, 'read');

      const admin = await mint(deputy, agent, { ...params, scope: 'admin' });
      assert.equal(admin.status, 400);
      assert.equal(admin.body.error, 'invalid_scope');
    } finally {
      await scoped.close();
    }
  });

  test('stops minting after the person disconnects the agent, whatever the subject token', async () => {
    const browser = new Browser();
    await signIn(browser, 'bob');
    const bobTokens = await connectByDevice(deputy, other, browser);
    const params = { audience: service.issuer, subject_token_type: ID_TOKEN, subject_token: bobTokens.id_token };
    await approve(browser, (await mint(deputy, other, params)).body.consent_uri as string, 'always');
    assert.equal((await mint(deputy, other, params)).status, 200);

    const home = await browser.go(`${deputy.url}/`);
    const csrf = /name="csrf" value="([^"]+)"/.exec(home.body)?.[1] as string;
    const out = await browser.submit(`${deputy.url}/agents/${other.clientId}/disconnect`, { csrf });
    assert.equal(out.status, 200);
    const agentsSection = out.body.split('id="delegations-heading"')[0] as string;
    assert.doesNotMatch(agentsSection, /Other Bot/);
    assert.match(out.body, /status-revoked/);

    const byIdToken = await mint(deputy, other, params);
    assert.equal(byIdToken.status, 400);
    assert.equal(byIdToken.body.error, 'invalid_grant');
    const byRefresh = await mint(deputy, other, { ...params, subject_token: bobTokens.refresh_token, subject_token_type: REFRESH_TOKEN });
    assert.equal(byRefresh.status, 400);
    assert.equal(byRefresh.body.error, 'invalid_grant');

    // Connecting again does not bring the old ID token back. Times are whole seconds: the new
    // connection must be at least one second younger than the old token for the rule to tell.
    await sleep(1000 - (Date.now() % 1000) + 50);
    await connectByDevice(deputy, other, browser);
    const stale = await mint(deputy, other, params);
    assert.equal(stale.status, 400);
    assert.equal(stale.body.error, 'invalid_grant');
  });

  test('connects by authorization code and mints with that ID token', async () => {
    const codeTokens = await connectByCode(deputy, agent, ada);
    const answer = await mint(deputy, agent, {
      audience: service.issuer,
      subject_token: codeTokens.id_token as string,
      subject_token_type: ID_TOKEN,
    });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
  });

  describe('refuses bad requests with the exact status and error', () => {
    const cases: [string, () => Promise<{ status: number; body: Record<string, unknown>; headers: Headers }>, number, string][] = [
      ['missing audience', () => mint(deputy, agent, { subject_token: tokens.id_token, subject_token_type: ID_TOKEN }), 400, 'invalid_request'],
      ['two audiences', () => mint(deputy, agent, { audience: [service.issuer, ras.issuer], subject_token: tokens.id_token, subject_token_type: ID_TOKEN }), 400, 'invalid_target'],
      ...['HTTP://127.0.0.1', 'http://127.1', 'http://127.0.0.1:080', 'http://127.0.0.1/.'].map(
        (spelling) =>
          [
            `an audience not in normal form (${spelling})`,
            () => mint(deputy, agent, { audience: spelling, subject_token: tokens.id_token, subject_token_type: ID_TOKEN }),
            400,
            'invalid_target',
          ] as (typeof cases)[number],
      ),
      ['an Authorization header that is not Basic', () => mint(deputy, agent, { audience: service.issuer, subject_token: tokens.id_token, subject_token_type: ID_TOKEN }, { authorization: 'Bearer x' }), 401, 'invalid_client'],
      ['eleven resources', () => mint(deputy, agent, { audience: service.issuer, resource: Array.from({ length: 11 }, (_, i) => `${service.resource}/${i}`), subject_token: tokens.id_token, subject_token_type: ID_TOKEN }), 400, 'invalid_target'],
      ['an audience longer than 2048 characters', () => mint(deputy, agent, { audience: `https://service.example/${'a'.repeat(2048)}`, subject_token: tokens.id_token, subject_token_type: ID_TOKEN }), 400, 'invalid_target'],
      ['a resource longer than 2048 characters', () => mint(deputy, agent, { audience: service.issuer, resource: `${service.resource}/${'a'.repeat(2048)}`, subject_token: tokens.id_token, subject_token_type: ID_TOKEN }), 400, 'invalid_target'],
      ['a scope longer than 1024 characters', () => mint(deputy, agent, { audience: service.issuer, scope: 'read '.repeat(205), subject_token: tokens.id_token, subject_token_type: ID_TOKEN }), 400, 'invalid_scope'],
      ['an audience that is not an https URL', () => mint(deputy, agent, { audience: 'urn:example:service', subject_token: tokens.id_token, subject_token_type: ID_TOKEN }), 400, 'invalid_target'],
      ['a resource the delegation does not cover', () => mint(deputy, agent, { audience: service.issuer, resource: 'https://other.example/api', subject_token: tokens.id_token, subject_token_type: ID_TOKEN }), 400, 'invalid_target'],
      ['a scope the delegation does not cover', () => mint(deputy, agent, { audience: service.issuer, scope: 'admin', subject_token: tokens.id_token, subject_token_type: ID_TOKEN }), 400, 'invalid_scope'],
      ['wrong requested_token_type', () => mint(deputy, agent, { requested_token_type: 'urn:ietf:params:oauth:token-type:access_token', audience: service.issuer, subject_token: tokens.id_token, subject_token_type: ID_TOKEN }), 400, 'invalid_request'],
      ['unsupported subject_token_type', () => mint(deputy, agent, { audience: service.issuer, subject_token: tokens.id_token, subject_token_type: 'urn:ietf:params:oauth:token-type:saml2' }), 400, 'invalid_request'],
      ['missing subject_token', () => mint(deputy, agent, { audience: service.issuer, subject_token_type: ID_TOKEN }), 400, 'invalid_request'],
      ['an actor_token', () => mint(deputy, agent, { audience: service.issuer, subject_token: tokens.id_token, subject_token_type: ID_TOKEN, actor_token: 'x', actor_token_type: ID_TOKEN }), 400, 'invalid_request'],
      ["another agent's ID token", async () => {
        const theirs = await connectByDevice(deputy, other, ada);
        return mint(deputy, agent, { audience: service.issuer, subject_token: theirs.id_token, subject_token_type: ID_TOKEN });
      }, 400, 'invalid_grant'],
      ["another agent's refresh token", async () => {
        const theirs = await connectByDevice(deputy, other, ada);
        return mint(deputy, agent, { audience: service.issuer, subject_token: theirs.refresh_token, subject_token_type: REFRESH_TOKEN });
      }, 400, 'invalid_grant'],
      ['an expired ID token', async () => {
        const key = deputy.deputy.keys.active();
        const now = Math.floor(Date.now() / 1000);
        const expired = await new SignJWT({ sub: tokens.id_token ? (JSON.parse(Buffer.from(tokens.id_token.split('.')[1] as string, 'base64url').toString()).sub as string) : '' })
          .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT' })
          .setIssuer(deputy.url).setAudience(agent.clientId).setIssuedAt(now - 7200).setExpirationTime(now - 3600)
          .sign(key.key);
        return mint(deputy, agent, { audience: service.issuer, subject_token: expired, subject_token_type: ID_TOKEN });
      }, 400, 'invalid_grant'],
      ['an ID-JAG as the subject token', async () => {
        const jag = (await mint(deputy, agent, { audience: service.issuer, subject_token: tokens.id_token, subject_token_type: ID_TOKEN })).body.access_token as string;
        return mint(deputy, agent, { audience: service.issuer, subject_token: jag, subject_token_type: ID_TOKEN });
      }, 400, 'invalid_grant'],
      ['a refresh token that was rotated away', async () => {
        const fresh = await connectByDevice(deputy, agent, ada);
        const rotated = await post(`${deputy.url}/token`, { grant_type: 'refresh_token', refresh_token: fresh.refresh_token }, { authorization: basic(agent) });
        assert.equal(rotated.status, 200);
        return mint(deputy, agent, { audience: service.issuer, subject_token: fresh.refresh_token, subject_token_type: REFRESH_TOKEN });
      }, 400, 'invalid_grant'],
      ['an ID token whose grant ended when a rotated refresh token was reused', async () => {
        // Bob's only connection of this agent: its grant ends, so the agent no longer acts for him.
        const fresh = await connectByDevice(deputy, agent, bob);
        const rotated = await post(`${deputy.url}/token`, { grant_type: 'refresh_token', refresh_token: fresh.refresh_token }, { authorization: basic(agent) });
        assert.equal(rotated.status, 200);
        const reuse = await post(`${deputy.url}/token`, { grant_type: 'refresh_token', refresh_token: fresh.refresh_token }, { authorization: basic(agent) });
        assert.equal(reuse.body.error, 'invalid_grant');
        return mint(deputy, agent, { audience: service.issuer, subject_token: fresh.id_token, subject_token_type: ID_TOKEN });
      }, 400, 'invalid_grant'],
      ['a garbage refresh token', () => mint(deputy, agent, { audience: service.issuer, subject_token: 'not-a-token', subject_token_type: REFRESH_TOKEN }), 400, 'invalid_grant'],
      ['a wrong secret with Basic', () => mint(deputy, agent, { audience: service.issuer, subject_token: tokens.id_token, subject_token_type: ID_TOKEN }, { authorization: basic({ ...agent, clientSecret: 'wrong' }) }), 401, 'invalid_client'],
      ['a wrong secret in the form', () => mint(deputy, agent, { audience: service.issuer, subject_token: tokens.id_token, subject_token_type: ID_TOKEN, client_id: agent.clientId, client_secret: 'wrong' }, {}), 401, 'invalid_client'],
      ['two authentication methods', () => mint(deputy, agent, { audience: service.issuer, subject_token: tokens.id_token, subject_token_type: ID_TOKEN, client_id: agent.clientId, client_secret: agent.clientSecret }, { authorization: basic(agent) }), 400, 'invalid_request'],
      ['a public client', async () => {
        const { agent: publicAgent } = await registerAgent(deputy.deputy.store, { name: 'Public', redirectUris: [], public: true });
        return mint(deputy, agent, { audience: service.issuer, subject_token: tokens.id_token, subject_token_type: ID_TOKEN, client_id: publicAgent.clientId }, {});
      }, 400, 'unauthorized_client'],
      ['no client authentication', () => mint(deputy, agent, { audience: service.issuer, subject_token: tokens.id_token, subject_token_type: ID_TOKEN }, {}), 401, 'invalid_client'],
    ];

    for (const [name, run, status, error] of cases) {
      test(name, async () => {
        const answer = await run();
        assert.equal(answer.status, status, JSON.stringify(answer.body));
        assert.equal(answer.body.error, error, JSON.stringify(answer.body));
        assert.equal(typeof answer.body.error_description, 'string');
        assert.equal(answer.body.access_token, undefined);
      });
    }

    test('a wrong secret with Basic gets a Basic challenge', async () => {
      const answer = await mint(deputy, agent, { audience: service.issuer, subject_token: tokens.id_token, subject_token_type: ID_TOKEN }, { authorization: basic({ ...agent, clientSecret: 'wrong' }) });
      assert.match(answer.headers.get('www-authenticate') ?? '', /^Basic realm=/);
      const posted = await mint(deputy, agent, { audience: service.issuer, subject_token: tokens.id_token, subject_token_type: ID_TOKEN, client_id: agent.clientId, client_secret: 'wrong' }, {});
      assert.equal(posted.headers.get('www-authenticate'), null);
    });
  });

  describe('agents that authenticate with private_key_jwt', () => {
    let keyAgent: TestAgent;
    let privateKey: CryptoKey;
    let keyTokens: { id_token: string };

    before(async () => {
      const pair = await generateKeyPair('ES256', { extractable: true });
      privateKey = pair.privateKey as CryptoKey;
      const jwk = { ...(await exportJWK(pair.publicKey)), alg: 'ES256', use: 'sig' };
      const { agent: registered } = await registerAgent(deputy.deputy.store, { name: 'Key Bot', redirectUris: [], jwks: { keys: [jwk] } });
      keyAgent = { clientId: registered.clientId, clientSecret: '', name: 'Key Bot' };
      // The device grant authenticates the agent too: with a client assertion.
      keyTokens = await connectWithAssertion();
    });

    async function assertion(claims: Record<string, unknown> = {}, typ?: string): Promise<string> {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ jti: crypto.randomUUID(), ...claims })
        .setProtectedHeader({ alg: 'ES256', ...(typ ? { typ } : {}) })
        .setIssuer(keyAgent.clientId)
        .setSubject(keyAgent.clientId)
        .setAudience((claims.aud as string | undefined) ?? deputy.url)
        .setIssuedAt(now)
        .setExpirationTime(now + 60)
        .sign(privateKey);
    }

    function authFields(jwt: string) {
      return { client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: jwt };
    }

    async function connectWithAssertion(): Promise<{ id_token: string }> {
      const device = await post(`${deputy.url}/device_authorization`, { scope: 'openid', ...authFields(await assertion()) });
      assert.equal(device.status, 200, JSON.stringify(device.body));
      let page = await ada.go(device.body.verification_uri_complete as string);
      const posted = /<form method="post" action="([^"]+)">([\s\S]*?)<\/form>/.exec(page.body);
      const fields = Object.fromEntries([...(posted?.[2] ?? '').matchAll(/name="([^"]+)" value="([^"]*)"/g)].map((m) => [m[1], m[2]]));
      page = await ada.submit(posted?.[1] as string, fields as Record<string, string>);
      const confirm = /<form id="op\.deviceConfirmForm"[^>]*action="([^"]+)"[^>]*>([\s\S]*?)<\/form>/.exec(page.body);
      const confirmFields = Object.fromEntries([...(confirm?.[2] ?? '').matchAll(/name="([^"]+)" value="([^"]*)"/g)].map((m) => [m[1], m[2]]));
      page = await ada.submit(new URL(confirm?.[1] as string, deputy.url).href, confirmFields as Record<string, string>);
      const csrf = /name="csrf" value="([^"]+)"/.exec(page.body)?.[1] as string;
      const uid = /\/interaction\/([^/?#]+)/.exec(page.url)?.[1] as string;
      await ada.submit(`${deputy.url}/interaction/${uid}/confirm`, { csrf });
      const answer = await post(`${deputy.url}/token`, {
        grant_type: 'urn:ietf:params:oauth:grant-type:device_code',
        device_code: device.body.device_code as string,
        ...authFields(await assertion()),
      });
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      return answer.body as { id_token: string };
    }

    test('mints with a client assertion', async () => {
      const params = { audience: service.issuer, subject_token: keyTokens.id_token, subject_token_type: ID_TOKEN };
      const first = await mint(deputy, keyAgent, { ...params, ...authFields(await assertion()) }, {});
      assert.equal(first.body.error, 'consent_required', JSON.stringify(first.body));
      await approve(ada, first.body.consent_uri as string, 'always');
      const second = await mint(deputy, keyAgent, { ...params, ...authFields(await assertion({}, 'client-authentication+jwt')) }, {});
      assert.equal(second.status, 200, JSON.stringify(second.body));
      assert.equal(decodeProtectedHeader(second.body.access_token as string).typ, 'oauth-id-jag+jwt');
    });

    test('refuses an assertion whose aud names another server', async () => {
      const params = { audience: service.issuer, subject_token: keyTokens.id_token, subject_token_type: ID_TOKEN };
      for (const aud of ['https://other.example', `${deputy.url}/token`]) {
        const answer = await mint(deputy, keyAgent, { ...params, ...authFields(await assertion({ aud })) }, {});
        assert.equal(answer.status, 401, aud);
        assert.equal(answer.body.error, 'invalid_client');
      }
    });

    test('refuses a replayed assertion', async () => {
      const params = { audience: service.issuer, subject_token: keyTokens.id_token, subject_token_type: ID_TOKEN };
      const jwt = await assertion();
      assert.equal((await mint(deputy, keyAgent, { ...params, ...authFields(jwt) }, {})).status, 200);
      const replay = await mint(deputy, keyAgent, { ...params, ...authFields(jwt) }, {});
      assert.equal(replay.status, 401);
      assert.equal(replay.body.error, 'invalid_client');
    });

    test('takes an assertion whose exp has a fraction, and refuses a jti longer than 255 characters', async () => {
      const params = { audience: service.issuer, subject_token: keyTokens.id_token, subject_token_type: ID_TOKEN };
      // NumericDate allows a fraction (RFC 7519 section 2); the replay record keeps whole seconds.
      const now = Math.floor(Date.now() / 1000);
      const fractional = await new SignJWT({ jti: crypto.randomUUID(), exp: now + 60.5 })
        .setProtectedHeader({ alg: 'ES256' })
        .setIssuer(keyAgent.clientId)
        .setSubject(keyAgent.clientId)
        .setAudience(deputy.url)
        .setIssuedAt(now)
        .sign(privateKey);
      const taken = await mint(deputy, keyAgent, { ...params, ...authFields(fractional) }, {});
      assert.equal(taken.status, 200, JSON.stringify(taken.body));
      const long = await mint(deputy, keyAgent, { ...params, ...authFields(await assertion({ jti: 'j'.repeat(256) })) }, {});
      assert.equal(long.status, 401);
      assert.equal(long.body.error, 'invalid_client');
    });

    test('refuses an assertion with another explicit type', async () => {
      const params = { audience: service.issuer, subject_token: keyTokens.id_token, subject_token_type: ID_TOKEN };
      const answer = await mint(deputy, keyAgent, { ...params, ...authFields(await assertion({}, 'oauth-id-jag+jwt')) }, {});
      assert.equal(answer.status, 401);
      assert.equal(answer.body.error, 'invalid_client');
    });
  });
});
