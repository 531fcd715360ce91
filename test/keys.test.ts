import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify, type JWK } from 'jose';
import pino from 'pino';
import { Browser, formAction, hiddenField } from './helpers/browser.ts';
import { cliEnvFor, listen, sqlOn, startDeputy, tempDir, upstreamEnv, type RunningDeputy } from './helpers/deputy.ts';
import { addAgent, basic, connectByDevice, ID_TOKEN, mint, post, type TestAgent } from './helpers/agent.ts';
import { startAuthMdService, type AuthMdService } from './helpers/services.ts';
import { startUpstream, type TestUpstream } from './helpers/upstream.ts';

const FAST_KEYS = {
  DEPUTY_JWKS_MAX_AGE: '1',
  DEPUTY_KEY_PREPUBLISH_SECONDS: '1',
  DEPUTY_ALLOW_LOOPBACK_SERVICES: 'true',
  DEPUTY_EVENT_RETRY_BASE_MS: '40',
  DEPUTY_EVENT_POLL_MS: '50',
};

/** Everything the suite's Deputy logs, at the most detailed level, kept for a scan. */
const logLines: string[] = [];
const captured = pino(
  { level: 'trace' },
  new Writable({
    write(chunk, _encoding, done) {
      logLines.push(String(chunk));
      done();
    },
  }),
);

async function jwks(deputy: RunningDeputy): Promise<JWK[]> {
  return ((await (await fetch(`${deputy.url}/.well-known/jwks.json`)).json()) as { keys: JWK[] }).keys;
}

describe('signing keys', () => {
  const dir = tempDir();
  let upstream: TestUpstream;
  let deputy: RunningDeputy;
  let agent: TestAgent;
  let service: AuthMdService;
  let idToken: string;
  let refreshToken: string;
  const browser = new Browser();
  const secrets: string[] = [];

  before(async () => {
    const listening = await listen();
    upstream = await startUpstream(`${listening.url}/login/callback`);
    upstream.accounts.set('ada', { sub: 'ada', email: 'ada@example.com', email_verified: true, name: 'Ada' });
    deputy = await startDeputy({
      dbPath: `${dir.path}/deputy.db`,
      env: { ...upstreamEnv(upstream), ...FAST_KEYS, DEPUTY_SECRET: 's'.repeat(40) },
      listening,
      log: captured,
    });
    service = await startAuthMdService({ trustedIssuers: [deputy.url] });
    agent = await addAgent(deputy);
    secrets.push(agent.clientSecret, 's'.repeat(40), upstream.clientSecret);
    const form = await browser.go(`${deputy.url}/login`);
    await browser.submit(formAction(form), { sub: 'ada' });
    const tokens = await connectByDevice(deputy, agent, browser);
    idToken = tokens.id_token;
    refreshToken = tokens.refresh_token;
    secrets.push(refreshToken, idToken);
    const params = { audience: service.issuer, subject_token: idToken, subject_token_type: ID_TOKEN };
    const first = await mint(deputy, agent, params);
    const page = await browser.go(first.body.consent_uri as string);
    await browser.submit(first.body.consent_uri as string, { csrf: hiddenField(page, 'csrf'), decision: 'approve', mode: 'always' });
  });

  after(async () => {
    await deputy.stop();
    await service.close();
    await upstream.close();
    dir.remove();
  });

  test('a caching verifier keeps verifying every ID-JAG through two rotations under continuous minting', async () => {
    // A service's verifier: caches the JWKS for the max-age Deputy sends, and never refetches
    // early on an unknown kid, so a key used before it was published would fail here.
    const verifier = createRemoteJWKSet(new URL(`${deputy.url}/.well-known/jwks.json`), {
      cacheMaxAge: 1000,
      cooldownDuration: 600_000,
    });
    const kids = new Set<string>();
    let verified = 0;
    const failures: string[] = [];
    let stop = false;

    const minting = (async () => {
      while (!stop) {
        const answer = await mint(deputy, agent, { audience: service.issuer, subject_token: idToken, subject_token_type: ID_TOKEN });
        if (answer.status !== 200) {
          failures.push(`mint ${answer.status} ${JSON.stringify(answer.body)}`);
          continue;
        }
        const jwt = answer.body.access_token as string;
        try {
          await jwtVerify(jwt, verifier, { issuer: deputy.url, audience: service.issuer, typ: 'oauth-id-jag+jwt' });
          kids.add(decodeProtectedHeader(jwt).kid as string);
          verified += 1;
        } catch (error) {
          failures.push(`verify ${(error as Error).message} kid ${decodeProtectedHeader(jwt).kid}`);
        }
        await sleep(10);
      }
    })();

    await sleep(300);
    const first = await deputy.deputy.keys.rotate();
    assert.ok((await jwks(deputy)).some((k) => k.kid === first.kid), 'published before it signs');
    await sleep((first.activatesAt * 1000 - Date.now()) + 1200);
    const second = await deputy.deputy.keys.rotate();
    await sleep((second.activatesAt * 1000 - Date.now()) + 1200);
    stop = true;
    await minting;

    assert.deepEqual(failures, []);
    assert.ok(verified > 20, `verified ${verified}`);
    assert.equal(kids.size, 3, 'minted with the original key and both new ones');
    assert.equal(deputy.deputy.keys.active().kid, second.kid);

    // ID tokens from oidc-provider are signed with the new key too.
    const refreshed = await post(`${deputy.url}/token`, { grant_type: 'refresh_token', refresh_token: refreshToken }, { authorization: basic(agent) });
    assert.equal(refreshed.status, 200, JSON.stringify(refreshed.body));
    refreshToken = refreshed.body.refresh_token as string;
    secrets.push(refreshToken);
    assert.equal(decodeProtectedHeader(refreshed.body.id_token as string).kid, second.kid);

    const states = (await deputy.deputy.keys.describe()).map((k) => k.state);
    assert.deepEqual(states, ['retired', 'retired', 'active']);
  });

  test('keeps retired keys published until every token they signed has expired plus the cache time, then removes them', async () => {
    const rows = await deputy.deputy.keys.describe();
    const retention = 3600 + 1 + 60;
    for (const [i, row] of rows.entries()) {
      if (row.state !== 'retired') continue;
      const successor = rows[i + 1];
      assert.ok(successor);
      assert.equal(row.retiredAt, successor.activatesAt, 'retires when the next key starts signing');
      assert.equal(row.removeAfter, successor.activatesAt + retention);
    }
    const published = (await jwks(deputy)).map((k) => k.kid);
    assert.deepEqual(published, rows.map((r) => r.kid));

    // Move the first key's schedule into the past, as time would.
    await sqlOn(deputy.dbPath, 'update signing_keys set remove_after = ? where kid = ?', [
      Math.floor(Date.now() / 1000) - 1,
      rows[0]?.kid,
    ]);
    await deputy.deputy.keys.refresh();
    assert.deepEqual((await jwks(deputy)).map((k) => k.kid), rows.slice(1).map((r) => r.kid));
    assert.equal((await deputy.deputy.keys.describe())[0]?.state, 'removed');
  });

  test('revocation events are signed with the current key', async () => {
    const home = await browser.go(`${deputy.url}/`);
    const id = /\/delegations\/(dlg_[A-Za-z0-9_-]+)\/revoke/.exec(home.body)?.[1];
    await browser.submit(`${deputy.url}/delegations/${id}/revoke`, { csrf: hiddenField(home, 'csrf') });
    for (let i = 0; i < 200 && service.events.length === 0; i += 1) await sleep(25);
    assert.equal(service.events[0]?.header.kid, deputy.deputy.keys.active().kid);
  });

  test('no log line holds a secret, a token, a whole JWT or private key material', () => {
    assert.ok(logLines.length > 10, `${logLines.length} lines logged`);
    const all = logLines.join('');
    for (const secret of secrets) assert.equal(all.includes(secret), false, 'a secret or token in the log');
    assert.doesNotMatch(all, /eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+/, 'a complete JWT in the log');
    assert.doesNotMatch(all, /"d"\s*:\s*"/, 'private key material in the log');
    assert.doesNotMatch(all, /BEGIN [A-Z ]*PRIVATE KEY/);
  });
});

describe('signing algorithms', () => {
  for (const alg of ['EdDSA', 'RS256'] as const) {
    test(`switching DEPUTY_SIGNING_ALG to ${alg} is a rotation: the new key is published first and signs after the delay`, async () => {
      const dir = tempDir();
      const dbPath = `${dir.path}/deputy.db`;
      const env = { ...FAST_KEYS, DEPUTY_SECRET: 'k'.repeat(40) };
      let deputy = await startDeputy({ dbPath, env });
      const port = Number(new URL(deputy.url).port);
      const original = deputy.deputy.keys.active().kid;
      await deputy.stop();

      deputy = await startDeputy({ dbPath, env: { ...env, DEPUTY_SIGNING_ALG: alg }, listening: await listen(port) });
      try {
        const published = await jwks(deputy);
        assert.deepEqual(published.map((k) => k.alg), ['ES256', alg], 'the new key is published next to the old one');
        assert.equal(deputy.deputy.keys.active().kid, original, 'and does not sign yet');
        const next = published[1] as JWK;
        assert.equal(next.use, 'sig');
        if (alg === 'RS256') assert.ok(Buffer.from(next.n as string, 'base64url').length * 8 >= 2048);
        if (alg === 'EdDSA') assert.equal(next.crv, 'Ed25519');

        await sleep(2200);
        await deputy.deputy.keys.refresh();
        assert.equal(deputy.deputy.keys.active().alg, alg);
        const metadata = (await (await fetch(`${deputy.url}/.well-known/openid-configuration`)).json()) as Record<string, unknown>;
        assert.deepEqual(metadata.id_token_signing_alg_values_supported, [alg]);
      } finally {
        await deputy.stop();
        dir.remove();
      }
    });
  }
});

describe('changing DEPUTY_SECRET', () => {
  const run = promisify(execFile);
  // DEPUTY_DB names the test's database file; on a PostgreSQL run, the database standing for it.
  const cli = async (env: Record<string, string>, ...args: string[]) =>
    run(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], {
      env: { PATH: process.env.PATH, ...env, ...(await cliEnvFor(env.DEPUTY_DB as string, env)) },
    });

  test('key commands before the first start leave a database the server starts on', async () => {
    for (const first of [['keys', 'list'], ['keys', 'rotate', '--alg', 'EdDSA']]) {
      const dir = tempDir();
      const dbPath = `${dir.path}/deputy.db`;
      try {
        // The development secret file is made beside the database, as `npm start` would.
        const { stdout } = await cli({ DEPUTY_DB: dbPath }, ...first);
        if (first[1] === 'rotate') assert.match(stdout, /signs from now: there was no key that signs before it/);
        const deputy = await startDeputy({ dbPath, env: { DEPUTY_SIGNING_ALG: first[1] === 'rotate' ? 'EdDSA' : 'ES256' } });
        try {
          const active = deputy.deputy.keys.active();
          assert.equal(active.alg, first[1] === 'rotate' ? 'EdDSA' : 'ES256');
          assert.equal((await deputy.deputy.keys.describe()).length, 1, `${first.join(' ')}: one key, signing`);
        } finally {
          await deputy.stop();
        }

        await cli({ DEPUTY_DB: dbPath }, 'keys', 'rotate');
        await assert.rejects(cli({ DEPUTY_DB: dbPath }, 'keys', 'rotate'), (error: { code: number; stderr: string }) => {
          assert.equal(error.code, 1);
          assert.equal(error.stderr.trim().split('\n').length, 1, `one line: ${error.stderr}`);
          assert.match(error.stderr, /^deputy: .*already/);
          return true;
        });
      } finally {
        dir.remove();
      }
    }
  });

  test('keys reencrypt moves the keys to the new secret; the old one no longer opens them', async () => {
    const dir = tempDir();
    const dbPath = `${dir.path}/deputy.db`;
    const oldSecret = 'o'.repeat(40);
    const newSecret = 'n'.repeat(40);
    try {
      const first = await startDeputy({ dbPath, env: { DEPUTY_SECRET: oldSecret } });
      const kid = first.deputy.keys.active().kid;
      await first.stop();

      await assert.rejects(cli({ DEPUTY_DB: dbPath, DEPUTY_SECRET_OLD: 'w'.repeat(40), DEPUTY_SECRET: newSecret }, 'keys', 'reencrypt'), (error: { code: number; stderr: string }) => {
        assert.equal(error.code, 1);
        assert.match(error.stderr, /cannot be decrypted with this DEPUTY_SECRET_OLD; set it to the secret the keys are encrypted under now/);
        return true;
      });

      const { stdout } = await cli({ DEPUTY_DB: dbPath, DEPUTY_SECRET_OLD: oldSecret, DEPUTY_SECRET: newSecret }, 'keys', 'reencrypt');
      assert.match(stdout, /Re-encrypted 1 signing key\(s\)/);

      const second = await startDeputy({ dbPath, env: { DEPUTY_SECRET: newSecret } });
      assert.equal(second.deputy.keys.active().kid, kid);
      await second.stop();
      await assert.rejects(startDeputy({ dbPath, env: { DEPUTY_SECRET: oldSecret } }), { name: 'KeyDecryptionError' });
    } finally {
      dir.remove();
    }
  });
});

describe('key rotation across processes and on schedule', () => {
  test('two Deputy servers on one database agree on the active key after a rotation in one of them', async () => {
    const dir = tempDir();
    const dbPath = `${dir.path}/deputy.db`;
    const env = { ...FAST_KEYS, DEPUTY_SECRET: 'p'.repeat(40) };
    const one = await startDeputy({ dbPath, env });
    const two = await startDeputy({ dbPath, env });
    try {
      assert.equal(one.deputy.keys.active().kid, two.deputy.keys.active().kid);
      const next = await one.deputy.keys.rotate();
      await sleep(700);
      assert.ok((await jwks(two)).some((k) => k.kid === next.kid), 'the other process publishes it before it signs');
      assert.notEqual(two.deputy.keys.active().kid, next.kid);
      await sleep(next.activatesAt * 1000 - Date.now() + 100);
      assert.equal(one.deputy.keys.active().kid, next.kid);
      assert.equal(two.deputy.keys.active().kid, next.kid);
    } finally {
      await one.stop();
      await two.stop();
      dir.remove();
    }
  });

  test('rotates by itself when the active key is older than DEPUTY_KEY_ROTATION_DAYS', async () => {
    const dir = tempDir();
    const dbPath = `${dir.path}/deputy.db`;
    const deputy = await startDeputy({ dbPath, env: { ...FAST_KEYS, DEPUTY_SECRET: 'r'.repeat(40), DEPUTY_KEY_ROTATION_DAYS: '30' } });
    try {
      await deputy.deputy.keys.rotateIfDue();
      assert.equal((await deputy.deputy.keys.describe()).length, 1, 'a new key is not due yet');

      await sqlOn(dbPath, 'update signing_keys set activates_at = activates_at - 31 * 86400, created_at = created_at - 31 * 86400');

      // The refresh timer runs every half pre-publication period (500 ms here).
      for (let i = 0; i < 40 && (await deputy.deputy.keys.describe()).length === 1; i += 1) await sleep(50);
      assert.deepEqual((await deputy.deputy.keys.describe()).map((k) => k.state), ['active', 'next']);
    } finally {
      await deputy.stop();
      dir.remove();
    }
  });
});
