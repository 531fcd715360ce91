/**
 * Deputy itself, started the way `deputy serve` starts it but on 127.0.0.1 port 0 with a
 * database in a temporary folder. The issuer is only known once the port is, so the server
 * listens first and takes Deputy's request handler after.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino, { type Logger } from 'pino';
import { createDeputy, type Deputy } from '../../src/app.ts';
import { loadConfig, type Env } from '../../src/config.ts';

/**
 * Every test talks from 127.0.0.1, faster than any person: rate limits are off unless a test
 * sets them (test/ops.test.ts does).
 */
export const NO_RATE_LIMITS: Env = {
  DEPUTY_RATE_LIMIT_TOKEN: '0',
  DEPUTY_RATE_LIMIT_CLIENT_AUTH_FAILURES: '0',
  DEPUTY_RATE_LIMIT_SIGN_IN: '0',
  DEPUTY_RATE_LIMIT_CONSENT: '0',
};

export interface RunningDeputy {
  url: string;
  deputy: Deputy;
  dbPath: string;
  stop(): Promise<void>;
}

export function tempDir(prefix = 'deputy-test-'): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** Reserves a port on 127.0.0.1 and returns the listening server and its base URL. */
export async function listen(port = 0): Promise<{ server: Server; url: string }> {
  const server = createServer();
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

export async function startDeputy(options: {
  dbPath: string;
  env?: Env;
  /** A server from `listen()`, when the URL had to be known before Deputy starts. */
  listening?: { server: Server; url: string };
  /** Where logs go; silent by default. */
  log?: Logger;
}): Promise<RunningDeputy> {
  const { server, url } = options.listening ?? (await listen());
  const config = loadConfig({ DEPUTY_ISSUER: url, DEPUTY_DB: options.dbPath, ...NO_RATE_LIMITS, ...options.env });
  let deputy: Deputy;
  try {
    deputy = await createDeputy(config, options.log ?? pino({ level: 'silent' }));
  } catch (error) {
    server.close();
    throw error;
  }
  server.on('request', deputy.app.callback());

  return {
    url,
    deputy,
    dbPath: options.dbPath,
    stop: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
      await deputy.close();
    },
  };
}

/** The environment that points Deputy at a test upstream provider. */
export function upstreamEnv(upstream: { issuer: string; clientId: string; clientSecret: string }): Env {
  return {
    DEPUTY_UPSTREAM_ISSUER: upstream.issuer,
    DEPUTY_UPSTREAM_CLIENT_ID: upstream.clientId,
    DEPUTY_UPSTREAM_CLIENT_SECRET: upstream.clientSecret,
    DEPUTY_UPSTREAM_ALLOW_HTTP: 'true',
  };
}
