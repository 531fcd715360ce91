/**
 * `deputy agents …` end to end: the real command line against a database in a temporary
 * directory. Registration prints a client secret once and stores only its SHA-256; agents with
 * keys get private_key_jwt; bad arguments exit with status 2 and say what is wrong.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { exportJWK, generateKeyPair } from 'jose';
import { runCli, type CliRun } from './helpers/processes.ts';


type Run = CliRun;

interface AgentJson {
  client_id: string;
  client_name: string;
  logo_uri: string | null;
  redirect_uris: string[];
  token_endpoint_auth_method: string;
  jwks_uri: string | null;
  jwks: { keys: Record<string, unknown>[] } | null;
  created_at: string;
  client_secret?: string;
}

const tempDirs: string[] = [];
after(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'deputy-agents-'));
  tempDirs.push(dir);
  return dir;
}

/** A fresh Deputy database in its own temporary directory, and a way to run the CLI on it. */
function freshDeputy() {
  const dir = tempDir();
  const dbPath = join(dir, 'deputy.db');
  const run = (...args: string[]) => deputy(dbPath, args);
  return { dir, dbPath, run };
}

/** Runs `deputy ARGS…` with a minimal environment; a hung process is killed and fails the test. */
function deputy(dbPath: string, args: string[]): Promise<Run> {
  return runCli({ DEPUTY_DB: dbPath }, ...args);
}

function assertSucceeded(run: Run): void {
  assert.equal(run.code, 0, `exit status; stderr:\n${run.stderr}`);
}

/** Exit status 2, the reason on stderr after `deputy: `, and nothing on stdout. */
function assertRefused(run: Run, reason: string): void {
  assert.equal(run.code, 2, `exit status; stdout:\n${run.stdout}\nstderr:\n${run.stderr}`);
  assert.ok(run.stderr.includes(`deputy: ${reason}`), `expected 'deputy: ${reason}' on stderr, got:\n${run.stderr}`);
  assert.equal(run.stdout, '');
}

function parseJson<T>(run: Run): T {
  assertSucceeded(run);
  return JSON.parse(run.stdout) as T;
}

function sha256Hex(value: string): string {
  return createHash('sha256').update(value).digest('hex');
}

function writeJwks(jwk: Record<string, unknown>): string {
  const file = join(tempDir(), 'jwks.json');
  writeFileSync(file, JSON.stringify({ keys: [jwk] }));
  return file;
}

describe('deputy agents add with a client secret', () => {
  const { dbPath, run } = freshDeputy();
  let registered: AgentJson;

  before(async () => {
    registered = parseJson<AgentJson>(await run('agents', 'add', '--name', 'Research Bot', '--json'));
  });

  test('prints JSON with a client_id and a client secret of at least 43 characters', () => {
    assert.match(registered.client_id, /^agt_/);
    assert.equal(registered.client_name, 'Research Bot');
    assert.equal(registered.token_endpoint_auth_method, 'client_secret_basic');
    assert.equal(typeof registered.client_secret, 'string');
    assert.ok((registered.client_secret ?? '').length >= 43, `secret too short: ${registered.client_secret}`);
  });

  test('writes the secret itself nowhere in the database files', () => {
    const secret = registered.client_secret ?? '';
    assert.notEqual(secret, '');
    const files = [dbPath, `${dbPath}-wal`].filter((file) => existsSync(file));
    assert.ok(files.includes(dbPath));
    for (const file of files) {
      assert.equal(readFileSync(file).includes(secret), false, `the client secret is in ${file}`);
    }
  });

  test('stores the SHA-256 of the secret', () => {
    const db = new Database(dbPath, { readonly: true });
    try {
      const row = db.prepare('SELECT secret_hash FROM agents WHERE client_id = ?').get(registered.client_id) as
        | { secret_hash: string | null }
        | undefined;
      assert.deepEqual(row, { secret_hash: sha256Hex(registered.client_secret ?? '') });
    } finally {
      db.close();
    }
  });

  test('prints the secret once, with a sentence, without --json', async () => {
    const result = await run('agents', 'add', '--name', 'Mail Bot');
    assertSucceeded(result);
    const secrets = [...result.stdout.matchAll(/client_secret:\s+(\S+)/g)].map((m) => m[1]);
    assert.equal(secrets.length, 1, result.stdout);
    assert.ok((secrets[0] ?? '').length >= 43);
    assert.equal(result.stdout.split(secrets[0] ?? '').length - 1, 1, 'the secret is printed exactly once');
    assert.match(result.stdout, /Registered agent 'Mail Bot'\./);
    assert.match(result.stdout, /The secret is shown only now/);
  });

  test('lists the agent', async () => {
    const result = await run('agents', 'list');
    assertSucceeded(result);
    const line = result.stdout.split('\n').find((l) => l.startsWith(registered.client_id));
    assert.ok(line, result.stdout);
    assert.match(line, /client_secret_basic\s+Research Bot$/);
  });

  test('lists the agent as JSON, without the secret', async () => {
    const listed = parseJson<AgentJson[]>(await run('agents', 'list', '--json'));
    const agent = listed.find((a) => a.client_id === registered.client_id);
    assert.ok(agent);
    assert.equal(agent.client_name, 'Research Bot');
    assert.equal('client_secret' in agent, false);
  });

  test('shows the agent as JSON without the secret or its hash', async () => {
    const result = await run('agents', 'show', registered.client_id, '--json');
    const shown = parseJson<Record<string, unknown>>(result);
    const { client_secret: _secret, ...withoutSecret } = registered;
    assert.deepEqual(shown, { ...withoutSecret, service_client_ids: {} });
    assert.equal(result.stdout.includes(registered.client_secret ?? ''), false);
    assert.equal(result.stdout.includes(sha256Hex(registered.client_secret ?? '')), false);
    assert.equal(/secret|hash/i.test(Object.keys(shown).join(' ')), false);
  });

  test('shows the agent as text', async () => {
    const result = await run('agents', 'show', registered.client_id);
    assertSucceeded(result);
    assert.match(result.stdout, new RegExp(`^client_id\\s+${registered.client_id}$`, 'm'));
    assert.match(result.stdout, /^client_name\s+Research Bot$/m);
    assert.equal(result.stdout.includes(registered.client_secret ?? ''), false);
  });
});

describe('deputy agents add with keys', () => {
  const { run } = freshDeputy();

  test('registers a public ES256 JWK Set for private_key_jwt, without a client secret', async () => {
    const { publicKey } = await generateKeyPair('ES256');
    const jwk = await exportJWK(publicKey);
    const agent = parseJson<AgentJson>(
      await run('agents', 'add', '--name', 'Keyed Bot', '--jwks', writeJwks({ ...jwk }), '--json'),
    );
    assert.equal(agent.token_endpoint_auth_method, 'private_key_jwt');
    assert.equal('client_secret' in agent, false);
    assert.equal(agent.jwks_uri, null);
    assert.deepEqual(agent.jwks, { keys: [{ ...jwk, alg: 'ES256' }] });
  });

  test('refuses a JWK Set with a private key', async () => {
    const { privateKey } = await generateKeyPair('ES256', { extractable: true });
    const jwk = await exportJWK(privateKey);
    assert.ok('d' in jwk);
    const file = writeJwks({ ...jwk });
    assertRefused(
      await run('agents', 'add', '--name', 'Leaky Bot', '--jwks', file),
      '--jwks key 0 contains private or symmetric key material',
    );
  });

  test('registers a --jwks-uri for private_key_jwt', async () => {
    const agent = parseJson<AgentJson>(
      await run('agents', 'add', '--name', 'Remote Keys Bot', '--jwks-uri', 'https://agent.example/jwks.json', '--json'),
    );
    assert.equal(agent.token_endpoint_auth_method, 'private_key_jwt');
    assert.equal(agent.jwks_uri, 'https://agent.example/jwks.json');
    assert.equal(agent.jwks, null);
    assert.equal('client_secret' in agent, false);
  });

  test('refuses --jwks and --jwks-uri together', async () => {
    const { publicKey } = await generateKeyPair('ES256');
    const file = writeJwks({ ...(await exportJWK(publicKey)) });
    assertRefused(
      await run('agents', 'add', '--name', 'Both Bot', '--jwks', file, '--jwks-uri', 'https://agent.example/jwks.json'),
      'give either --jwks or --jwks-uri, not both',
    );
  });
});

describe('deputy agents add with redirect and logo URIs', () => {
  const { run } = freshDeputy();

  test('refuses an http redirect URI that is not on loopback', async () => {
    assertRefused(
      await run('agents', 'add', '--name', 'Evil Bot', '--redirect-uri', 'http://evil.example/cb'),
      "--redirect-uri must be https, or http on localhost, got 'http://evil.example/cb'",
    );
  });

  test('accepts an http redirect URI on 127.0.0.1', async () => {
    const agent = parseJson<AgentJson>(
      await run('agents', 'add', '--name', 'Native Bot', '--redirect-uri', 'http://127.0.0.1:8080/cb', '--json'),
    );
    assert.deepEqual(agent.redirect_uris, ['http://127.0.0.1:8080/cb']);
  });

  test('refuses a --logo-uri that is not a URL', async () => {
    assertRefused(
      await run('agents', 'add', '--name', 'Logo Bot', '--logo-uri', 'not-a-url'),
      "--logo-uri must be an absolute URL, got 'not-a-url'",
    );
  });

  test('registers nothing for the refused agents', async () => {
    const names = parseJson<AgentJson[]>(await run('agents', 'list', '--json')).map((a) => a.client_name);
    assert.deepEqual(names, ['Native Bot']);
  });
});

describe('deputy agents arguments', () => {
  const { run } = freshDeputy();

  test('refuses agents add without --name', async () => {
    assertRefused(await run('agents', 'add', '--json'), 'agents add needs --name');
  });

  test('refuses an unknown option', async () => {
    assertRefused(await run('agents', 'add', '--name', 'X', '--bogus'), "Unknown option '--bogus'");
  });

  test('refuses an unknown subcommand and prints the usage', async () => {
    const result = await run('agents', 'frobnicate');
    assertRefused(result, "unknown agents subcommand 'frobnicate'");
    assert.ok(result.stderr.includes('Usage: deputy'), result.stderr);
  });
});

describe('deputy agents remove', () => {
  const { run } = freshDeputy();

  test('removes an agent, which then no longer lists', async () => {
    const agent = parseJson<AgentJson>(await run('agents', 'add', '--name', 'Doomed Bot', '--json'));
    const removed = await run('agents', 'remove', agent.client_id);
    assertSucceeded(removed);
    assert.match(removed.stdout, new RegExp(`^Removed agent ${agent.client_id}; 0 delegation\\(s\\) revoked\\.`));

    const listed = parseJson<AgentJson[]>(await run('agents', 'list', '--json'));
    assert.deepEqual(listed, []);
    const human = await run('agents', 'list');
    assertSucceeded(human);
    assert.equal(human.stdout.includes(agent.client_id), false);

    const record = parseJson<Record<string, unknown>>(await run('agents', 'show', agent.client_id, '--json'));
    assert.match(record.removed_at as string, /^\d{4}-\d{2}-\d{2}T/, 'the record stays, marked removed');
    const again = await run('agents', 'remove', agent.client_id);
    assert.equal(again.code, 1, again.stderr);
    assert.equal(again.stderr.trim(), `deputy: no agent with client id '${agent.client_id}'`, 'one line, no usage');
  });
});

describe('deputy agents map', () => {
  const { run } = freshDeputy();

  test('maps a client id at a service, shows it, and refuses bad values', async () => {
    const agent = parseJson<AgentJson>(await run('agents', 'add', '--name', 'Mapped Bot', '--json'));
    assertSucceeded(await run('agents', 'map', agent.client_id, '--audience', 'https://as.example', '--service-client-id', 'bot-at-as'));
    const shown = parseJson<Record<string, unknown>>(await run('agents', 'show', agent.client_id, '--json'));
    assert.deepEqual(shown.service_client_ids, { 'https://as.example': 'bot-at-as' });
    assertSucceeded(await run('agents', 'unmap', agent.client_id, '--audience', 'https://as.example'));
    const unmapped = parseJson<Record<string, unknown>>(await run('agents', 'show', agent.client_id, '--json'));
    assert.deepEqual(unmapped.service_client_ids, {});
    const again = await run('agents', 'unmap', agent.client_id, '--audience', 'https://as.example');
    assert.equal(again.code, 1);
    assert.equal(again.stderr.trim(), `deputy: agent '${agent.client_id}' has no client id mapped for 'https://as.example'`);

    assertRefused(
      await run('agents', 'map', agent.client_id, '--audience', 'notaurl', '--service-client-id', 'x'),
      "--audience must be the service's https issuer identifier, got 'notaurl'",
    );
    assertRefused(
      await run('agents', 'map', agent.client_id, '--audience', 'https://as.example', '--service-client-id', ''),
      '--service-client-id must be 1 to 255 printable characters',
    );
  });
});
