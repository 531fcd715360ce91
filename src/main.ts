/**
 * The `deputy` command line: `serve` (the default), `migrate`, `agents …` and `keys list`.
 * Administration happens here; people use the web pages and agents use OAuth.
 */
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig, type Config } from './config.ts';
import { isPostgresUrl, openDatabaseOrExplain, redactUrl, SqliteDatabase } from './db/index.ts';
import { DelegationStore } from './db/delegations.ts';
import { OutboxStore } from './db/outbox.ts';
import { epoch, Store, type Agent } from './db/store.ts';
import { registerAgent, UsageError } from './agents/registry.ts';
import {
  KeyDecryptionError,
  KeyStore,
  keyState,
  reencryptKeys,
  RotationPendingError,
  SIGNING_ALGS,
  type SigningAlg,
} from './keys/keystore.ts';
import { deriveSecrets, resolveSecret } from './secret.ts';
import { retentionFor } from './lifetimes.ts';
import { createLogger } from './log.ts';

const USAGE = `Usage: deputy [command]

Commands:
  serve                         run the server (the default)
  migrate                       apply database migrations and exit
  agents add --name NAME [--logo-uri URL] [--redirect-uri URL]...
             [--jwks FILE | --jwks-uri URL | --public] [--json]
                                register an agent; without keys it gets a client secret,
                                printed once; --public agents connect but never mint
  agents list [--json]          list registered agents
  agents show CLIENT_ID [--json]
  agents map CLIENT_ID --audience URL --service-client-id ID
  agents unmap CLIENT_ID --audience URL
                                the agent's client id at a service (the ID-JAG client_id)
  agents remove CLIENT_ID       remove an agent: its tokens end, its delegations are
                                revoked and the services told
  users list [--json]           list people who signed in
  users remove USER_ID          remove a person: as above, for all their agents
  events list [--json] [--limit N]
                                the revocation outbox: what was sent where, and how it went
  keys list [--json]            list signing keys with their state and dates
  keys rotate [--alg ES256|EdDSA|RS256]
                                publish a new key; it signs after the pre-publication delay
  keys reencrypt                re-encrypt the private keys from DEPUTY_SECRET_OLD to
                                DEPUTY_SECRET (run with the server stopped)
  backup FILE                   copy the database to FILE, safely while the server runs
                                (DEPUTY_SECRET is not in it: keep it apart)

Configuration comes from environment variables; see the README.`;

type Output = (line: string) => void;

async function run(argv: string[], out: Output = console.log): Promise<number> {
  const [command = 'serve', ...rest] = argv;

  switch (command) {
    case 'serve': {
      const { positionals } = parse(rest, {});
      if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
      await serve(loadConfig());
      return 0;
    }
    case 'migrate':
      return migrateCommand(loadConfig(), out);
    case 'agents':
      return agentsCommand(loadConfig(), rest, out);
    case 'keys':
      return keysCommand(loadConfig(), rest, out);
    case 'users':
      return usersCommand(loadConfig(), rest, out);
    case 'events':
      return eventsCommand(loadConfig(), rest, out);
    case 'backup':
      return backupCommand(loadConfig(), rest, out);
    case 'help':
    case '--help':
    case '-h':
      out(USAGE);
      return 0;
    default:
      throw new UsageError(`unknown command '${command}'`);
  }
}

async function serve(config: Config): Promise<Server> {
  const log = createLogger(config.logLevel, config.logFormat);
  // Loaded here so the other commands do not load oidc-provider (and its Node 20 warning).
  const { createDeputy } = await import('./app.ts');
  const deputy = await createDeputy(config, log);

  if (deputy.devIdp) {
    log.warn(
      { event: 'dev_idp' },
      `development sign-in is on at ${deputy.upstream.issuer}: any email signs in as verified. ` +
        'Set DEPUTY_UPSTREAM_ISSUER for real use; NODE_ENV=production refuses this.',
    );
  }
  const nodeEnv = process.env.NODE_ENV;
  if (nodeEnv !== undefined && nodeEnv !== '' && !['production', 'development', 'test'].includes(nodeEnv)) {
    log.warn(
      { event: 'node_env' },
      `NODE_ENV is '${nodeEnv}': only 'production' turns on the production checks; running without them`,
    );
  }
  if (config.allowLoopbackServices) {
    log.warn(
      { event: 'loopback_services' },
      'DEPUTY_ALLOW_LOOPBACK_SERVICES is on: services on this machine may be discovered, over plain http. Development only.',
    );
  }

  const server = createServer(deputy.app.callback());
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => {
      void deputy.close();
      if (error.code === 'EADDRINUSE') reject(new ConfigError(`PORT ${config.port} is already in use`));
      else if (error.code === 'EACCES') reject(new ConfigError(`PORT ${config.port} needs privileges Deputy does not have`));
      else if (error.code === 'ENOTFOUND' || error.code === 'EAI_AGAIN' || error.code === 'EADDRNOTAVAIL') {
        reject(new ConfigError(`DEPUTY_HOST '${config.host}' is not an address of this machine (${error.code})`));
      } else reject(error);
    });
    server.listen(config.port, config.host, resolve);
  });

  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : config.port;
  const database = isPostgresUrl(config.dbPath) ? `PostgreSQL ${redactUrl(config.dbPath)}` : `SQLite ${config.dbPath}`;
  log.info(
    { event: 'listening', issuer: config.issuer, host: config.host, port, database },
    `Deputy is running at ${config.issuer} (listening on ${config.host}:${port}, database ${database})`,
  );

  // A graceful stop: stop accepting, tell load balancers (/readyz 503) and keep-alive clients
  // (Connection: close), let requests in flight finish, then stop the delivery worker (an
  // event being delivered settles; one not yet claimed stays pending for the next start) and
  // close the database. Connections still open after the timeout are cut.
  const stop = (signal: string) => {
    log.info({ event: 'stopping', signal, timeout_ms: config.shutdownTimeoutMs }, 'stopping');
    deputy.beginShutdown();
    const force = setTimeout(() => {
      log.warn({ event: 'stop_timeout' }, 'requests still in flight at the shutdown timeout; closing their connections');
      server.closeAllConnections();
    }, config.shutdownTimeoutMs);
    force.unref();
    server.close(() => {
      clearTimeout(force);
      deputy.close().then(
        () => {
          log.info({ event: 'stopped' }, 'stopped');
          process.exit(0);
        },
        (error: unknown) => {
          log.error({ err: error }, 'stopping failed');
          process.exit(1);
        },
      );
    });
    server.closeIdleConnections();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  return server;
}

/** Opens and migrates the database, runs `fn` with a store on it, and closes it. */
async function withStore<T>(config: Config, fn: (store: Store) => Promise<T>): Promise<T> {
  const database = await openDatabaseOrExplain(config.dbPath, { pool: config.dbPool });
  try {
    await database.migrate();
    return await fn(new Store(database));
  } finally {
    await database.close();
  }
}

/**
 * SQLite's online backup: a consistent copy of the whole database, taken page by page while
 * the server goes on writing (WAL). The copy needs DEPUTY_SECRET to be of any use for keys.
 */
async function backupCommand(config: Config, args: string[], out: Output): Promise<number> {
  const [file, ...extra] = args;
  if (file === undefined || file.startsWith('-') || extra.length > 0) throw new UsageError('backup takes one FILE');
  if (existsSync(file)) throw new ConfigError(`'${file}' exists; Deputy does not overwrite a backup`);
  const database = await openDatabaseOrExplain(config.dbPath, { pool: config.dbPool });
  try {
    if (!(database instanceof SqliteDatabase)) {
      throw new CommandError('backup copies a SQLite database; back up PostgreSQL with its own tools (pg_dump)');
    }
    // Readable by the owner only, like the database: it holds people's emails and the keys.
    closeSync(openSync(file, 'wx', 0o600));
    const { totalPages } = await database.driver.backup(file);
    out(`Backed up ${config.dbPath} to ${file} (${totalPages} pages).`);
    out('Restore by stopping Deputy and putting the file in place of the database (remove its -wal and -shm files).');
    return 0;
  } catch (error) {
    if (error instanceof CommandError) throw error;
    throw new ConfigError(`cannot write the backup to '${file}': ${error instanceof Error ? error.message : String(error)}`);
  } finally {
    await database.close();
  }
}

async function migrateCommand(config: Config, out: Output): Promise<number> {
  await withStore(config, async () => undefined);
  out(`Database ${config.dbPath} is up to date.`);
  return 0;
}

async function agentsCommand(config: Config, argv: string[], out: Output): Promise<number> {
  const [sub, ...rest] = argv;

  switch (sub) {
    case 'add': {
      const { values, positionals } = parse(rest, {
        name: { type: 'string' },
        'logo-uri': { type: 'string' },
        'redirect-uri': { type: 'string', multiple: true },
        jwks: { type: 'string' },
        'jwks-uri': { type: 'string' },
        public: { type: 'boolean' },
        json: { type: 'boolean' },
      });
      if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
      if (values.name === undefined) throw new UsageError('agents add needs --name');

      const name = values.name;
      const jwks = values.jwks === undefined ? undefined : readJwksFile(values.jwks);
      await withStore(config, async (store) => {
        const { agent, clientSecret } = await registerAgent(store, {
          name,
          logoUri: values['logo-uri'],
          redirectUris: values['redirect-uri'] ?? [],
          jwks,
          jwksUri: values['jwks-uri'],
          public: values.public,
        });

        if (values.json) {
          out(JSON.stringify({ ...describeAgent(agent), ...(clientSecret ? { client_secret: clientSecret } : {}) }));
          return 0;
        }

        out(`Registered agent '${agent.name}'.`);
        out(`  client_id:     ${agent.clientId}`);
        if (clientSecret !== undefined) {
          out(`  client_secret: ${clientSecret}`);
          out('');
          out('The secret is shown only now; Deputy keeps only its hash. Store it with the agent.');
        } else if (agent.tokenEndpointAuthMethod === 'none') {
          out('  auth method:   none (a public client: it can connect but never mint)');
        } else {
          out(`  auth method:   private_key_jwt (${agent.jwksUri ?? 'keys given with --jwks'})`);
        }
        return 0;
      });
      return 0;
    }

    case 'list': {
      const { values } = parse(rest, { json: { type: 'boolean' } });
      const agents = await withStore(config, (store) => store.listAgents());
      if (values.json) {
        out(JSON.stringify(agents.map(describeAgent)));
        return 0;
      }
      if (agents.length === 0) {
        out('No agents registered. Add one with: deputy agents add --name NAME');
        return 0;
      }
      for (const agent of agents) {
        out(`${agent.clientId}  ${agent.tokenEndpointAuthMethod.padEnd(19)}  ${agent.name}`);
      }
      return 0;
    }

    case 'show': {
      const { values, positionals } = parse(rest, { json: { type: 'boolean' } });
      const clientId = onePositional(positionals, 'agents show needs a CLIENT_ID');
      const found = await withStore(config, async (store) => {
        const agent = await store.findAgentRecord(clientId);
        return agent && { agent, mapped: await new DelegationStore(store.database).serviceClientIdsOf(clientId) };
      });
      if (found === undefined) throw new CommandError(`no agent with client id '${clientId}'`);
      const described = { ...describeAgent(found.agent), service_client_ids: Object.fromEntries(found.mapped.map((m) => [m.audience, m.clientId])) };
      if (values.json) {
        out(JSON.stringify(described));
        return 0;
      }
      for (const [key, value] of Object.entries(described)) {
        out(`${key.padEnd(27)} ${typeof value === 'string' ? value : JSON.stringify(value)}`);
      }
      return 0;
    }

    case 'map': {
      const { values, positionals } = parse(rest, {
        audience: { type: 'string' },
        'service-client-id': { type: 'string' },
      });
      const clientId = onePositional(positionals, 'agents map needs a CLIENT_ID');
      if (values.audience === undefined || values['service-client-id'] === undefined) {
        throw new UsageError('agents map needs --audience and --service-client-id');
      }
      const audience = values.audience;
      const serviceClientId = values['service-client-id'];
      if (!isIssuerUrl(audience)) {
        throw new UsageError(`--audience must be the service's https issuer identifier, got '${audience}'`);
      }
      if (serviceClientId.trim() === '' || serviceClientId.length > 255 || /[\u0000-\u001f\u007f]/.test(serviceClientId)) {
        throw new UsageError('--service-client-id must be 1 to 255 printable characters');
      }
      await withStore(config, async (store) => {
        if (await store.findAgent(clientId) === undefined) throw new CommandError(`no agent with client id '${clientId}'`);
        await new DelegationStore(store.database).mapServiceClientId(clientId, audience, serviceClientId);
      });
      out(`ID-JAGs from ${clientId} for ${audience} now carry client_id '${serviceClientId}'.`);
      return 0;
    }

    case 'unmap': {
      const { values, positionals } = parse(rest, { audience: { type: 'string' } });
      const clientId = onePositional(positionals, 'agents unmap needs a CLIENT_ID');
      if (values.audience === undefined) throw new UsageError('agents unmap needs --audience');
      const audience = values.audience;
      const removed = await withStore(config, (store) => new DelegationStore(store.database).unmapServiceClientId(clientId, audience));
      if (!removed) throw new CommandError(`agent '${clientId}' has no client id mapped for '${audience}'`);
      out(`ID-JAGs from ${clientId} for ${audience} carry the default client_id again.`);
      return 0;
    }

    case 'remove': {
      const { positionals } = parse(rest, {});
      const clientId = onePositional(positionals, 'agents remove needs a CLIENT_ID');
      const removed = await withStore(config, (store) => new DelegationStore(store.database).removeAgent(clientId));
      if (removed === undefined) throw new CommandError(`no agent with client id '${clientId}'`);
      out(`Removed agent ${clientId}; ${removed.revokedDelegations} delegation(s) revoked.`);
      out('Services that received its ID-JAGs are told by the running server (deputy events list).');
      return 0;
    }

    default:
      throw new UsageError(sub === undefined ? 'agents needs a subcommand' : `unknown agents subcommand '${sub}'`);
  }
}

async function usersCommand(config: Config, argv: string[], out: Output): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'list': {
      const { values } = parse(rest, { json: { type: 'boolean' } });
      const users = await withStore(config, (store) => store.listUsers());
      const rows = users.map((u) => ({ id: u.id, email: u.email, name: u.name, created_at: iso(u.createdAt) }));
      if (values.json) {
        out(JSON.stringify(rows));
        return 0;
      }
      if (rows.length === 0) out('No users yet; people appear here after their first sign-in.');
      for (const row of rows) out(`${row.id}  ${row.email ?? '-'}  ${row.name ?? ''}`);
      return 0;
    }
    case 'remove': {
      const { positionals } = parse(rest, {});
      const userId = onePositional(positionals, 'users remove needs a USER_ID');
      const removed = await withStore(config, (store) => new DelegationStore(store.database).removeUser(userId));
      if (removed === undefined) throw new CommandError(`no user with id '${userId}'`);
      out(`Removed user ${userId}; ${removed.revokedDelegations} delegation(s) revoked.`);
      return 0;
    }
    default:
      throw new UsageError(sub === undefined ? 'users needs a subcommand' : `unknown users subcommand '${sub}'`);
  }
}

async function eventsCommand(config: Config, argv: string[], out: Output): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== 'list') {
    throw new UsageError(sub === undefined ? 'events needs a subcommand' : `unknown events subcommand '${sub}'`);
  }
  const { values } = parse(rest, { json: { type: 'boolean' }, limit: { type: 'string' } });
  const limit = values.limit === undefined ? 100 : Number(values.limit);
  if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new UsageError('--limit must be 1 to 10000');
  const events = await withStore(config, (store) => new OutboxStore(store.database).list(limit));
  const rows = events.map((e) => ({
    id: e.id,
    state: e.state,
    audience: e.audience,
    transport: e.dialect === 'secevent' ? 'secevent+jwt' : 'logout+jwt',
    endpoint: e.endpoint,
    attempts: e.attempts,
    created: iso(e.createdAt),
    next_attempt: e.state === 'pending' ? new Date(e.nextAttemptMs).toISOString() : null,
    delivered: e.deliveredAt === null ? null : iso(e.deliveredAt),
    last_error: e.lastError,
    delegation: e.delegationId,
  }));
  if (values.json) {
    out(JSON.stringify(rows));
    return 0;
  }
  if (rows.length === 0) out('No revocation events.');
  for (const row of rows) {
    const when = row.state === 'delivered' ? row.delivered : row.state === 'pending' ? `next ${row.next_attempt}` : row.last_error;
    out(`${row.id}  ${row.state.padEnd(9)}  ${row.audience}  attempts ${row.attempts}  ${when ?? ''}`);
  }
  return 0;
}

async function keysCommand(config: Config, argv: string[], out: Output): Promise<number> {
  const [sub, ...rest] = argv;

  switch (sub) {
    case 'list': {
      const { values } = parse(rest, { json: { type: 'boolean' } });
      const now = Math.floor(Date.now() / 1000);
      const rows = (await withStore(config, (store) => store.allSigningKeys())).map((row) => ({
        kid: row.kid,
        alg: row.alg,
        state: keyState(row, now),
        created: iso(row.createdAt),
        activates: iso(row.activatesAt),
        retired: row.retiredAt === null ? null : iso(row.retiredAt),
        removed: row.removeAfter === null ? null : iso(row.removeAfter),
      }));
      if (values.json) {
        out(JSON.stringify(rows));
        return 0;
      }
      if (rows.length === 0) out('No signing keys yet; the first start of the server creates one.');
      for (const row of rows) {
        const dates =
          row.state === 'next'
            ? `signs from ${row.activates}`
            : row.state === 'active'
              ? `signing since ${row.activates}`
              : row.state === 'retired'
                ? `retired ${row.retired}, published until ${row.removed}`
                : `removed ${row.removed}`;
        out(`${row.kid}  ${row.alg.padEnd(5)}  ${row.state.padEnd(7)}  ${dates}`);
      }
      return 0;
    }

    case 'rotate': {
      const { values } = parse(rest, { alg: { type: 'string' } });
      const alg = values.alg ?? config.keys.alg;
      if (!(SIGNING_ALGS as readonly string[]).includes(alg)) {
        throw new UsageError(`--alg must be one of ${SIGNING_ALGS.join(', ')}`);
      }
      const secrets = deriveSecrets(resolveSecret(config).secret);
      return withStore(config, async (store) => {
        const keys = new KeyStore(store, secrets.keyEncryptionKey, {
          alg: alg as SigningAlg,
          prepublishSeconds: config.keys.prepublishSeconds,
          retentionSeconds: retentionFor(config),
          rotationDays: 0,
        });
        await keys.refresh();
        const row = await keys.rotate(alg as SigningAlg).catch((error: unknown) => {
          if (error instanceof RotationPendingError) throw new CommandError(error.message);
          throw error;
        });
        if (row.activatesAt <= epoch()) {
          out(`New ${row.alg} key ${row.kid} signs from now: there was no key that signs before it.`);
        } else {
          out(`New ${row.alg} key ${row.kid} is published now and signs from ${iso(row.activatesAt)}.`);
          out('The current key retires then and stays published until every token it signed has expired.');
        }
        return 0;
      });
    }

    case 'reencrypt': {
      parse(rest, {});
      const old = process.env.DEPUTY_SECRET_OLD;
      if (old === undefined || old === '') {
        throw new ConfigError('keys reencrypt needs DEPUTY_SECRET_OLD (the secret the keys are encrypted under)');
      }
      if (old.length < 32) throw new ConfigError('DEPUTY_SECRET_OLD must be at least 32 characters');
      if (config.secret === undefined) {
        throw new ConfigError('keys reencrypt needs DEPUTY_SECRET (the new secret)');
      }
      const from = deriveSecrets(old).keyEncryptionKey;
      const to = deriveSecrets(config.secret).keyEncryptionKey;
      const count = withStore(config, (store) => reencryptKeys(store, from, to));
      out(`Re-encrypted ${await count} signing key(s) under the new DEPUTY_SECRET.`);
      out('Start Deputy with the new DEPUTY_SECRET now; people will need to sign in again.');
      return 0;
    }

    default:
      throw new UsageError(sub === undefined ? 'keys needs a subcommand' : `unknown keys subcommand '${sub}'`);
  }
}

/** An https issuer identifier (or http on loopback, for local services). */
function isIssuerUrl(value: string): boolean {
  try {
    const url = new URL(value);
    const loopback = ['localhost', '127.0.0.1', '[::1]'].includes(url.hostname);
    return (url.protocol === 'https:' || (url.protocol === 'http:' && loopback)) && url.search === '' && url.hash === '';
  } catch {
    return false;
  }
}

function iso(seconds: number): string {
  return new Date(seconds * 1000).toISOString();
}

function describeAgent(agent: Agent) {
  return {
    client_id: agent.clientId,
    client_name: agent.name,
    logo_uri: agent.logoUri,
    redirect_uris: agent.redirectUris,
    token_endpoint_auth_method: agent.tokenEndpointAuthMethod,
    jwks_uri: agent.jwksUri,
    jwks: agent.jwks,
    created_at: iso(agent.createdAt),
    ...(agent.removedAt === null ? {} : { removed_at: iso(agent.removedAt) }),
  };
}

type Options = Parameters<typeof parseArgs>[0] extends infer P
  ? P extends { options?: infer O }
    ? NonNullable<O>
    : never
  : never;

function parse<O extends Options>(args: string[], options: O) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

function onePositional(positionals: string[], message: string): string {
  const [first, ...extra] = positionals;
  if (first === undefined) throw new UsageError(message);
  if (extra.length > 0) throw new UsageError(`unexpected argument '${extra[0]}'`);
  return first;
}

function readJwksFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new CommandError(`--jwks: cannot read '${path}': ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new UsageError(`--jwks: '${path}' is not JSON`);
  }
}

/** A command that cannot be carried out as asked (nothing by that id, a rotation pending). */
class CommandError extends Error {
  override name = 'CommandError';
}

/**
 * Prints known mistakes: with the usage and status 2 for arguments; as one line and status 1
 * for configuration and for commands that cannot be carried out.
 */
function report(error: unknown): number {
  if (error instanceof UsageError) {
    console.error(`deputy: ${error.message}\n\n${USAGE}`);
    return 2;
  }
  if (error instanceof ConfigError || error instanceof KeyDecryptionError || error instanceof CommandError) {
    console.error(`deputy: ${error.message}`);
    return 1;
  }
  console.error(error);
  return 1;
}

// A reader that stops early (`deputy events list | head`) is not an error of Deputy's.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw error;
});

run(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.exitCode = report(error);
  },
);
