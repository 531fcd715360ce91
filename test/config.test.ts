/**
 * Configuration mistakes, as an operator meets them: `deputy serve` started with a bad
 * environment exits with status 1 and one `deputy: …` line that names the variable, never a
 * stack trace. The defaults and bounds of loadConfig are checked directly.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ConfigError, loadConfig, type Env } from '../src/config.ts';

const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));
const SPAWN_TIMEOUT_MS = 20_000;
const SECRET_40 = 'x'.repeat(40);

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

const tempDirs: string[] = [];
after(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

/**
 * Runs `deputy serve` with only PATH, HOME, a DEPUTY_DB in a fresh temporary directory and the
 * variables given. PORT 0 and a loopback host keep a server that wrongly starts off port 4000;
 * the spawn timeout then fails the test instead of hanging it.
 */
function serve(vars: Env): Promise<Run> {
  const dir = mkdtempSync(join(tmpdir(), 'deputy-config-'));
  tempDirs.push(dir);
  const env: Env = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    DEPUTY_DB: join(dir, 'deputy.db'),
    PORT: '0',
    DEPUTY_HOST: '127.0.0.1',
    ...vars,
  };

  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'serve'], {
      cwd: REPO_ROOT,
      env: env as NodeJS.ProcessEnv,
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: SPAWN_TIMEOUT_MS,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

/** Exit status 1, one `deputy: ` line mentioning every fragment, and no stack trace. */
function assertConfigError(run: Run, ...fragments: string[]): void {
  assert.equal(run.signal, null, `deputy did not exit by itself (killed by ${run.signal}); stderr:\n${run.stderr}`);
  assert.equal(run.code, 1, `exit status; stderr:\n${run.stderr}`);

  const lines = run.stderr
    .split('\n')
    .filter((line) => line.trim() !== '' && !line.startsWith('oidc-provider'));
  assert.equal(lines.some((line) => /^\s+at /.test(line)), false, `stack trace on stderr:\n${run.stderr}`);
  assert.equal(lines.length, 1, `expected exactly one line on stderr, got:\n${run.stderr}`);

  const [line = ''] = lines;
  assert.ok(line.startsWith('deputy: '), `expected a 'deputy: ' line, got: ${line}`);
  for (const fragment of fragments) {
    assert.ok(line.includes(fragment), `expected '${fragment}' in: ${line}`);
  }
}

describe('DEPUTY_DB', () => {
  const secret = { DEPUTY_SECRET: 'x'.repeat(40) };

  test('takes a file path, a Windows path or a postgres:// URL', () => {
    for (const value of ['./data/deputy.db', '/var/lib/deputy/a:b.db', 'C:\\deputy\\deputy.db', ':memory:']) {
      assert.equal(loadConfig({ DEPUTY_DB: value }).dbPath, value);
    }
    for (const value of ['postgres://deputy@127.0.0.1:5432/deputy', 'postgresql://u:p%40ss@db.example/deputy?sslmode=require']) {
      assert.equal(loadConfig({ DEPUTY_DB: value, ...secret }).dbPath, value);
    }
  });

  test('refuses what looks like a URL but is no postgres:// one, rather than making a file of that name', () => {
    for (const value of ['postgress://deputy@db/deputy', 'pg://db/deputy', 'postgres:/deputy@db/deputy', 'postgres:deputy']) {
      assert.throws(() => loadConfig({ DEPUTY_DB: value, ...secret }), {
        name: 'ConfigError',
        message: /^DEPUTY_DB must be a SQLite file path or a postgres:\/\/ URL, not '[a-z]+:…'$/,
      });
    }
  });

  test('refuses a postgres:// URL whose password is not percent-encoded, without repeating it', () => {
    assert.throws(() => loadConfig({ DEPUTY_DB: 'postgres://deputy:p@ss/w0rd@db.example/deputy', ...secret }), (error: Error) => {
      assert.equal(error.name, 'ConfigError');
      assert.match(error.message, /^DEPUTY_DB is not a valid postgres:\/\/ URL \(a password holding @.*@ as %40\)$/);
      assert.ok(!error.message.includes('w0rd'));
      return true;
    });
  });
});

describe('deputy serve with a bad configuration', () => {
  let notFoundServer: Server;
  let notFoundIssuer: string;

  before(async () => {
    notFoundServer = createServer((_req, res) => {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
    });
    await new Promise<void>((resolve) => notFoundServer.listen(0, '127.0.0.1', resolve));
    notFoundIssuer = `http://127.0.0.1:${(notFoundServer.address() as AddressInfo).port}`;
  });

  after(async () => {
    notFoundServer.closeAllConnections();
    await new Promise((resolve) => notFoundServer.close(resolve));
  });

  test('refuses a DEPUTY_ISSUER with a trailing slash', async () => {
    assertConfigError(await serve({ DEPUTY_ISSUER: 'http://localhost:4000/' }), 'DEPUTY_ISSUER', 'slash');
  });

  test('refuses a DEPUTY_ISSUER that is not a URL', async () => {
    assertConfigError(await serve({ DEPUTY_ISSUER: 'not a url' }), 'DEPUTY_ISSUER', "'not a url'");
  });

  test('refuses a PORT that is not a number', async () => {
    assertConfigError(await serve({ PORT: 'abc' }), 'PORT', "'abc'");
  });

  test('refuses a PORT above 65535', async () => {
    assertConfigError(await serve({ PORT: '70000' }), 'PORT', "'70000'");
  });

  test('refuses production without DEPUTY_UPSTREAM_ISSUER', async () => {
    const run = await serve({
      NODE_ENV: 'production',
      DEPUTY_ISSUER: 'https://deputy.example',
      DEPUTY_SECRET: SECRET_40,
    });
    assertConfigError(run, 'DEPUTY_UPSTREAM_ISSUER', 'NODE_ENV=production');
  });

  test('refuses production without DEPUTY_SECRET', async () => {
    const run = await serve({
      NODE_ENV: 'production',
      DEPUTY_ISSUER: 'https://deputy.example',
      DEPUTY_UPSTREAM_ISSUER: 'https://idp.example',
      DEPUTY_UPSTREAM_CLIENT_ID: 'deputy',
      DEPUTY_UPSTREAM_CLIENT_SECRET: 'upstream-secret',
    });
    assertConfigError(run, 'DEPUTY_SECRET', 'NODE_ENV=production');
  });

  test('refuses a PostgreSQL DEPUTY_DB without DEPUTY_SECRET, which every process must share', async () => {
    assertConfigError(await serve({ DEPUTY_DB: 'postgres://deputy@127.0.0.1:1/deputy' }), 'DEPUTY_SECRET', 'PostgreSQL');
  });

  test('refuses a PostgreSQL server it cannot reach, naming it without its password', async () => {
    const run = await serve({ DEPUTY_DB: 'postgres://deputy:hunter2-secret@127.0.0.1:1/deputy', DEPUTY_SECRET: SECRET_40 });
    assertConfigError(run, 'DEPUTY_DB: cannot connect to PostgreSQL at postgres://deputy:***@127.0.0.1:1/deputy', 'ECONNREFUSED');
    assert.ok(!run.stderr.includes('hunter2'), run.stderr);
  });

  test('refuses DEPUTY_UPSTREAM_ISSUER without DEPUTY_UPSTREAM_CLIENT_ID', async () => {
    const run = await serve({
      DEPUTY_UPSTREAM_ISSUER: 'https://idp.example',
      DEPUTY_UPSTREAM_CLIENT_SECRET: 'upstream-secret',
    });
    assertConfigError(run, 'DEPUTY_UPSTREAM_CLIENT_ID');
  });

  test('refuses an upstream issuer whose discovery fails', async () => {
    const run = await serve({
      DEPUTY_UPSTREAM_ISSUER: notFoundIssuer,
      DEPUTY_UPSTREAM_ALLOW_HTTP: 'true',
      DEPUTY_UPSTREAM_CLIENT_ID: 'deputy',
      DEPUTY_UPSTREAM_CLIENT_SECRET: 'upstream-secret',
    });
    assertConfigError(run, 'DEPUTY_UPSTREAM_ISSUER', 'discovery', notFoundIssuer);
  });

  test('refuses an http upstream issuer without DEPUTY_UPSTREAM_ALLOW_HTTP', async () => {
    const run = await serve({
      DEPUTY_UPSTREAM_ISSUER: notFoundIssuer,
      DEPUTY_UPSTREAM_CLIENT_ID: 'deputy',
      DEPUTY_UPSTREAM_CLIENT_SECRET: 'upstream-secret',
    });
    assertConfigError(run, 'DEPUTY_UPSTREAM_ALLOW_HTTP');
  });
});

describe('loadConfig', () => {
  test('defaults to a local development setup', () => {
    const config = loadConfig({});
    assert.equal(config.production, false);
    assert.equal(config.issuer, 'http://localhost:4000');
    assert.equal(config.port, 4000);
    assert.equal(config.dbPath, './data/deputy.db');
    assert.equal(config.idJagTtl, 300);
    assert.equal(config.upstream, null);
    assert.equal(config.secret, undefined);
  });

  test('DEPUTY_DB_POOL is 10 connections unless set, 1 to 100', () => {
    assert.equal(loadConfig({}).dbPool, 10);
    assert.equal(loadConfig({ DEPUTY_DB_POOL: '40' }).dbPool, 40);
    for (const value of ['0', '101', 'many']) {
      assert.throws(() => loadConfig({ DEPUTY_DB_POOL: value }), { name: 'ConfigError', message: /^DEPUTY_DB_POOL/ });
    }
  });

  test('accepts DEPUTY_ID_JAG_TTL from 1 to 900 seconds', () => {
    assert.equal(loadConfig({ DEPUTY_ID_JAG_TTL: '1' }).idJagTtl, 1);
    assert.equal(loadConfig({ DEPUTY_ID_JAG_TTL: '900' }).idJagTtl, 900);
  });

  test('refuses a DEPUTY_ID_JAG_TTL above 900 seconds', () => {
    assert.throws(() => loadConfig({ DEPUTY_ID_JAG_TTL: '901' }), {
      name: 'ConfigError',
      message: /^DEPUTY_ID_JAG_TTL .*'901'/,
    });
  });

  test('refuses a DEPUTY_ID_JAG_TTL of 0', () => {
    assert.throws(() => loadConfig({ DEPUTY_ID_JAG_TTL: '0' }), ConfigError);
  });

  test('refuses DEPUTY_UPSTREAM_ALLOW_HTTP in production, even with an https upstream', () => {
    const production: Env = {
      NODE_ENV: 'production',
      DEPUTY_ISSUER: 'https://deputy.example',
      DEPUTY_SECRET: SECRET_40,
      DEPUTY_UPSTREAM_ISSUER: 'https://idp.example',
      DEPUTY_UPSTREAM_CLIENT_ID: 'deputy',
      DEPUTY_UPSTREAM_CLIENT_SECRET: 'upstream-secret',
    };
    assert.equal(loadConfig(production).upstream?.allowHttp, false);
    assert.throws(() => loadConfig({ ...production, DEPUTY_UPSTREAM_ALLOW_HTTP: 'true' }), {
      name: 'ConfigError',
      message: /^DEPUTY_UPSTREAM_ALLOW_HTTP is refused when NODE_ENV=production/,
    });
  });
});
