import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { decodeJwt } from 'jose';
import { Browser, formAction, hiddenField } from './helpers/browser.ts';
import { listen, startDeputy, tempDir, upstreamEnv, type RunningDeputy } from './helpers/deputy.ts';
import { addAgent, connectByDevice, ID_TOKEN, mint, type TestAgent } from './helpers/agent.ts';
import { startAuthMdService, type AuthMdService } from './helpers/services.ts';
import { startUpstream, type TestUpstream } from './helpers/upstream.ts';

describe('delegations in the web page', () => {
  const dir = tempDir();
  let upstream: TestUpstream;
  let deputy: RunningDeputy;
  let service: AuthMdService;
  let agent: TestAgent;
  const browser = new Browser();
  let idToken: string;

  before(async () => {
    const listening = await listen();
    upstream = await startUpstream(`${listening.url}/login/callback`);
    upstream.accounts.set('ada', { sub: 'ada', email: 'ada@example.com', email_verified: true, name: 'Ada' });
    deputy = await startDeputy({
      dbPath: `${dir.path}/deputy.db`,
      env: { ...upstreamEnv(upstream), DEPUTY_ALLOW_LOOPBACK_SERVICES: 'true' },
      listening,
    });
    service = await startAuthMdService({ trustedIssuers: [deputy.url], name: 'Acme <b>Files</b>' });
    agent = await addAgent(deputy, 'Research <script>Bot</script>');
    const form = await browser.go(`${deputy.url}/login`);
    await browser.submit(formAction(form), { sub: 'ada' });
    idToken = (await connectByDevice(deputy, agent, browser)).id_token;
  });

  after(async () => {
    await deputy.stop();
    await service.close();
    await upstream.close();
    dir.remove();
  });

  test('adds a delegation by service URL, showing what the service publishes, and the agent mints', async () => {
    const home = await browser.go(`${deputy.url}/`);
    const csrf = hiddenField(home, 'csrf');
    const preview = await browser.submit(`${deputy.url}/delegations/preview`, {
      csrf,
      agent: agent.clientId,
      service: service.resource,
    });
    assert.equal(preview.status, 200, preview.body.slice(0, 400));
    assert.match(preview.body, /Acme &lt;b&gt;Files&lt;\/b&gt;/, 'the published name, escaped');
    assert.match(preview.body, /Research &lt;script&gt;Bot&lt;\/script&gt;/, 'the agent name, escaped');
    assert.doesNotMatch(preview.body, /<script>Bot/);

    const created = await browser.submit(`${deputy.url}/delegations`, {
      csrf,
      agent: agent.clientId,
      service: service.resource,
      scope: 'read',
      mode: 'always',
    });
    assert.equal(created.status, 200);
    assert.equal(created.url, `${deputy.url}/`);
    assert.match(created.body, /status-active/);

    const answer = await mint(deputy, agent, { audience: service.issuer, subject_token: idToken, subject_token_type: ID_TOKEN });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.scope, 'read');
  });

  test('adds a delegation until a date: usable through that day (UTC), refused for a past day', async () => {
    const until = await startAuthMdService({ trustedIssuers: [deputy.url], name: 'Until Service' });
    try {
      const home = await browser.go(`${deputy.url}/`);
      const fields = { csrf: hiddenField(home, 'csrf'), agent: agent.clientId, service: until.resource, scope: 'read', mode: 'until' };
      // Tomorrow, not today: today's last second is gone if the test runs at 23:59:59 UTC.
      const day = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
      const yesterday = new Date(Date.now() - 86_400_000).toISOString().slice(0, 10);

      const past = await browser.submit(`${deputy.url}/delegations`, { ...fields, until: yesterday });
      assert.equal(past.status, 400);
      assert.match(past.body, /Choose a date/);

      const created = await browser.submit(`${deputy.url}/delegations`, { ...fields, until: day });
      assert.equal(created.status, 200, created.body.slice(0, 400));
      const card = created.body.split('<li class="card delegation').find((c) => c.includes('Until Service')) ?? '';
      assert.match(card, /<dt>Mode<\/dt><dd>until a date<\/dd>/);
      assert.match(card, new RegExp(`<dt>Expires</dt><dd>${day} 23:59 UTC</dd>`));
      const answer = await mint(deputy, agent, { audience: until.issuer, subject_token: idToken, subject_token_type: ID_TOKEN });
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
    } finally {
      await until.close();
    }
  });

  test('shows an audit trail of the assertions minted under a delegation', async () => {
    const home = await browser.go(`${deputy.url}/`);
    const link = /href="(\/delegations\/dlg_[^"]+)"/.exec(home.body)?.[1];
    assert.ok(link);
    const audit = await browser.go(`${deputy.url}${link}`);
    assert.equal(audit.status, 200);
    const jtis = [...audit.body.matchAll(/<code>([0-9a-f-]{36})<\/code>/g)];
    assert.equal(jtis.length, 1);
  });

  test('refuses to add a delegation for a service that cannot be discovered', async () => {
    const home = await browser.go(`${deputy.url}/`);
    const page = await browser.submit(`${deputy.url}/delegations/preview`, {
      csrf: hiddenField(home, 'csrf'),
      agent: agent.clientId,
      service: 'https://10.0.0.1/api',
    });
    assert.equal(page.status, 400);
    assert.match(page.body, /The service could not be checked/);
  });

  test('approves the first delegation in the same screen as the connection', async () => {
    const other = await startAuthMdService({ trustedIssuers: [deputy.url], name: 'Other Service' });
    try {
      const tokens = await connectByDevice(deputy, agent, browser, {
        audience: other.issuer,
        approve: { delegate: 'yes', mode: 'always', scope: 'read' },
      });
      const answer = await mint(deputy, agent, {
        audience: other.issuer,
        subject_token: tokens.id_token,
        subject_token_type: ID_TOKEN,
      });
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      assert.equal(answer.body.scope, 'read');

      // Made for the whole service, the delegation covers a resource whose metadata names the
      // service as its authorization server, and not one governed by another service.
      const withResource = await mint(deputy, agent, {
        audience: other.issuer,
        resource: other.resource,
        subject_token: tokens.id_token,
        subject_token_type: ID_TOKEN,
      });
      assert.equal(withResource.status, 200, JSON.stringify(withResource.body));
      assert.deepEqual(decodeJwt(withResource.body.access_token as string).resource, other.resource);
      const elsewhere = await mint(deputy, agent, {
        audience: other.issuer,
        resource: service.resource,
        subject_token: tokens.id_token,
        subject_token_type: ID_TOKEN,
      });
      assert.equal(elsewhere.status, 400);
      assert.equal(elsewhere.body.error, 'invalid_target');

      // Connecting again with the same audience offers no second delegation, and a form that
      // asks for one anyway creates none: one revoke must be enough to stop the minting.
      await connectByDevice(deputy, agent, browser, {
        audience: other.issuer,
        approve: { delegate: 'yes', mode: 'once', scope: 'write' },
        onConnectPage: (page) => {
          assert.match(page.body, /may already speak for you to this service; that delegation stands/);
          assert.doesNotMatch(page.body, /name="delegate"/);
        },
      });
      const home = await browser.go(`${deputy.url}/`);
      const cards = home.body.split('<li class="card delegation').filter((c) => c.includes('Other Service'));
      assert.equal(cards.length, 1, 'still one delegation for the service');
      assert.match(cards[0] ?? '', /always/);
    } finally {
      await other.close();
    }
  });

  describe('refuses state-changing forms without the session token', () => {
    const forms: [string, Record<string, string>][] = [
      ['/delegations/preview', { agent: 'x', service: 'https://example.com' }],
      ['/delegations', { agent: 'x', service: 'https://example.com', mode: 'always' }],
      ['/delegations/dlg_x/revoke', {}],
      ['/agents/agt_x/disconnect', {}],
      ['/logout', {}],
    ];
    for (const [path, fields] of forms) {
      test(path, async () => {
        const page = await browser.submit(`${deputy.url}${path}`, { ...fields, csrf: 'not-the-token' });
        assert.equal(page.status, 403);
        assert.match(page.body, /not sent from a current Deputy page/);
      });
    }

    test('a consent answer', async () => {
      const first = await mint(deputy, agent, {
        audience: `${service.issuer}/x`,
        subject_token: idToken,
        subject_token_type: ID_TOKEN,
      });
      const page = await browser.submit(first.body.consent_uri as string, { decision: 'approve', mode: 'once' });
      assert.equal(page.status, 403);
    });
  });

  test('answers a page that needs a session with a sign-in prompt, not an error', async () => {
    const response = await new Browser().go(`${deputy.url}/delegations/dlg_nothing`);
    assert.equal(response.status, 401);
    assert.match(response.body, /Sign in first/);
  });
});
