/**
 * Running Deputy in production: request ids in every log line, metrics, health and
 * readiness, rate limits, body limits, the Content-Security-Policy, and a graceful SIGTERM,
 * all over real HTTP.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { once } from 'node:events';
import { existsSync, statSync } from 'node:fs';
import { request } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { DrizzleQueryError } from 'drizzle-orm';
import { createLogger } from '../src/log.ts';
import { Browser, formAction } from './helpers/browser.ts';
import { cliEnvFor, listen, startDeputy, tempDir, TEST_DIALECT, upstreamEnv, type RunningDeputy } from './helpers/deputy.ts';
import { addAgent, basic, connectByDevice, ID_TOKEN, mint, post, type TestAgent } from './helpers/agent.ts';
import { startAuthMdService, type AuthMdService } from './helpers/services.ts';
import { startUpstream, type TestUpstream } from './helpers/upstream.ts';

/** Log records written by Deputy's own logger configuration, kept in memory. */
function capturedLog(): { lines: Record<string, unknown>[]; stream: Writable } {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') lines.push(JSON.parse(line));
      done();
    },
  });
  return { lines, stream };
}

/** The value of one sample in Prometheus text, or undefined. */
function sample(text: string, name: string, labels = ''): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

async function metricsText(deputy: RunningDeputy, headers: Record<string, string> = {}): Promise<string> {
  const response = await fetch(`${deputy.url}/metrics`, { headers });
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^text\/plain/);
  return response.text();
}

describe('logs, metrics and health on a working Deputy', () => {
  const dir = tempDir();
  const log = capturedLog();
  let upstream: TestUpstream;
  let deputy: RunningDeputy;
  let service: AuthMdService;
  let agent: TestAgent;
  const ada = new Browser();
  let idToken: string;

  before(async () => {
    const listening = await listen();
    upstream = await startUpstream(`${listening.url}/login/callback`);
    upstream.accounts.set('ada', { sub: 'ada', email: 'ada@example.com', email_verified: true, name: 'Ada' });
    deputy = await startDeputy({
      dbPath: `${dir.path}/deputy.db`,
      env: { ...upstreamEnv(upstream), DEPUTY_ALLOW_LOOPBACK_SERVICES: 'true' },
      listening,
      log: createLogger('info', 'json', log.stream),
    });
    service = await startAuthMdService({ trustedIssuers: [deputy.url], name: 'Acme Files' });
    agent = await addAgent(deputy, 'Research Bot');
    const form = await ada.go(`${deputy.url}/login`);
    await ada.submit(formAction(form), { sub: 'ada' });
    idToken = (await connectByDevice(deputy, agent, ada)).id_token;
  });

  after(async () => {
    await deputy.stop();
    await service.close();
    await upstream.close();
    dir.remove();
  });

  test('every request has an id, in its answer and in each line logged while serving it', async () => {
    const response = await fetch(`${deputy.url}/token`, {
      method: 'POST',
      headers: { authorization: basic(agent), 'content-type': 'application/x-www-form-urlencoded', 'x-request-id': 'trace-42' },
      body: new URLSearchParams({
        grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
        requested_token_type: 'urn:ietf:params:oauth:token-type:id-jag',
        audience: service.issuer,
        subject_token: idToken,
        subject_token_type: ID_TOKEN,
      }).toString(),
    });
    assert.equal(response.status, 400);
    assert.equal(response.headers.get('x-request-id'), 'trace-42');

    const mine = log.lines.filter((line) => line.req_id === 'trace-42');
    const access = mine.find((line) => line.event === 'request');
    assert.deepEqual(
      { method: access?.method, path: access?.path, status: access?.status },
      { method: 'POST', path: '/token', status: 400 },
    );
    assert.equal(typeof access?.ms, 'number');
    const domain = mine.find((line) => line.event === 'mint');
    assert.equal(domain?.result, 'consent_required');
    assert.equal(domain?.client, agent.clientId);

    // An id that could break a log line is replaced with a fresh one.
    const odd = await fetch(`${deputy.url}/healthz`, { headers: { 'x-request-id': 'a b\tc' } });
    assert.match(odd.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/);
  });

  test('metrics count mints by result and error code, and describe stored state', async () => {
    const before = await metricsText(deputy);
    const consent = await mint(deputy, agent, { audience: service.issuer, subject_token: idToken, subject_token_type: ID_TOKEN });
    assert.equal(consent.status, 400);
    await ada.go(consent.body.consent_uri as string).then(async (page) => {
      const csrf = /name="csrf" value="([^"]+)"/.exec(page.body)?.[1] as string;
      const done = await ada.submit(consent.body.consent_uri as string, { csrf, decision: 'approve', mode: 'always' });
      assert.equal(done.status, 200);
    });
    const issued = await mint(deputy, agent, { audience: service.issuer, subject_token: idToken, subject_token_type: ID_TOKEN });
    assert.equal(issued.status, 200);
    const refused = await mint(deputy, agent, { audience: service.issuer, subject_token: 'not-a-token', subject_token_type: ID_TOKEN });
    assert.equal(refused.status, 400);
    assert.equal(refused.body.error, 'invalid_grant');

    const text = await metricsText(deputy);
    const delta = (labels: string) =>
      (sample(text, 'deputy_mints_total', labels) ?? 0) - (sample(before, 'deputy_mints_total', labels) ?? 0);
    assert.equal(delta('{result="issued",error=""}'), 1);
    assert.equal(delta('{result="consent_required",error="consent_required"}'), 1);
    assert.equal(delta('{result="refused",error="invalid_grant"}'), 1);
    assert.equal(sample(text, 'deputy_mint_duration_seconds_count', '{result="issued"}'), 1);
    assert.equal(sample(text, 'deputy_active_delegations'), 1);
    assert.equal(sample(text, 'deputy_outbox_events', '{state="pending"}'), 0);
    const age = sample(text, 'deputy_signing_key_age_seconds') as number;
    assert.ok(age >= 0 && age < 600, `key age ${age}`);
    assert.ok((sample(text, 'deputy_process_resident_memory_bytes') ?? 0) > 0);
  });

  test('/healthz answers while alive; /readyz checks the database and keys', async () => {
    const health = await fetch(`${deputy.url}/healthz`);
    assert.equal(health.status, 200);
    assert.deepEqual(await health.json(), { status: 'ok' });
    const ready = await fetch(`${deputy.url}/readyz`);
    assert.equal(ready.status, 200);
    assert.deepEqual(await ready.json(), {
      status: 'ready',
      checks: { database: 'ok', keys: 'ok', shutdown: 'no' },
    });
  });

  test('deputy backup copies the live database, and refuses to overwrite', async () => {
    const file = `${dir.path}/backup.db`;
    const env = { ...process.env, ...(await cliEnvFor(deputy.dbPath)) };
    const run = promisify(execFile);
    if (TEST_DIALECT === 'postgres') {
      await assert.rejects(run(process.execPath, ['--import', 'tsx', 'src/main.ts', 'backup', file], { env }), (error: { code: number; stderr: string }) => {
        assert.equal(error.code, 1);
        assert.equal(error.stderr.trim(), 'deputy: backup copies a SQLite database; back up PostgreSQL with its own tools (pg_dump)');
        return true;
      });
      assert.equal(existsSync(file), false);
      return;
    }
    const { stdout } = await run(process.execPath, ['--import', 'tsx', 'src/main.ts', 'backup', file], { env });
    assert.match(stdout, /^Backed up .* to .*backup\.db \(\d+ pages\)\./);
    assert.equal(statSync(file).mode & 0o777, 0o600, 'the backup is the owner\'s alone');
    assert.equal(statSync(deputy.dbPath).mode & 0o777, 0o600, 'so is the database');
    const copy = new Database(file, { readonly: true });
    try {
      const row = copy.prepare('select name from agents where client_id = ?').get(agent.clientId) as { name: string };
      assert.equal(row.name, 'Research Bot');
      assert.equal((copy.prepare('select count(*) as n from delegations').get() as { n: number }).n, 1);
    } finally {
      copy.close();
    }
    await assert.rejects(run(process.execPath, ['--import', 'tsx', 'src/main.ts', 'backup', file], { env }), (error: { code: number; stderr: string }) => {
      assert.equal(error.code, 1);
      assert.match(error.stderr, /exists; Deputy does not overwrite a backup/);
      return true;
    });
  });

  test('a revocation event is sent outside the request that revoked it: its lines carry no request id', async () => {
    const home = await ada.go(`${deputy.url}/`);
    const id = /\/delegations\/(dlg_[A-Za-z0-9_-]+)\/revoke/.exec(home.body)?.[1];
    const csrf = /name="csrf" value="([^"]+)"/.exec(home.body)?.[1] as string;
    const done = await ada.go(`${deputy.url}/delegations/${id}/revoke`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-request-id': 'revoke-7' },
      body: new URLSearchParams({ csrf }).toString(),
    });
    assert.equal(done.status, 200);
    assert.equal(log.lines.find((line) => line.event === 'delegation_revoked')?.req_id, 'revoke-7');

    for (let i = 0; i < 200 && !log.lines.some((line) => line.event === 'revocation_delivered'); i += 1) await sleep(25);
    const delivered = log.lines.find((line) => line.event === 'revocation_delivered');
    assert.equal(delivered?.audience, service.issuer);
    assert.equal(delivered?.req_id, undefined);
  });

  test('pages carry a Content-Security-Policy without inline script', async () => {
    const response = await fetch(`${deputy.url}/`);
    assert.equal(
      response.headers.get('content-security-policy'),
      "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https: http: data:; " +
        "font-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    assert.equal(response.headers.get('referrer-policy'), 'no-referrer');
  });
});

describe('readiness while stopping, and protected metrics', () => {
  const dir = tempDir();
  let deputy: RunningDeputy;

  before(async () => {
    deputy = await startDeputy({
      dbPath: `${dir.path}/deputy.db`,
      env: { DEPUTY_METRICS_TOKEN: 'metrics-token-0123456789' },
    });
  });

  after(async () => {
    await deputy.stop();
    dir.remove();
  });

  test('/metrics needs the bearer token when one is configured', async () => {
    const without = await fetch(`${deputy.url}/metrics`);
    assert.equal(without.status, 401);
    assert.equal(without.headers.get('www-authenticate'), 'Bearer realm="deputy-metrics"');
    assert.equal(((await without.json()) as { error: string }).error, 'invalid_token');
    const wrong = await fetch(`${deputy.url}/metrics`, { headers: { authorization: 'Bearer metrics-token-9876543210' } });
    assert.equal(wrong.status, 401);
    const text = await metricsText(deputy, { authorization: 'Bearer metrics-token-0123456789' });
    assert.match(text, /# TYPE deputy_mints_total counter/);
  });

  test('/readyz answers 503 once shutdown begins, and responses close their connections', async () => {
    deputy.deputy.beginShutdown();
    const ready = await fetch(`${deputy.url}/readyz`);
    assert.equal(ready.status, 503);
    assert.equal(ready.headers.get('connection'), 'close');
    assert.deepEqual(await ready.json(), {
      status: 'unavailable',
      checks: { database: 'ok', keys: 'ok', shutdown: 'in progress' },
    });
    const health = await fetch(`${deputy.url}/healthz`);
    assert.equal(health.status, 200);
  });
});

describe('limits', () => {
  const dir = tempDir();
  let deputy: RunningDeputy;
  let agent: TestAgent;
  let other: TestAgent;

  before(async () => {
    deputy = await startDeputy({
      dbPath: `${dir.path}/deputy.db`,
      env: {
        DEPUTY_RATE_LIMIT_TOKEN: '3',
        DEPUTY_RATE_LIMIT_CLIENT_AUTH_FAILURES: '4',
        DEPUTY_RATE_LIMIT_SIGN_IN: '2',
        DEPUTY_RATE_LIMIT_CONSENT: '2',
        DEPUTY_BODY_LIMIT: '2048',
      },
    });
    agent = await addAgent(deputy, 'Busy Bot');
    other = await addAgent(deputy, 'Quiet Bot');
  });

  after(async () => {
    await deputy.stop();
    dir.remove();
  });

  const refresh = (who: TestAgent, secret = who.clientSecret) =>
    post(`${deputy.url}/token`, { grant_type: 'refresh_token', refresh_token: 'unknown' }, {
      authorization: basic({ clientId: who.clientId, clientSecret: secret }),
    });

  test('the token endpoint allows each client its own number of requests, then 429 with Retry-After', async () => {
    // Failed authentications under a client's name do not spend that client's allowance.
    for (let i = 0; i < 3; i += 1) assert.equal((await refresh(agent, 'wrong')).status, 401);
    // Nor do requests refused before client authentication, such as a body that is no form:
    // anyone can name a client.
    for (let i = 0; i < 3; i += 1) {
      const notForm = await fetch(`${deputy.url}/token`, {
        method: 'POST',
        headers: { authorization: basic({ clientId: agent.clientId, clientSecret: 'unknown' }), 'content-type': 'text/plain' },
        body: 'x',
      });
      assert.equal(notForm.status, 400);
    }
    for (let i = 0; i < 3; i += 1) {
      const answer = await refresh(agent);
      assert.equal(answer.status, 400);
      assert.equal(answer.body.error, 'invalid_grant');
    }
    const limited = await refresh(agent);
    assert.equal(limited.status, 429);
    assert.deepEqual(Object.keys(limited.body).sort(), ['error', 'error_description']);
    assert.equal(limited.body.error, 'temporarily_unavailable');
    const retryAfter = Number(limited.headers.get('retry-after'));
    assert.ok(retryAfter >= 1 && retryAfter <= 60, `Retry-After ${retryAfter}`);

    // Another client is not affected.
    assert.equal((await refresh(other)).status, 400);
  });

  test('failed client authentications are limited per address', async () => {
    // Three failures were spent above; the fourth reaches the limit, after which even a
    // correct secret from this address waits.
    assert.equal((await refresh(other, 'wrong')).status, 401);
    const limited = await refresh(other);
    assert.equal(limited.status, 429);
    assert.equal(limited.body.error, 'temporarily_unavailable');
  });

  test('sign-in and consent pages are limited per address with a readable page', async () => {
    for (let i = 0; i < 2; i += 1) assert.equal((await fetch(`${deputy.url}/login/callback?state=x`)).status, 400);
    const signIn = await fetch(`${deputy.url}/login/callback?state=x`);
    assert.equal(signIn.status, 429);
    assert.match(signIn.headers.get('content-type') ?? '', /^text\/html/);
    assert.ok(Number(signIn.headers.get('retry-after')) >= 1);
    assert.match(await signIn.text(), /Too many requests/);
    // Starting one more is refused too: each start stores a sign-in attempt.
    const start = await fetch(`${deputy.url}/login`, { redirect: 'manual' });
    assert.equal(start.status, 429);

    for (let i = 0; i < 2; i += 1) assert.notEqual((await fetch(`${deputy.url}/consent/none`)).status, 429);
    const consent = await fetch(`${deputy.url}/consent/none`);
    assert.equal(consent.status, 429);
    assert.match(await consent.text(), /Too many requests/);
  });

  test('bodies above the limit get 413: JSON at the token endpoint, a page elsewhere', async () => {
    const big = `grant_type=refresh_token&padding=${'x'.repeat(4096)}`;
    const token = await fetch(`${deputy.url}/device_authorization`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basic(other) },
      body: big,
    });
    assert.equal(token.status, 413);
    assert.deepEqual(await token.json(), {
      error: 'invalid_request',
      error_description: 'the request body is larger than 2048 bytes',
    });
    const page = await fetch(`${deputy.url}/delegations`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: big,
    });
    assert.equal(page.status, 413);
    assert.match(await page.text(), /Request too large/);
  });
});

describe('bodies without a length', () => {
  test('are held to the same limit', async () => {
    const dir = tempDir();
    const deputy = await startDeputy({ dbPath: `${dir.path}/deputy.db`, env: { DEPUTY_BODY_LIMIT: '2048' } });
    try {
      /** A body sent as a stream: fetch declares no length and sends it chunked. */
      const chunked = (path: string, text: string, headers: Record<string, string> = {}) =>
        fetch(`${deputy.url}${path}`, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
          body: new Blob([text]).stream(),
          duplex: 'half',
        } as RequestInit);

      const fresh = await addAgent(deputy, 'Streaming Bot');
      const over = await chunked('/token', `grant_type=refresh_token&padding=${'x'.repeat(4096)}`, { authorization: basic(fresh) });
      assert.equal(over.status, 413);
      assert.deepEqual(await over.json(), {
        error: 'invalid_request',
        error_description: 'the request body is larger than 2048 bytes',
      });

      // Under the limit it is read and answered as if it had been sent with its length.
      const under = await chunked('/token', 'grant_type=refresh_token&refresh_token=unknown', { authorization: basic(fresh) });
      assert.equal(under.status, 400, await under.clone().text());
      assert.equal(((await under.json()) as { error: string }).error, 'invalid_grant');

      const code = await chunked('/device', `xsrf=x&user_code=${'x'.repeat(4096)}`);
      assert.equal(code.status, 413);
      assert.match(await code.text(), /Request too large/);

      const page = await chunked('/logout', `csrf=${'x'.repeat(4096)}`);
      assert.equal(page.status, 413);
      assert.match(await page.text(), /Request Entity Too Large|too large/i);
    } finally {
      await deputy.stop();
      dir.remove();
    }
  });
});

describe('SIGTERM', () => {
  test('stops accepting, finishes the request in flight, and exits 0', async () => {
    const dir = tempDir();
    const reserved = await listen();
    const port = new URL(reserved.url).port;
    reserved.server.close();
    await once(reserved.server, 'close');

    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'serve'], {
      env: {
        ...process.env,
        NODE_ENV: 'development',
        PORT: port,
        DEPUTY_ISSUER: `http://127.0.0.1:${port}`,
        DEPUTY_DB: `${dir.path}/deputy.db`,
        DEPUTY_LOG_FORMAT: 'json',
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString('utf8');
    });
    try {
      for (let i = 0; i < 100 && !stderr.includes('"event":"listening"'); i += 1) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assert.match(stderr, /"event":"listening"/);

      // A request whose body is only half sent when the signal arrives.
      const body = 'grant_type=refresh_token&refresh_token=unknown';
      const inFlight = request(`http://127.0.0.1:${port}/token`, {
        method: 'POST',
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          'content-length': String(Buffer.byteLength(body)),
        },
      });
      const answered = new Promise<{ status: number; text: string }>((resolve, reject) => {
        inFlight.on('response', (response) => {
          let text = '';
          response.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
          response.on('end', () => resolve({ status: response.statusCode as number, text }));
        });
        inFlight.on('error', reject);
      });
      inFlight.write(body.slice(0, 10));
      await new Promise((resolve) => setTimeout(resolve, 200));

      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      for (let i = 0; i < 50 && !stderr.includes('"event":"stopping"'); i += 1) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      // No new connections once stopping.
      await assert.rejects(fetch(`http://127.0.0.1:${port}/healthz`));

      inFlight.end(body.slice(10));
      const answer = await answered;
      // Answered in full: the refusal of a token request naming no client.
      assert.equal(answer.status, 401, answer.text);
      assert.equal((JSON.parse(answer.text) as { error: string }).error, 'invalid_client');

      const [code] = await exited;
      assert.equal(code, 0, stderr);
      assert.match(stderr, /"event":"stopped"/);
    } finally {
      child.kill('SIGKILL');
      dir.remove();
    }
  });
});

describe('the log', () => {
  test('a failed query is logged without the values it was given', () => {
    const log = capturedLog();
    const logger = createLogger('info', 'json', log.stream);
    const cause = Object.assign(new Error('duplicate key value violates unique constraint "x_pkey"'), {
      code: '23505',
      detail: 'Key (code_verifier)=(pkce-verifier-value) already exists.',
    });
    logger.error({ err: new DrizzleQueryError('insert into "login_attempts" values ($1, $2)', ['state-hash', 'pkce-verifier-value'], cause) }, 'failed');
    const [line] = log.lines;
    const text = JSON.stringify(line);
    assert.ok(!text.includes('pkce-verifier-value'), text);
    const err = line?.err as Record<string, unknown>;
    assert.equal(err.message, 'Failed query: insert into "login_attempts" values ($1, $2)');
    assert.deepEqual(err.cause, { type: 'Error', message: 'duplicate key value violates unique constraint "x_pkey"', code: '23505' });
  });
});

describe('behind a trusted proxy', () => {
  const dir = tempDir();
  let deputy: RunningDeputy;

  before(async () => {
    deputy = await startDeputy({
      dbPath: `${dir.path}/deputy.db`,
      env: { DEPUTY_TRUST_PROXY: 'true', DEPUTY_RATE_LIMIT_SIGN_IN: '2' },
    });
  });

  after(async () => {
    await deputy.stop();
    dir.remove();
  });

  test('the address is the one the proxy added, whatever the client put before it', async () => {
    const signIn = (forwarded: string) =>
      fetch(`${deputy.url}/login/callback?state=x`, { headers: { 'x-forwarded-for': forwarded } });
    assert.equal((await signIn('10.0.0.1, 192.0.2.7')).status, 400);
    assert.equal((await signIn('10.0.0.2, 192.0.2.7')).status, 400);
    assert.equal((await signIn('10.0.0.3, 192.0.2.7')).status, 429);
    // Another client of the proxy has its own allowance.
    assert.equal((await signIn('10.0.0.3, 192.0.2.8')).status, 400);
  });
});
