/**
 * Two Deputy processes on one PostgreSQL database (issue 7's acceptance test). Real child
 * processes (`node bin/deputy.js serve`), one shared issuer served by a round-robin balancer,
 * and requests sent straight to one process or the other to race them. It proves that across
 * processes:
 *
 * 1. a `once` delegation is consumed by exactly one of many simultaneous mints;
 * 2. a client assertion's `jti` is accepted once, whichever process sees it first or second;
 * 3. a refresh token is rotated once: the same token at both at once yields one new token, and
 *    the reuse ends the grant, so that new token is dead too;
 * 4. each revocation event is delivered once, by one worker, with both workers polling;
 * 5. a key rotation made by the command line is published and then used by every process.
 *
 * Needs a PostgreSQL server: DEPUTY_TEST_POSTGRES (see scripts/postgres.sh); skipped without.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import {
  createLocalJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  exportJWK,
  generateKeyPair,
  jwtVerify,
  SignJWT,
  type CryptoKey,
  type JSONWebKeySet,
} from 'jose';
import { Browser, formAction, hiddenField, type Page } from './helpers/browser.ts';
import {
  databaseFor,
  NO_RATE_LIMITS,
  sqlOn,
  tempDir,
  TEST_POSTGRES,
  upstreamEnv,
  type RunningDeputy,
} from './helpers/deputy.ts';
import {
  answerConnect,
  basic,
  connectByDevice,
  formFields,
  ID_JAG,
  ID_TOKEN,
  mint,
  post,
  type Answer,
  type DeviceTokens,
  type TestAgent,
} from './helpers/agent.ts';
import { REVOKED_EVENT, startAuthMdService, type AuthMdService } from './helpers/services.ts';
import { cli, startBalancer, startDeputyProcess, type Balancer, type DeputyProcess } from './helpers/processes.ts';
import { startUpstream, type TestUpstream } from './helpers/upstream.ts';
import { waitFor } from './helpers/wait.ts';
import type { Env } from '../src/config.ts';

const CLIENT_ASSERTION = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const DEVICE_CODE = 'urn:ietf:params:oauth:grant-type:device_code';

/**
 * Short timings, so that polls, retries and rotations happen within a test. A first retry
 * waits 200 to 400 ms, several poll intervals: by then both workers have read when it is due
 * and set their timers for that same moment, so they claim at once.
 */
const FAST = {
  DEPUTY_ALLOW_LOOPBACK_SERVICES: 'true',
  DEPUTY_EVENT_POLL_MS: '50',
  DEPUTY_EVENT_RETRY_BASE_MS: '400',
  DEPUTY_JWKS_MAX_AGE: '1',
  DEPUTY_KEY_PREPUBLISH_SECONDS: '1',
  DEPUTY_SHUTDOWN_TIMEOUT: '2',
};

/** What the helpers in agent.ts need of a Deputy: its URL. */
function at(url: string): RunningDeputy {
  return { url } as unknown as RunningDeputy;
}

async function jwksOf(url: string): Promise<JSONWebKeySet> {
  const response = await fetch(`${url}/.well-known/jwks.json`);
  assert.equal(response.status, 200);
  return (await response.json()) as JSONWebKeySet;
}

describe('two Deputy processes on one PostgreSQL database', { skip: TEST_POSTGRES === undefined ? 'needs DEPUTY_TEST_POSTGRES (scripts/postgres.sh)' : false }, () => {
  let dir: ReturnType<typeof tempDir>;
  let dbPath: string;
  let env: Env;
  let balancer: Balancer;
  let upstream: TestUpstream;
  let a: DeputyProcess;
  let b: DeputyProcess;
  let issuer: string;
  let agent: TestAgent;
  let tokens: DeviceTokens;
  let userId: string;
  const ada = new Browser();
  const services: AuthMdService[] = [];

  async function service(name: string): Promise<AuthMdService> {
    const started = await startAuthMdService({ trustedIssuers: [issuer], name });
    services.push(started);
    return started;
  }

  async function addAgent(name: string, ...flags: string[]): Promise<TestAgent> {
    const added = JSON.parse(await cli(env, 'agents', 'add', '--name', name, '--json', ...flags)) as {
      client_id: string;
      client_secret?: string;
    };
    return { clientId: added.client_id, clientSecret: added.client_secret ?? '', name };
  }

  /** Opens a consent link as Ada and approves it in this mode. */
  async function approve(consentUri: string, mode: 'once' | 'always'): Promise<Page> {
    const page = await ada.go(consentUri);
    assert.equal(page.status, 200, page.body.slice(0, 500));
    const done = await ada.submit(consentUri, { csrf: hiddenField(page, 'csrf'), decision: 'approve', mode });
    assert.equal(done.status, 200, done.body.slice(0, 500));
    assert.match(done.body, /Approved/);
    return done;
  }

  /**
   * Asks for an ID-JAG at process A, is told consent_required, and has Ada approve the link;
   * returns the mint's parameters. `authFields` authenticates in the form instead of Basic.
   */
  async function delegate(
    who: TestAgent,
    target: AuthMdService,
    mode: 'once' | 'always',
    options: { idToken?: string; authFields?: () => Promise<Record<string, string>> } = {},
  ): Promise<Record<string, string>> {
    const params = { audience: target.issuer, subject_token: options.idToken ?? tokens.id_token, subject_token_type: ID_TOKEN };
    const asked = options.authFields === undefined
      ? await mint(at(a.url), who, params)
      : await mint(at(a.url), who, { ...params, ...(await options.authFields()) }, {});
    assert.equal(asked.status, 400, JSON.stringify(asked.body));
    assert.equal(asked.body.error, 'consent_required');
    await approve(asked.body.consent_uri as string, mode);
    return params;
  }

  /** Verifies an ID-JAG against the JWKS one process publishes; returns header and claims. */
  async function verifyIdJag(jwt: string, from: DeputyProcess, audience: string) {
    return jwtVerify(jwt, createLocalJWKSet(await jwksOf(from.url)), {
      issuer,
      audience,
      typ: 'oauth-id-jag+jwt',
      algorithms: ['ES256'],
    });
  }

  before(async () => {
    dir = tempDir('deputy-multiprocess-');
    dbPath = `${dir.path}/deputy.db`;
    balancer = await startBalancer();
    issuer = balancer.url;
    upstream = await startUpstream(`${issuer}/login/callback`);
    upstream.accounts.set('ada', { sub: 'ada', email: 'ada@example.com', email_verified: true, name: 'Ada Lovelace' });
    env = {
      DEPUTY_ISSUER: issuer,
      DEPUTY_DB: await databaseFor(dbPath),
      DEPUTY_SECRET: randomBytes(24).toString('hex'),
      ...upstreamEnv(upstream),
      ...NO_RATE_LIMITS,
      ...FAST,
    };

    // Started together: both migrate and make the first key at once, as a fleet would.
    const started = await Promise.allSettled([startDeputyProcess('A', env), startDeputyProcess('B', env)]);
    [a, b] = started.map((result) => (result.status === 'fulfilled' ? result.value : undefined)) as [DeputyProcess, DeputyProcess];
    for (const result of started) if (result.status === 'rejected') throw result.reason;
    balancer.targets = [a.url, b.url];

    agent = await addAgent('Race Bot');
    const form = await ada.go(`${issuer}/login`);
    await ada.submit(formAction(form), { sub: 'ada' });
    tokens = await connectByDevice(at(issuer), agent, ada);
    userId = decodeJwt(tokens.id_token).sub as string;
  });

  after(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    for (const s of services) await s.close().catch(() => undefined);
    await balancer?.close();
    await upstream?.close();
    if (env?.DEPUTY_DB !== undefined) {
      const admin = new pg.Client({ connectionString: TEST_POSTGRES });
      await admin.connect();
      await admin.query(`drop database if exists ${new URL(env.DEPUTY_DB).pathname.slice(1)} with (force)`).finally(() => admin.end());
    }
    dir?.remove();
  });

  test('both processes serve one issuer and publish the same keys', async () => {
    assert.notEqual(a.url, b.url);
    assert.notEqual(a.pid, b.pid);
    const [jwksA, jwksB] = await Promise.all([jwksOf(a.url), jwksOf(b.url)]);
    assert.equal(jwksA.keys.length, 1, 'started together, they made one first key');
    assert.deepEqual(jwksA, jwksB);
    for (const server of [a, b]) {
      const metadata = (await (await fetch(`${server.url}/.well-known/oauth-authorization-server`)).json()) as Record<string, unknown>;
      assert.equal(metadata.issuer, issuer);
      assert.equal(metadata.token_endpoint, `${issuer}/token`);
    }
    // The connection in `before` went through the balancer: both processes took part.
    assert.ok((balancer.forwarded.get(a.url) ?? 0) > 0 && (balancer.forwarded.get(b.url) ?? 0) > 0);
  });

  test('a once delegation raced by 10 mints, 5 at each process, is used exactly once', async (t) => {
    const wins = { A: 0, B: 0 };
    for (let round = 1; round <= 4; round += 1) {
      const target = await service(`Once Service ${round}`);
      const params = await delegate(agent, target, 'once');

      const racers = Array.from({ length: 10 }, (_, i) => (i % 2 === 0 ? a : b));
      const answers = await Promise.all(racers.map((server) => mint(at(server.url), agent, params)));

      const winners = answers.flatMap((answer, i) => (answer.status === 200 ? [{ answer, server: racers[i] as DeputyProcess }] : []));
      assert.equal(winners.length, 1, `round ${round}: ${JSON.stringify(answers.map((x) => [x.status, x.body.error]))}`);
      const [{ answer: won, server: winner }] = winners as [{ answer: Answer; server: DeputyProcess }];
      wins[winner.name as 'A' | 'B'] += 1;
      assert.equal(won.body.issued_token_type, ID_JAG);
      const other = winner === a ? b : a;
      const { payload } = await verifyIdJag(won.body.access_token as string, other, target.issuer);
      assert.equal(payload.aud, target.issuer);
      assert.equal(payload.sub, userId);
      assert.equal(payload.client_id, `${issuer}/agent-auth.json`);
      assert.equal(payload.email, 'ada@example.com');

      const losers = answers.filter((answer) => answer !== won);
      for (const lost of losers) {
        assert.equal(lost.status, 400, JSON.stringify(lost.body));
        assert.equal(lost.body.error, 'consent_required', JSON.stringify(lost.body));
        assert.equal(lost.body.access_token, undefined);
        assert.match(lost.body.consent_uri as string, new RegExp(`^${issuer}/consent/cns_`));
      }
      // Asking again while the person decides gets the one link back, across processes too.
      assert.equal(new Set(losers.map((lost) => lost.body.consent_uri)).size, 1);

      const rows = await sqlOn(dbPath, 'select uses, consumed_at from delegations where audience = ?', [target.issuer]);
      assert.equal(rows.length, 1);
      assert.equal(rows[0]?.uses, 1);
      assert.notEqual(rows[0]?.consumed_at, null);
      const recorded = await sqlOn(dbPath, 'select jti from assertions where audience = ?', [target.issuer]);
      assert.deepEqual(recorded.map((r) => r.jti), [payload.jti]);
    }
    t.diagnostic(`once races won: ${JSON.stringify(wins)}`);
  });

  describe('client assertions', () => {
    let keyAgent: TestAgent;
    let privateKey: CryptoKey;
    let params: Record<string, string>;

    async function assertion(): Promise<string> {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ jti: crypto.randomUUID() })
        .setProtectedHeader({ alg: 'ES256' })
        .setIssuer(keyAgent.clientId)
        .setSubject(keyAgent.clientId)
        .setAudience(issuer)
        .setIssuedAt(now)
        .setExpirationTime(now + 60)
        .sign(privateKey);
    }

    const authFields = (jwt: string) => ({ client_assertion_type: CLIENT_ASSERTION, client_assertion: jwt });
    const mintWith = (server: DeputyProcess, jwt: string) => mint(at(server.url), keyAgent, { ...params, ...authFields(jwt) }, {});

    /** The device grant, the agent authenticating with a fresh assertion each time. */
    async function connectWithAssertion(): Promise<{ id_token: string }> {
      const device = await post(`${issuer}/device_authorization`, { scope: 'openid email', ...authFields(await assertion()) });
      assert.equal(device.status, 200, JSON.stringify(device.body));
      let confirm = await ada.go(device.body.verification_uri_complete as string);
      if (!confirm.body.includes('op.deviceConfirmForm')) {
        const posted = formFields(confirm);
        confirm = await ada.submit(posted.action, posted.fields);
      }
      const { action, fields } = formFields(confirm, 'op.deviceConfirmForm');
      const done = await answerConnect(ada, await ada.submit(action, fields), 'approve');
      assert.equal(done.status, 200, done.body.slice(0, 400));
      const answer = await post(`${issuer}/token`, { grant_type: DEVICE_CODE, device_code: device.body.device_code as string, ...authFields(await assertion()) });
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      return answer.body as { id_token: string };
    }

    before(async () => {
      const pair = await generateKeyPair('ES256', { extractable: true });
      privateKey = pair.privateKey as CryptoKey;
      const file = `${dir.path}/jwks.json`;
      writeFileSync(file, JSON.stringify({ keys: [{ ...(await exportJWK(pair.publicKey)), alg: 'ES256', use: 'sig' }] }));
      keyAgent = await addAgent('Key Bot', '--jwks', file);
      const keyTokens = await connectWithAssertion();
      const target = await service('Assertion Service');
      params = await delegate(keyAgent, target, 'always', { idToken: keyTokens.id_token, authFields: async () => authFields(await assertion()) });
    });

    test('an assertion used at one process is refused at the other, either way round', async () => {
      for (const [first, second] of [[a, b], [b, a]] as const) {
        const jwt = await assertion();
        const accepted = await mintWith(first, jwt);
        assert.equal(accepted.status, 200, `at ${first.name}: ${JSON.stringify(accepted.body)}`);
        assert.equal(decodeProtectedHeader(accepted.body.access_token as string).typ, 'oauth-id-jag+jwt');

        const replayed = await mintWith(second, jwt);
        assert.equal(replayed.status, 401, `replay at ${second.name}: ${JSON.stringify(replayed.body)}`);
        assert.equal(replayed.body.error, 'invalid_client');
        assert.equal(replayed.body.access_token, undefined);
        // And at the first one again, for good measure.
        assert.equal((await mintWith(first, jwt)).body.error, 'invalid_client');
      }
    });

    test('one assertion sent to both at once is accepted by exactly one', async () => {
      for (let round = 1; round <= 5; round += 1) {
        const jwt = await assertion();
        const answers = await Promise.all([mintWith(a, jwt), mintWith(b, jwt)]);
        const statuses = answers.map((x) => x.status).sort();
        assert.deepEqual(statuses, [200, 401], `round ${round}: ${JSON.stringify(answers.map((x) => x.body))}`);
        const refused = answers.find((x) => x.status === 401) as Answer;
        assert.equal(refused.body.error, 'invalid_client');
        const rows = await sqlOn(dbPath, 'select count(*) as n from client_assertion_jtis where jti = ?', [decodeJwt(jwt).jti]);
        assert.equal(rows[0]?.n, 1);
      }
    });
  });

  test('a refresh token sent to both at once is rotated by one; the reuse ends the grant', async () => {
    for (let round = 1; round <= 3; round += 1) {
      const connection = await connectByDevice(at(issuer), agent, ada);
      // Refresh tokens are stored under their SHA-256 (db/oidc-adapter.ts).
      const [stored] = await sqlOn(dbPath, "select grant_id from oidc_models where model = 'RefreshToken' and id = ?", [
        createHash('sha256').update(connection.refresh_token).digest('hex'),
      ]);
      const grantId = stored?.grant_id as string;
      assert.ok(grantId);
      const refresh = (server: DeputyProcess, token: string) =>
        post(`${server.url}/token`, { grant_type: 'refresh_token', refresh_token: token }, { authorization: basic(agent) });

      const answers = await Promise.all([refresh(a, connection.refresh_token), refresh(b, connection.refresh_token)]);
      const won = answers.filter((x) => x.status === 200);
      const lost = answers.filter((x) => x.status !== 200);
      assert.equal(won.length, 1, `round ${round}: ${JSON.stringify(answers.map((x) => x.body))}`);
      const rotated = won[0]?.body as Record<string, unknown>;
      assert.equal(typeof rotated.access_token, 'string');
      assert.equal(typeof rotated.id_token, 'string');
      assert.equal(typeof rotated.refresh_token, 'string');
      assert.notEqual(rotated.refresh_token, connection.refresh_token);
      assert.equal(lost[0]?.status, 400);
      assert.equal(lost[0]?.body.error, 'invalid_grant', JSON.stringify(lost[0]?.body));

      // A rotated token presented again is a reuse: the grant ends with every token under it,
      // the winner's new refresh token included, at either process.
      for (const server of [a, b]) {
        const after = await refresh(server, rotated.refresh_token as string);
        assert.equal(after.status, 400, `new refresh token at ${server.name}: ${JSON.stringify(after.body)}`);
        assert.equal(after.body.error, 'invalid_grant');
      }
      const left = await sqlOn(dbPath, "select model from oidc_models where id = ? or grant_id = ?", [grantId, grantId]);
      assert.ok(!left.some((row) => row.model === 'Grant'), `the grant is gone: ${JSON.stringify(left)}`);
    }
    // Only those grants ended: Ada's first connection still refreshes.
    const first = await post(`${issuer}/token`, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token }, { authorization: basic(agent) });
    assert.equal(first.status, 200, JSON.stringify(first.body));
    tokens = { ...tokens, refresh_token: first.body.refresh_token as string };
  });

  test('each revocation event is delivered once, by one of the two workers', async (t) => {
    const bot = await addAgent('Outbox Bot');
    const botTokens = await connectByDevice(at(issuer), bot, ada);
    const targets = await Promise.all(Array.from({ length: 20 }, (_, i) => service(`Outbox Service ${i}`)));
    for (const [i, target] of targets.entries()) {
      const params = await delegate(bot, target, 'always', { idToken: botTokens.id_token });
      const minted = await mint(at((i % 2 === 0 ? a : b).url), bot, params);
      assert.equal(minted.status, 200, JSON.stringify(minted.body)); // used, so an event is owed
    }

    // Half the services turn the first delivery away with a 503: its retry falls due at a
    // moment both workers read from the queue and wake up for together (see FAST).
    const flaky = (i: number) => i % 2 === 1;
    targets.forEach((target, i) => flaky(i) && target.failNext(1, 503));

    // All revoked at once, half through each process: each revocation wakes its own process's
    // worker, so both workers go for the same queue at the same time (and poll besides).
    const delegationIds = await sqlOn(dbPath, 'select id from delegations where agent_client_id = ?', [bot.clientId]);
    assert.equal(delegationIds.length, 20);
    const csrf = hiddenField(await ada.go(`${issuer}/`), 'csrf');
    const revoked = await Promise.all(
      delegationIds.map(({ id }, i) =>
        ada.request(`${(i % 2 === 0 ? a : b).url}/delegations/${id as string}/revoke`, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: new URLSearchParams({ csrf }).toString(),
        }),
      ),
    );
    assert.deepEqual(revoked.map((response) => response.status), delegationIds.map(() => 302));

    await waitFor('an event at every service', () => targets.every((target) => target.events.length >= 1));
    await sleep(1500); // 30 poll intervals: time enough for a second delivery to show up

    for (const [i, target] of targets.entries()) {
      assert.equal(target.deliveries, flaky(i) ? 2 : 1, `deliveries to ${target.issuer}`);
      assert.equal(target.events.length, 1);
      const [event] = target.events;
      assert.equal(event?.header.typ, 'secevent+jwt');
      assert.equal(event?.claims.iss, issuer);
      assert.equal(event?.claims.aud, target.issuer);
      assert.equal(event?.claims.sub, userId);
      assert.deepEqual(event?.claims.events, { [REVOKED_EVENT]: {} });
    }

    // One claim per attempt (a second claim would count one more), settled as delivered.
    const rows = await sqlOn(dbPath, 'select id, audience, state, attempts from revocation_events where agent_client_id = ?', [bot.clientId]);
    assert.equal(rows.length, 20);
    for (const [i, target] of targets.entries()) {
      const row = rows.find((r) => r.audience === target.issuer);
      assert.deepEqual({ state: row?.state, attempts: row?.attempts }, { state: 'delivered', attempts: flaky(i) ? 2 : 1 }, target.issuer);
    }

    // Each process logs what it delivered: every event id once, in one process only.
    const deliveredBy = (server: DeputyProcess) =>
      server.logs
        .filter((line) => line.event === 'revocation_delivered' && targets.some((target) => target.issuer === line.audience))
        .map((line) => line.id as string);
    const byA = deliveredBy(a);
    const byB = deliveredBy(b);
    assert.deepEqual([...byA, ...byB].sort(), rows.map((row) => row.id as string).sort());
    t.diagnostic(`events delivered: ${byA.length} by A, ${byB.length} by B`);
  });

  test('a key rotated from the command line is published, then used, by both processes', async () => {
    const params = await delegate(agent, await service('Keys Service'), 'always');
    const signingKid = async (server: DeputyProcess) => {
      const answer = await mint(at(server.url), agent, params);
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      const jwt = answer.body.access_token as string;
      await verifyIdJag(jwt, server === a ? b : a, params.audience);
      return decodeProtectedHeader(jwt).kid as string;
    };
    const old = await signingKid(a);
    assert.equal(await signingKid(b), old);

    const out = await cli(env, 'keys', 'rotate');
    const kid = /New ES256 key (\S+) is published now/.exec(out)?.[1];
    assert.ok(kid, out);
    assert.notEqual(kid, old);
    const [row] = await sqlOn(dbPath, 'select activates_at from signing_keys where kid = ?', [kid]);
    const activatesAt = row?.activates_at as number;

    // Published by both within a refresh interval (half the pre-publication delay).
    await waitFor('the new key in both JWKS', async () => {
      const sets = await Promise.all([jwksOf(a.url), jwksOf(b.url)]);
      return sets.every((set) => set.keys.some((k) => k.kid === kid));
    }, 3000);
    for (const server of [a, b]) {
      assert.deepEqual((await jwksOf(server.url)).keys.map((k) => k.kid).sort(), [old, kid].sort(), `JWKS of ${server.name}`);
    }
    if (Date.now() / 1000 < activatesAt - 0.5) {
      assert.equal(await signingKid(a), old, 'not signing before its time');
      assert.equal(await signingKid(b), old, 'not signing before its time');
    }

    // Once it activates (and each process has re-read the keys), both sign with it.
    await sleep(Math.max(0, activatesAt * 1000 - Date.now()) + 1000);
    assert.equal(await signingKid(a), kid);
    assert.equal(await signingKid(b), kid);
  });
});

describe('the development sign-in across two processes', { skip: TEST_POSTGRES === undefined && 'needs DEPUTY_TEST_POSTGRES (scripts/postgres.sh)' }, () => {
  let dir: ReturnType<typeof tempDir>;
  let balancer: Balancer;
  let a: DeputyProcess | undefined;
  let b: DeputyProcess | undefined;
  let database: string | undefined;

  before(async () => {
    dir = tempDir('deputy-multiprocess-dev-');
    balancer = await startBalancer();
    database = await databaseFor(`${dir.path}/deputy.db`);
    const env = { DEPUTY_ISSUER: balancer.url, DEPUTY_DB: database, DEPUTY_SECRET: randomBytes(24).toString('hex'), ...NO_RATE_LIMITS };
    [a, b] = await Promise.all([startDeputyProcess('A', env), startDeputyProcess('B', env)]);
    balancer.targets = [a.url, b.url];
  });

  after(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    await balancer?.close();
    if (database !== undefined) {
      const admin = new pg.Client({ connectionString: TEST_POSTGRES });
      await admin.connect();
      await admin.query(`drop database if exists ${new URL(database).pathname.slice(1)} with (force)`).finally(() => admin.end());
    }
    dir?.remove();
  });

  test('signs a person in when the balancer sends each step to the other process', async () => {
    for (const who of ['grace', 'alan', 'edsger']) {
      const browser = new Browser();
      const form = await browser.go(`${balancer.url}/login`);
      assert.equal(form.status, 200, form.body);
      const home = await browser.submit(formAction(form), { email: `${who}@example.com`, name: who.toUpperCase() });
      assert.equal(home.status, 200, home.body);
      assert.match(home.body, new RegExp(`Signed in as ${who.toUpperCase()}`));
    }
    // Round robin: both processes took part in every sign-in.
    assert.ok((balancer.forwarded.get(a?.url as string) ?? 0) > 3);
    assert.ok((balancer.forwarded.get(b?.url as string) ?? 0) > 3);
  });
});
