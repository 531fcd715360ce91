import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { calculateJwkThumbprint, importJWK, type CryptoKey, type JWK } from 'jose';
import { sqlOn, startDeputy, tempDir, TEST_DIALECT, type RunningDeputy } from './helpers/deputy.ts';

describe('published keys and metadata', () => {
  const dir = tempDir();
  let deputy: RunningDeputy;

  before(async () => {
    deputy = await startDeputy({ dbPath: `${dir.path}/deputy.db`, env: { DEPUTY_SECRET: 'x'.repeat(40) } });
  });

  after(async () => {
    await deputy.stop();
    dir.remove();
  });

  test('serves the JWKS with public ES256 keys whose kid is their RFC 7638 thumbprint', async () => {
    const response = await fetch(`${deputy.url}/.well-known/jwks.json`);
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('cache-control'), 'public, max-age=300');
    assert.match(response.headers.get('content-type') ?? '', /^application\/jwk-set\+json/);

    const { keys } = (await response.json()) as { keys: JWK[] };
    assert.equal(keys.length, 1);
    for (const jwk of keys) {
      assert.deepEqual(Object.keys(jwk).sort(), ['alg', 'crv', 'kid', 'kty', 'use', 'x', 'y']);
      assert.equal(jwk.alg, 'ES256');
      assert.equal(jwk.use, 'sig');
      assert.equal(jwk.kid, await calculateJwkThumbprint(jwk, 'sha256'));
      const key = await importJWK(jwk, 'ES256');
      assert.equal((key as CryptoKey).type, 'public');
    }
  });

  test('serves the same authorization server metadata under both well-known names', async () => {
    for (const path of ['/.well-known/oauth-authorization-server', '/.well-known/openid-configuration']) {
      const response = await fetch(`${deputy.url}${path}`);
      assert.equal(response.status, 200, path);
      assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
      const metadata = (await response.json()) as Record<string, unknown>;
      assert.equal(metadata.issuer, deputy.url);
      assert.equal(metadata.jwks_uri, `${deputy.url}/.well-known/jwks.json`);
      assert.deepEqual(metadata.identity_chaining_requested_token_types_supported, [
        'urn:ietf:params:oauth:token-type:id-jag',
      ]);
      assert.equal(metadata.token_endpoint, `${deputy.url}/token`);
      assert.equal(metadata.authorization_endpoint, `${deputy.url}/authorize`);
      assert.equal(metadata.device_authorization_endpoint, `${deputy.url}/device_authorization`);
      assert.deepEqual(metadata.grant_types_supported, [
        'authorization_code',
        'refresh_token',
        'urn:ietf:params:oauth:grant-type:device_code',
        'urn:ietf:params:oauth:grant-type:token-exchange',
      ]);
      assert.deepEqual(metadata.token_endpoint_auth_methods_supported, [
        'client_secret_basic',
        'client_secret_post',
        'private_key_jwt',
        'none',
      ]);
      assert.ok(!(metadata.token_endpoint_auth_signing_alg_values_supported as string[]).includes('none'));
      assert.deepEqual(metadata.code_challenge_methods_supported, ['S256']);
    }
  });

  test('builds every URL from the issuer, whatever Host the request names', async () => {
    const { request } = await import('node:http');
    const body = await new Promise<string>((resolve, reject) => {
      const url = new URL(`${deputy.url}/.well-known/openid-configuration`);
      const req = request(
        { host: url.hostname, port: url.port, path: url.pathname, headers: { host: 'evil.example', 'x-forwarded-host': 'evil.example' } },
        (res) => {
          let text = '';
          res.on('data', (chunk) => (text += chunk));
          res.on('end', () => resolve(text));
        },
      );
      req.on('error', reject);
      req.end();
    });
    const metadata = JSON.parse(body) as Record<string, string>;
    assert.equal(metadata.token_endpoint, `${deputy.url}/token`);
    assert.equal(metadata.jwks_uri, `${deputy.url}/.well-known/jwks.json`);
    assert.doesNotMatch(body, /evil\.example/);
  });

  test('serves the provider metadata document that names itself as client_id', async () => {
    const response = await fetch(`${deputy.url}/agent-auth.json`);
    assert.equal(response.status, 200);
    const document = (await response.json()) as Record<string, unknown>;
    assert.equal(document.client_id, `${deputy.url}/agent-auth.json`);
    assert.equal(document.jwks_uri, `${deputy.url}/.well-known/jwks.json`);
    assert.equal(document.token_endpoint_auth_method, 'private_key_jwt');
    assert.equal(document.client_name, 'Deputy');
    assert.deepEqual(document.authorization_grant_profiles_supported, ['urn:ietf:params:oauth:grant-profile:id-jag']);
  });

  test('stores the private key only encrypted', async () => {
    const rows = (await sqlOn(deputy.dbPath, 'select kid, public_jwk, private_jwe from signing_keys')) as {
      kid: string;
      public_jwk: string;
      private_jwe: string;
    }[];

    assert.equal(rows.length, 1);
    const [row] = rows;
    assert.ok(row);
    assert.equal(JSON.parse(row.public_jwk).d, undefined);
    const [header] = row.private_jwe.split('.');
    assert.deepEqual(JSON.parse(Buffer.from(header as string, 'base64url').toString()), {
      alg: 'dir',
      enc: 'A256GCM',
      kid: row.kid,
    });
    assert.doesNotMatch(row.private_jwe, /"d"/);
  });

  test('answers an unknown path with a 404 page', async () => {
    const response = await fetch(`${deputy.url}/no/such/page`);
    assert.equal(response.status, 404);
    assert.match(await response.text(), /There is no page at this address/);
  });
});

describe('signing keys and DEPUTY_SECRET', () => {
  test('refuses to start with a secret that cannot decrypt the stored key', async () => {
    const dir = tempDir();
    const dbPath = `${dir.path}/deputy.db`;
    try {
      const first = await startDeputy({ dbPath, env: { DEPUTY_SECRET: 'a'.repeat(40) } });
      await first.stop();
      await assert.rejects(
        startDeputy({ dbPath, env: { DEPUTY_SECRET: 'b'.repeat(40) } }),
        (error: Error) => {
          assert.equal(error.name, 'KeyDecryptionError');
          assert.match(error.message, /cannot be decrypted with this DEPUTY_SECRET/);
          return true;
        },
      );
    } finally {
      dir.remove();
    }
  });

  test('generates a development secret beside the database, readable only by its owner', {
    skip: TEST_DIALECT === 'postgres' && 'PostgreSQL has no folder beside it: DEPUTY_SECRET is required there (config tests)',
  }, async () => {
    const dir = tempDir();
    const dbPath = `${dir.path}/deputy.db`;
    try {
      const first = await startDeputy({ dbPath });
      const kid = first.deputy.keys.active().kid;
      await first.stop();

      const { statSync } = await import('node:fs');
      assert.equal(statSync(`${dir.path}/deputy.secret`).mode & 0o777, 0o600);

      const second = await startDeputy({ dbPath });
      assert.equal(second.deputy.keys.active().kid, kid);
      await second.stop();
    } finally {
      dir.remove();
    }
  });
});
