import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { decodeJwt } from 'jose';
import { registerAgent } from '../src/agents/registry.ts';
import { sha256 } from '../src/db/store.ts';
import { Browser, formAction } from './helpers/browser.ts';
import { listen, sqlOn, startDeputy, tempDir, upstreamEnv, type RunningDeputy } from './helpers/deputy.ts';
import {
  addAgent,
  basic,
  connectByCode,
  connectByDevice,
  formFields,
  ID_TOKEN,
  mint,
  post,
  REFRESH_TOKEN,
  type TestAgent,
} from './helpers/agent.ts';
import { startUpstream, type TestUpstream } from './helpers/upstream.ts';

describe('agents connect', () => {
  const dir = tempDir();
  let upstream: TestUpstream;
  let deputy: RunningDeputy;
  let agent: TestAgent;
  const browser = new Browser();

  before(async () => {
    const listening = await listen();
    upstream = await startUpstream(`${listening.url}/login/callback`);
    upstream.accounts.set('ada', { sub: 'ada', email: 'ada@example.com', email_verified: true, name: 'Ada' });
    deputy = await startDeputy({ dbPath: `${dir.path}/deputy.db`, env: upstreamEnv(upstream), listening });
    agent = await addAgent(deputy);
    const form = await browser.go(`${deputy.url}/login`);
    await browser.submit(formAction(form), { sub: 'ada' });
  });

  after(async () => {
    await deputy.stop();
    await upstream.close();
    dir.remove();
  });

  test('by the device grant, getting an ID token and a refresh token for the person', async () => {
    const tokens = await connectByDevice(deputy, agent, browser);
    const idToken = decodeJwt(tokens.id_token);
    const user = await deputy.deputy.store.findUser(idToken.sub as string);
    assert.equal(user?.email, 'ada@example.com');
    assert.equal(idToken.aud, agent.clientId);
    assert.equal(idToken.iss, deputy.url);
    assert.ok(tokens.refresh_token);
    assert.match(tokens.scope, /offline_access/);

    const home = await browser.go(`${deputy.url}/`);
    assert.match(home.body, /Research Bot/);
  });

  test('by the authorization code grant with PKCE', async () => {
    const tokens = await connectByCode(deputy, agent, browser);
    assert.ok(tokens.id_token);
    assert.ok(tokens.refresh_token, 'offline_access with prompt=consent gives a refresh token');
    assert.equal(decodeJwt(tokens.id_token as string).aud, agent.clientId);
  });

  test('rotates refresh tokens, and the rotated one no longer mints', async () => {
    const tokens = await connectByDevice(deputy, agent, browser);
    const refreshed = await post(
      `${deputy.url}/token`,
      { grant_type: 'refresh_token', refresh_token: tokens.refresh_token },
      { authorization: basic(agent) },
    );
    assert.equal(refreshed.status, 200);
    assert.notEqual(refreshed.body.refresh_token, tokens.refresh_token);

    const answer = await mint(deputy, agent, {
      audience: 'https://service.example',
      subject_token: tokens.refresh_token,
      subject_token_type: REFRESH_TOKEN,
    });
    assert.equal(answer.status, 400);
    assert.equal(answer.body.error, 'invalid_grant');
  });

  test('revokes its own refresh token, and not another agent\'s', async () => {
    const tokens = await connectByDevice(deputy, agent, browser);
    const other = await addAgent(deputy, 'Other Bot');

    const refused = await post(
      `${deputy.url}/revoke`,
      { token: tokens.refresh_token as string, token_type_hint: 'refresh_token' },
      { authorization: basic(other) },
    );
    assert.equal(refused.status, 400);
    assert.equal(refused.body.error, 'invalid_request');
    assert.equal(refused.body.error_description, 'the token was not issued to this client');

    const stillWorks = await post(
      `${deputy.url}/token`,
      { grant_type: 'refresh_token', refresh_token: tokens.refresh_token },
      { authorization: basic(agent) },
    );
    assert.equal(stillWorks.status, 200, 'the other agent revoked nothing');

    const revoked = await post(
      `${deputy.url}/revoke`,
      { token: stillWorks.body.refresh_token as string, token_type_hint: 'refresh_token' },
      { authorization: basic(agent) },
    );
    assert.equal(revoked.status, 200);
    const after = await post(
      `${deputy.url}/token`,
      { grant_type: 'refresh_token', refresh_token: stillWorks.body.refresh_token as string },
      { authorization: basic(agent) },
    );
    assert.equal(after.status, 400);
    assert.equal(after.body.error, 'invalid_grant');
  });

  test('keeps only hashes of the tokens it issued', async () => {
    const tokens = await connectByDevice(deputy, agent, browser);
    const rows = (await sqlOn(deputy.dbPath, 'select model, id, payload from oidc_models')) as {
      model: string;
      id: string;
      payload: string;
    }[];
    const refresh = rows.find((r) => r.id === sha256(tokens.refresh_token));
    assert.equal(refresh?.model, 'RefreshToken');
    assert.equal((JSON.parse(refresh.payload) as { jti?: string }).jti, undefined);
    assert.ok(rows.some((r) => r.model === 'AccessToken' && r.id === sha256(tokens.access_token)));
    for (const row of rows) {
      for (const value of [tokens.refresh_token, tokens.access_token]) {
        assert.ok(!row.id.includes(value) && !row.payload.includes(value), `${row.model} row holds a token`);
      }
    }

    // Found again by the value the agent holds.
    const refreshed = await post(
      `${deputy.url}/token`,
      { grant_type: 'refresh_token', refresh_token: tokens.refresh_token },
      { authorization: basic(agent) },
    );
    assert.equal(refreshed.status, 200, JSON.stringify(refreshed.body));
  });

  test('refuses cross-origin token requests, even from a public agent\'s own origin', async () => {
    // oidc-provider's default would allow this one: a public client, from its redirect URI's
    // origin. (Preflights are answered for any origin; the request itself is what is checked.)
    const { agent: web } = await registerAgent(deputy.deputy.store, {
      name: 'Browser Agent',
      redirectUris: ['https://app.example/callback'],
      public: true,
    });
    const response = await fetch(`${deputy.url}/token`, {
      method: 'POST',
      headers: { origin: 'https://app.example', 'content-type': 'application/x-www-form-urlencoded' },
      body: `grant_type=refresh_token&refresh_token=x&client_id=${web.clientId}`,
    });
    assert.equal(response.status, 400);
    assert.equal(response.headers.get('access-control-allow-origin'), null);
    const body = (await response.json()) as { error: string; error_description: string };
    assert.equal(body.error, 'invalid_request');
    assert.match(body.error_description, /^origin https:\/\/app\.example not allowed for client/);
  });

  test('names the development setting when a mint is for a service on this machine', async () => {
    const tokens = await connectByDevice(deputy, agent, browser);
    const answer = await mint(deputy, agent, {
      audience: 'http://127.0.0.1:4500',
      subject_token: tokens.id_token,
      subject_token_type: ID_TOKEN,
    });
    assert.equal(answer.status, 400);
    assert.equal(answer.body.error, 'invalid_target');
    assert.match(answer.body.error_description as string, /needs DEPUTY_ALLOW_LOOPBACK_SERVICES=true/);
  });

  test('a mint without a delegation answers consent_required with a consent_uri', async () => {
    const tokens = await connectByDevice(deputy, agent, browser);
    const answer = await mint(deputy, agent, {
      audience: 'https://service.example',
      subject_token: tokens.id_token,
      subject_token_type: ID_TOKEN,
    });
    assert.equal(answer.status, 400);
    assert.equal(answer.body.error, 'consent_required');
    assert.match(answer.body.consent_uri as string, new RegExp(`^${deputy.url}/consent/cns_`));
    assert.equal(answer.body.expires_in, 600);
    assert.equal(answer.headers.get('cache-control'), 'no-store');
  });
});

describe('the device page', () => {
  test('accepts a code typed by the person', async () => {
    const dir = tempDir();
    const deputy = await startDeputy({ dbPath: `${dir.path}/deputy.db` });
    try {
      const agent = await addAgent(deputy);
      const browser = new Browser();
      const form = await browser.go(`${deputy.url}/login`);
      await browser.submit(formAction(form), { email: 'typist@example.com' });
      const device = await post(`${deputy.url}/device_authorization`, { scope: 'openid' }, { authorization: basic(agent) });

      const page = await browser.go(`${deputy.url}/device`);
      assert.equal(page.status, 200);
      assert.equal((page.body.match(/name="user_code"/g) ?? []).length, 1, 'one code field');
      assert.match(page.body, /<label for="user_code">Code<\/label>/);
      const xsrf = /name="xsrf" value="([^"]+)"/.exec(page.body)?.[1] as string;
      const confirm = await browser.submit(`${deputy.url}/device`, { xsrf, user_code: (device.body.user_code as string).toLowerCase() });
      assert.equal(confirm.status, 200, confirm.body.slice(0, 300));
      assert.match(confirm.body, /Connect Research Bot\?/);

      // The code is used up once confirmed: typed again, the person is told what to do.
      const confirmed = formFields(confirm, 'op.deviceConfirmForm');
      await browser.submit(confirmed.action, confirmed.fields);
      const again = await browser.go(`${deputy.url}/device`);
      const retyped = await browser.submit(`${deputy.url}/device`, {
        xsrf: /name="xsrf" value="([^"]+)"/.exec(again.body)?.[1] as string,
        user_code: device.body.user_code as string,
      });
      assert.equal(retyped.status, 200);
      assert.match(retyped.body, /That code has been used already\. If you did not finish connecting, start again from the agent/);
      const unknown = await browser.submit(`${deputy.url}/device`, {
        xsrf: /name="xsrf" value="([^"]+)"/.exec(retyped.body)?.[1] as string,
        user_code: 'BCDF-GHJK',
      });
      assert.match(unknown.body, /Deputy knows no such code/);
    } finally {
      await deputy.stop();
      dir.remove();
    }
  });
});
