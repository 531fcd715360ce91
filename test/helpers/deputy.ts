/**
 * Deputy itself, started the way `deputy serve` starts it but on 127.0.0.1 port 0 with a
 * database in a temporary folder. The issuer is only known once the port is, so the server
 * listens first and takes Deputy's request handler after.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Sqlite from 'better-sqlite3';
import pg from 'pg';
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

/**
 * The PostgreSQL server of a PostgreSQL run (`DEPUTY_TEST_POSTGRES`, as scripts/postgres.sh
 * prints it); unset, the suite runs on SQLite files.
 */
export const TEST_POSTGRES = process.env.DEPUTY_TEST_POSTGRES || undefined;
export const TEST_DIALECT: 'sqlite' | 'postgres' = TEST_POSTGRES === undefined ? 'sqlite' : 'postgres';

const created = new Set<string>();

/**
 * The DEPUTY_DB a test's database file stands for: the file itself, or, on a PostgreSQL run, a
 * database of its own on the test server, named after the file and made on first use, so a test
 * that restarts Deputy on the same file finds the same data.
 */
export async function databaseFor(path: string): Promise<string> {
  if (TEST_POSTGRES === undefined) return path;
  const name = `deputy_t_${createHash('sha256').update(path).digest('hex').slice(0, 20)}`;
  const url = new URL(TEST_POSTGRES);
  if (!created.has(name)) {
    const admin = new pg.Client({ connectionString: TEST_POSTGRES });
    await admin.connect();
    try {
      await admin.query(`create database ${name}`);
    } catch (error) {
      if ((error as { code?: string }).code !== '42P04') throw error; // exists already
    } finally {
      await admin.end();
    }
    created.add(name);
  }
  url.pathname = `/${name}`;
  return url.toString();
}

/**
 * The environment Deputy needs for that database: on PostgreSQL a DEPUTY_SECRET (required
 * there), the same for the same file so a restart decrypts the same keys.
 */
export function secretEnvFor(path: string, env: Env = {}): Env {
  if (TEST_POSTGRES === undefined || env.DEPUTY_SECRET !== undefined) return {};
  return { DEPUTY_SECRET: createHash('sha256').update(`secret ${path}`).digest('hex') };
}

/** DEPUTY_DB, and on PostgreSQL DEPUTY_SECRET, for running the command line on a test's database. */
export async function cliEnvFor(path: string, env: Env = {}): Promise<Record<string, string>> {
  return { DEPUTY_DB: await databaseFor(path), ...secretEnvFor(path, env) } as Record<string, string>;
}

/**
 * Runs one statement on a test's database, as a test that inspects or ages stored rows needs.
 * Written for SQLite (`?` placeholders); on PostgreSQL the placeholders are numbered and the rows
 * come back as SQLite gives them (JSON as text, booleans as 0/1, big integers as numbers).
 */
export async function sqlOn(path: string, statement: string, params: unknown[] = []): Promise<Record<string, unknown>[]> {
  if (TEST_POSTGRES === undefined) {
    const db = new Sqlite(path);
    try {
      const prepared = db.prepare(statement);
      return prepared.reader ? (prepared.all(...params) as Record<string, unknown>[]) : (prepared.run(...params), []);
    } finally {
      db.close();
    }
  }
  let n = 0;
  const client = new pg.Client({ connectionString: await databaseFor(path) });
  await client.connect();
  try {
    const result = await client.query(statement.replace(/\?/g, () => `$${(n += 1)}`), params);
    return result.rows.map((row: Record<string, unknown>) =>
      Object.fromEntries(
        Object.entries(row).map(([key, value]) => [
          key,
          typeof value === 'boolean'
            ? Number(value)
            : typeof value === 'string' && /^-?\d+$/.test(value) && result.fields.find((f) => f.name === key)?.dataTypeID === 20
              ? Number(value)
              : value !== null && typeof value === 'object'
                ? JSON.stringify(value)
                : value,
        ]),
      ),
    );
  } finally {
    await client.end();
  }
}

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
  const config = loadConfig({
    DEPUTY_ISSUER: url,
    DEPUTY_DB: await databaseFor(options.dbPath),
    ...secretEnvFor(options.dbPath, options.env),
    ...NO_RATE_LIMITS,
    ...options.env,
  });
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
