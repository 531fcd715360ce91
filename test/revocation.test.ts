import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { execFile } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { decodeJwt } from 'jose';
import { Browser, formAction, hiddenField } from './helpers/browser.ts';
import { cliEnvFor, databaseFor, listen, startDeputy, tempDir, upstreamEnv, type RunningDeputy } from './helpers/deputy.ts';
import { addAgent, connectByDevice, ID_JAG, ID_TOKEN, mint, type TestAgent } from './helpers/agent.ts';
import {
  LOGOUT_REVOKED_EVENT,
  REVOKED_EVENT,
  startAuthMdService,
  type AuthMdService,
} from './helpers/services.ts';
import { startUpstream, type TestUpstream } from './helpers/upstream.ts';
import { waitFor } from './helpers/wait.ts';

const FAST_EVENTS = {
  DEPUTY_ALLOW_LOOPBACK_SERVICES: 'true',
  DEPUTY_EVENT_RETRY_BASE_MS: '40',
  DEPUTY_EVENT_POLL_MS: '50',
};

describe('revocation reaches services', () => {
  const dir = tempDir();
  let upstream: TestUpstream;
  let deputy: RunningDeputy;
  let agent: TestAgent;
  const browser = new Browser();
  let idToken: string;
  const services: AuthMdService[] = [];

  async function service(options: { dialect?: 'events' | 'logout'; port?: number } = {}): Promise<AuthMdService> {
    const started = await startAuthMdService({ trustedIssuers: [deputy.url], ...options });
    services.push(started);
    return started;
  }

  /** Delegates `always` to the service, mints, and registers there; returns the credential. */
  async function delegateAndUse(target: AuthMdService, who = agent, token = () => idToken): Promise<string> {
    const params = { audience: target.issuer, resource: target.resource, subject_token: token(), subject_token_type: ID_TOKEN };
    const first = await mint(deputy, who, params);
    assert.equal(first.body.error, 'consent_required');
    const page = await browser.go(first.body.consent_uri as string);
    await browser.submit(first.body.consent_uri as string, { csrf: hiddenField(page, 'csrf'), decision: 'approve', mode: 'always' });
    const minted = await mint(deputy, who, params);
    assert.equal(minted.status, 200, JSON.stringify(minted.body));
    const response = await fetch(`${target.url}/agent/auth`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        type: 'identity_assertion',
        assertion_type: ID_JAG,
        assertion: minted.body.access_token,
        requested_credential_type: 'access_token',
      }),
    });
    const body = (await response.json()) as { credential: string };
    assert.equal(response.status, 200, JSON.stringify(body));
    return body.credential;
  }

  async function revokeIn(target: AuthMdService): Promise<void> {
    const home = await browser.go(`${deputy.url}/`);
    const card = home.body.split('<li class="card delegation').find((c) => c.includes(target.issuer) && c.includes('/revoke'));
    const id = /\/delegations\/(dlg_[A-Za-z0-9_-]+)\/revoke/.exec(card ?? '')?.[1];
    assert.ok(id, `an active delegation to ${target.issuer}`);
    const page = await browser.submit(`${deputy.url}/delegations/${id}/revoke`, { csrf: hiddenField(home, 'csrf') });
    assert.equal(page.status, 200);
  }

  async function apiStatus(target: AuthMdService, credential: string): Promise<number> {
    return (await fetch(`${target.url}/api/me`, { headers: { authorization: `Bearer ${credential}` } })).status;
  }

  async function outboxFor(target: AuthMdService) {
    return (await deputy.deputy.outbox.list(1000)).filter((e) => e.audience === target.issuer);
  }

  before(async () => {
    const listening = await listen();
    upstream = await startUpstream(`${listening.url}/login/callback`);
    upstream.accounts.set('ada', { sub: 'ada', email: 'ada@example.com', email_verified: true, name: 'Ada' });
    deputy = await startDeputy({
      dbPath: `${dir.path}/deputy.db`,
      env: { ...upstreamEnv(upstream), ...FAST_EVENTS },
      listening,
    });
    agent = await addAgent(deputy);
    const form = await browser.go(`${deputy.url}/login`);
    await browser.submit(formAction(form), { sub: 'ada' });
    idToken = (await connectByDevice(deputy, agent, browser)).id_token;
  });

  after(async () => {
    await deputy.stop();
    for (const s of services) await s.close().catch(() => undefined);
    await upstream.close();
    dir.remove();
  });

  test('a revoke in the browser sends a signed secevent+jwt and the service drops the credential', async () => {
    const target = await service();
    const credential = await delegateAndUse(target);
    assert.equal(await apiStatus(target, credential), 200);

    await revokeIn(target);
    await waitFor('the event', () => target.events.length === 1);
    const [event] = target.events;
    assert.ok(event);
    assert.equal(event.header.typ, 'secevent+jwt');
    assert.equal(event.contentType, 'application/secevent+jwt');
    assert.equal(event.claims.iss, deputy.url);
    assert.equal(event.claims.aud, target.issuer);
    assert.equal(event.claims.sub, target.accepted[0]?.claims.sub);
    assert.deepEqual(event.claims.events, { [REVOKED_EVENT]: {} });
    assert.ok((event.claims.exp as number) - (event.claims.iat as number) <= 120);
    assert.equal(await apiStatus(target, credential), 401);

    await waitFor('delivered state', async () => (await outboxFor(target))[0]?.state === 'delivered');
    const home = await browser.go(`${deputy.url}/`);
    assert.match(home.body, /delivery-delivered">Service told/);
  });

  test('a service of the older dialect gets a logout+jwt at its revocation_uri', async () => {
    const target = await service({ dialect: 'logout' });
    const credential = await delegateAndUse(target);
    await revokeIn(target);
    await waitFor('the logout token', () => target.events.length === 1);
    const [event] = target.events;
    assert.equal(event?.header.typ, 'logout+jwt');
    assert.equal(event?.contentType, 'application/logout+jwt');
    assert.deepEqual(event?.claims.events, { [LOGOUT_REVOKED_EVENT]: {} });
    assert.equal(await apiStatus(target, credential), 401);
  });

  test('stops minting at once, whatever happens to delivery', async () => {
    const target = await service();
    await delegateAndUse(target);
    target.failNext(1000);
    await revokeIn(target);
    const answer = await mint(deputy, agent, { audience: target.issuer, subject_token: idToken, subject_token_type: ID_TOKEN });
    assert.equal(answer.body.error, 'consent_required');
  });

  test('a service that fails 3 times then accepts gets exactly one accepted delivery', async () => {
    const target = await service();
    await delegateAndUse(target);
    target.failNext(3, 503);
    await revokeIn(target);
    await waitFor('delivery', async () => (await outboxFor(target))[0]?.state === 'delivered');
    assert.equal(target.deliveries, 4);
    assert.equal(target.events.length, 1);
    assert.equal((await outboxFor(target))[0]?.attempts, 4);
  });

  test('a service answering 400 ends as failed with its reason, not retried', async () => {
    const target = await service();
    await delegateAndUse(target);
    target.failNext(1, 400);
    await revokeIn(target);
    const failed = await waitFor('failure', async () => ((await outboxFor(target))[0]?.state === 'failed' ? (await outboxFor(target))[0] : undefined));
    assert.equal(failed.attempts, 1);
    assert.match(failed.lastError ?? '', /the service answered 400: temporarily_unavailable: failing on purpose/);
    await sleep(200);
    assert.equal(target.deliveries, 1);

    const home = await browser.go(`${deputy.url}/`);
    assert.match(home.body, /delivery-failed">Service could not be told: the service answered 400/);
  });

  async function cli(...args: string[]): Promise<string> {
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], {
      env: { PATH: process.env.PATH, ...(await cliEnvFor(deputy.dbPath)) },
    });
    return stdout;
  }

  test('removing an agent from the command line tells its services, and events list shows it', async () => {
    const doomed = await addAgent(deputy, 'Doomed Bot');
    const doomedTokens = await connectByDevice(deputy, doomed, browser);
    const target = await service();
    const credential = await delegateAndUse(target, doomed, () => doomedTokens.id_token);

    assert.match(await cli('agents', 'remove', doomed.clientId), /1 delegation\(s\) revoked/);
    await waitFor('the event', () => target.events.length === 1);
    assert.equal(await apiStatus(target, credential), 401);
    const refused = await mint(deputy, doomed, { audience: target.issuer, subject_token: doomedTokens.id_token, subject_token_type: ID_TOKEN });
    assert.equal(refused.status, 401);
    assert.equal(refused.body.error, 'invalid_client');

    await waitFor('delivered', async () => (await outboxFor(target))[0]?.state === 'delivered');
    const listed = JSON.parse(await cli('events', 'list', '--json')) as { audience: string; state: string; transport: string }[];
    const row = listed.find((e) => e.audience === target.issuer);
    assert.equal(row?.state, 'delivered');
    assert.equal(row?.transport, 'secevent+jwt');
  });

  test('one event for a service covers every delegation revoked with it, shown on the one used last', async () => {
    const bot = await addAgent(deputy, 'Twice Bot');
    const botTokens = await connectByDevice(deputy, bot, browser);
    const target = await service();
    const params = { audience: target.issuer, resource: target.resource, subject_token: botTokens.id_token, subject_token_type: ID_TOKEN };
    for (const mode of ['once', 'always']) {
      const asked = await mint(deputy, bot, params);
      assert.equal(asked.body.error, 'consent_required');
      const page = await browser.go(asked.body.consent_uri as string);
      await browser.submit(asked.body.consent_uri as string, { csrf: hiddenField(page, 'csrf'), decision: 'approve', mode });
      assert.equal((await mint(deputy, bot, params)).status, 200);
      await sleep(1000 - (Date.now() % 1000) + 50); // whole seconds: the second is used later
    }
    const always = (await deputy.deputy.delegations
      .delegationsOf(decodeJwt(botTokens.id_token).sub as string)
      ).find((d) => d.agentClientId === bot.clientId && d.mode === 'always');

    const home = await browser.go(`${deputy.url}/`);
    await browser.submit(`${deputy.url}/agents/${bot.clientId}/disconnect`, { csrf: hiddenField(home, 'csrf') });
    await waitFor('the event', () => target.events.length === 1);
    const events = await outboxFor(target);
    assert.equal(events.length, 1);
    assert.equal(events[0]?.delegationId, always?.id);
  });

  test('many delegations revoked at once each reach the right service', async () => {
    const other = await addAgent(deputy, 'Busy Bot');
    const otherTokens = await connectByDevice(deputy, other, browser);
    const targets = await Promise.all(Array.from({ length: 6 }, () => service()));
    for (const target of targets) await delegateAndUse(target, other, () => otherTokens.id_token);

    const home = await browser.go(`${deputy.url}/`);
    await browser.submit(`${deputy.url}/agents/${other.clientId}/disconnect`, { csrf: hiddenField(home, 'csrf') });
    for (const target of targets) {
      await waitFor(`the event at ${target.issuer}`, () => target.events.length === 1);
      assert.equal(target.events[0]?.claims.aud, target.issuer);
    }
    await sleep(200);
    assert.deepEqual(targets.map((t) => t.events.length), [1, 1, 1, 1, 1, 1]);
  });
});

describe('revocation across a restart', () => {
  test('an event a dead worker had claimed is delivered once its lease runs out', async () => {
    const dir = tempDir();
    const deputy = await startDeputy({ dbPath: `${dir.path}/deputy.db`, env: FAST_EVENTS });
    const target = await startAuthMdService({ trustedIssuers: [deputy.url] });
    try {
      // Stop this process's worker, queue an event, and let another "process" (a second
      // connection to the same file) claim it and die without settling it.
      await deputy.deputy.worker.stop();
      const { openDatabaseOrExplain } = await import('../src/db/index.ts');
      const { OutboxStore, enqueueRevocations } = await import('../src/db/outbox.ts');
      const other = await openDatabaseOrExplain(await databaseFor(deputy.dbPath));
      await other.transaction((tx) => enqueueRevocations(tx, other.t, [
        {
          id: 'dlg_test',
          userId: 'usr_test',
          agentClientId: 'agt_test',
          audience: target.issuer,
          uses: 1,
          lastUsedAt: null,
          serviceAgentAuth: { eventsEndpoint: `${target.url}/agent/events`, eventsSupported: [REVOKED_EVENT] },
        },
      ]));
      const claimed = await new OutboxStore(other).claimDue(10, 400);
      assert.equal(claimed.length, 1);
      await other.close();

      deputy.deputy.worker.start();
      await sleep(150);
      assert.equal(target.deliveries, 0, 'not while the lease holds');
      await waitFor('the delivery after the lease', () => target.events.length === 1);
      assert.equal((await deputy.deputy.outbox.list())[0]?.attempts, 2);
    } finally {
      await deputy.stop();
      await target.close();
      dir.remove();
    }
  });

  test('a service that is down while Deputy restarts still gets the event once both are up', async () => {
    const dir = tempDir();
    const dbPath = `${dir.path}/deputy.db`;
    const listening = await listen();
    const upstream = await startUpstream(`${listening.url}/login/callback`);
    upstream.accounts.set('ada', { sub: 'ada', email: 'ada@example.com', email_verified: true, name: 'Ada' });
    const env = { ...upstreamEnv(upstream), ...FAST_EVENTS };
    let deputy = await startDeputy({ dbPath, env, listening });
    let target = await startAuthMdService({ trustedIssuers: [deputy.url] });
    const port = Number(new URL(target.url).port);

    try {
      const agent = await addAgent(deputy);
      const browser = new Browser();
      const form = await browser.go(`${deputy.url}/login`);
      await browser.submit(formAction(form), { sub: 'ada' });
      const { id_token } = await connectByDevice(deputy, agent, browser);
      const params = { audience: target.issuer, subject_token: id_token, subject_token_type: ID_TOKEN };
      const first = await mint(deputy, agent, params);
      const consent = await browser.go(first.body.consent_uri as string);
      await browser.submit(first.body.consent_uri as string, { csrf: hiddenField(consent, 'csrf'), decision: 'approve', mode: 'always' });
      assert.equal((await mint(deputy, agent, params)).status, 200);

      await target.close();
      const home = await browser.go(`${deputy.url}/`);
      const id = /\/delegations\/(dlg_[A-Za-z0-9_-]+)\/revoke/.exec(home.body)?.[1];
      await browser.submit(`${deputy.url}/delegations/${id}/revoke`, { csrf: hiddenField(home, 'csrf') });
      await waitFor('a failed attempt', async () => ((await deputy.deputy.outbox.list())[0]?.attempts ?? 0) >= 1 ? true : undefined);
      assert.equal((await deputy.deputy.outbox.list())[0]?.state, 'pending');

      const deputyPort = Number(new URL(deputy.url).port);
      await deputy.stop();
      target = await startAuthMdService({ trustedIssuers: [deputy.url], port });
      deputy = await startDeputy({ dbPath, env, listening: await listen(deputyPort) });

      await waitFor('the event after the restart', () => target.events.length === 1);
      assert.equal(target.events[0]?.claims.aud, target.issuer);
      await waitFor('delivered', async () => (await deputy.deputy.outbox.list())[0]?.state === 'delivered');
    } finally {
      await deputy.stop();
      await target.close().catch(() => undefined);
      await upstream.close();
      dir.remove();
    }
  });
});
