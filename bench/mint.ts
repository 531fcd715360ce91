/**
 * Benchmark: how many ID-JAGs Deputy mints per second, against what the same process could do
 * at best (a bare koa endpoint that parses the same form and signs the same JWT), and how many
 * JWKS requests it serves.
 *
 *   npm run bench [-- --delegations 10000] [-- --duration 10] [-- --json] [-- --profile FILE]
 *
 * Starts Deputy on a temporary database, seeds `delegations` delegations (with their users and
 * agents) straight into SQLite, then makes the subjects of the load the real way: agents
 * registered in the registry, connected by the device flow for people signed in through the
 * development sign-in (real refresh tokens), and an 'always' delegation for each (person,
 * agent, audience). autocannon then drives, each for `duration` seconds at 64 connections:
 *
 * 1. the mint: token exchange at /token for an ID-JAG with the refresh token as subject,
 *    Basic client authentication, rotating through every (agent, refresh token, audience);
 * 2. the ceiling: a bare koa server in this process, on its own port, that parses the same
 *    form with @koa/bodyparser and signs an ID-JAG-shaped JWT (the claims of a real one, fresh
 *    jti/iat/exp) with jose and Deputy's active key;
 * 3. GET /.well-known/jwks.json.
 *
 * The load generator runs in a child process (bench/mint-load.ts, forked), not in this one and
 * not in a worker thread: on a 2-core machine autocannon in the server's process would steal
 * its event loop, and a worker thread would still count in this process's RSS. Every run
 * starts with a one-second warm-up on the same connections whose answers are not counted. Any
 * answer but 200, connection error or timeout counts as an error. Peak RSS is sampled in this process (Deputy and the ceiling
 * server, not the load generator) during the runs.
 *
 * `--profile FILE` writes a V8 CPU profile of this process during the mint run only (warm-up
 * included); `node --import tsx bench/profile-top.ts FILE` lists its hottest functions.
 *
 * Not a test: it prints numbers and asserts only that the setup worked.
 */
import { fork } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { Session } from 'node:inspector/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { bodyParser } from '@koa/bodyparser';
import Database from 'better-sqlite3';
import { decodeJwt, decodeProtectedHeader, SignJWT } from 'jose';
import Koa from 'koa';
import pino from 'pino';
import { registerAgent } from '../src/agents/registry.ts';
import { createDeputy } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { basic, connectByDevice, ID_JAG, REFRESH_TOKEN, TOKEN_EXCHANGE } from '../test/helpers/agent.ts';
import { Browser, formAction } from '../test/helpers/browser.ts';
import type { LoadJob, LoadRequest, LoadResult } from './mint-load.ts';

const USAGE = 'usage: npm run bench -- [--delegations N] [--duration SECONDS] [--connections N] [--json] [--profile FILE]';

function parseOptions() {
  try {
    return parseArgs({
      options: {
        delegations: { type: 'string', default: '10000' },
        duration: { type: 'string', default: '10' },
        connections: { type: 'string', default: '64' },
        json: { type: 'boolean', default: false },
        profile: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (error) {
    console.error(`${(error as Error).message}\n${USAGE}`);
    process.exit(2);
  }
}

const { values } = parseOptions();
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}

function positiveInteger(name: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) {
    console.error(`--${name} must be a positive integer, got '${value}'`);
    process.exit(2);
  }
  return n;
}

const delegationCount = positiveInteger('delegations', values.delegations);
const durationSeconds = positiveInteger('duration', values.duration);
const connections = positiveInteger('connections', values.connections);
const WARMUP_SECONDS = 1;
/** Real agents, each connected for its own person, each with a delegation per audience. */
const REAL_AGENTS = 4;
const REAL_AUDIENCES = 4;
/** Services the seeded delegations point at. */
const SEEDED_AUDIENCES = 1000;
/** Seeded delegations per seeded person. */
const DELEGATIONS_PER_USER = 4;
/** Rows per seeding transaction. */
const SEED_BATCH = 250_000;

const progress = (message: string) => {
  if (!values.json) console.error(message);
};

const dir = mkdtempSync(join(tmpdir(), 'deputy-bench-'));
const dbPath = join(dir, 'deputy.db');
const server = createServer();
server.listen(0, '127.0.0.1');
await once(server, 'listening');
const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
const config = loadConfig({ DEPUTY_ISSUER: issuer, DEPUTY_DB: dbPath, DEPUTY_RATE_LIMIT_TOKEN: '0' });
const deputy = await createDeputy(config, pino({ level: 'silent' }));
server.on('request', deputy.app.callback());

// Seed: users, agents and delegations inserted directly, one prepared statement per table, on
// a second connection to the same file (WAL; Deputy's own connection is idle meanwhile).

const seedStarted = performance.now();
const seedDb = new Database(dbPath);
seedDb.pragma('foreign_keys = ON');
seedDb.pragma('busy_timeout = 5000');
const seeded = seed(seedDb, delegationCount);
seedDb.close();
progress(
  `seeded ${seeded.delegations} delegations for ${seeded.users} users, ${seeded.agents} agents and ` +
    `${SEEDED_AUDIENCES} audiences in ${((performance.now() - seedStarted) / 1000).toFixed(1)} s`,
);

// The subjects of the load, made the real way.

interface Triple {
  clientId: string;
  clientSecret: string;
  refreshToken: string;
  audience: string;
}

const running = { url: issuer, deputy, dbPath, stop: async () => {} };
const triples: Triple[] = [];
for (let a = 1; a <= REAL_AGENTS; a += 1) {
  const name = `Bench Agent ${a}`;
  const { agent, clientSecret } = await registerAgent(deputy.store, { name, redirectUris: [] });
  const credentials = { clientId: agent.clientId, clientSecret: clientSecret as string, name };

  const browser = new Browser();
  const form = await browser.go(`${issuer}/login`);
  const home = await browser.submit(formAction(form), { email: `bench-${a}@example.com`, name: `Bench User ${a}` });
  if (home.status !== 200 || home.url !== `${issuer}/`) throw new Error(`sign-in failed: ${home.status} ${home.url}`);

  const tokens = await connectByDevice(running, credentials, browser);
  const userId = decodeJwt(tokens.id_token).sub as string;
  for (let s = 1; s <= REAL_AUDIENCES; s += 1) {
    const audience = `https://service-${s}.example`;
    await deputy.delegations.createDelegation({
      userId,
      agentClientId: agent.clientId,
      audience,
      resources: [`${audience}/api`],
      scope: 'read write',
      mode: 'always',
      expiresAt: null,
      serviceName: `Service ${s}`,
      serviceLogoUri: `${audience}/logo.png`,
      serviceAgentAuth: {
        eventsEndpoint: `${audience}/agent/events`,
        eventsSupported: ['https://schemas.workos.com/events/agent/identity/assertion/revoked'],
      },
    });
    triples.push({ ...credentials, refreshToken: tokens.refresh_token, audience });
  }
}

function mintRequest(triple: Triple): LoadRequest {
  return {
    method: 'POST',
    path: '/token',
    headers: {
      authorization: basic(triple),
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({
      grant_type: TOKEN_EXCHANGE,
      requested_token_type: ID_JAG,
      subject_token_type: REFRESH_TOKEN,
      subject_token: triple.refreshToken,
      audience: triple.audience,
    }).toString(),
  };
}
const mintRequests = triples.map(mintRequest);

// One real mint per triple: the setup works, and the first ID-JAG is the ceiling's template.
let template: Record<string, unknown> | undefined;
for (const request of mintRequests) {
  const response = await fetch(`${issuer}${request.path}`, {
    method: request.method,
    headers: request.headers,
    body: request.body as string,
  });
  const body = (await response.json()) as Record<string, unknown>;
  if (response.status !== 200) throw new Error(`setup mint failed: ${response.status} ${JSON.stringify(body)}`);
  const header = decodeProtectedHeader(body.access_token as string);
  if (header.typ !== 'oauth-id-jag+jwt') throw new Error(`setup mint returned typ ${header.typ}`);
  template ??= decodeJwt(body.access_token as string);
}
const claimsTemplate = template as Record<string, unknown>;
progress(`connected ${REAL_AGENTS} agents by the device flow; ${triples.length} (agent, refresh token, audience) to rotate`);

// The ceiling: a bare koa endpoint in this process, same form parsing, same signature.

// The key store imported the private key once, as a CryptoKey; the ceiling signs with that
// same object, as the mint does.
const active = deputy.keys.active();
const { key: signingKey, alg, kid } = active;
const ceiling = new Koa();
ceiling.use(bodyParser({ enableTypes: ['form'] }) as Koa.Middleware);
ceiling.use(async function bareMint(ctx) {
  if (ctx.method !== 'POST' || ctx.path !== '/token') {
    ctx.status = 404;
    return;
  }
  const form = ctx.request.body as Record<string, string>;
  const issuedAt = Math.floor(Date.now() / 1000);
  const claims = {
    ...claimsTemplate,
    aud: form.audience,
    jti: randomUUID(),
    iat: issuedAt,
    exp: issuedAt + config.idJagTtl,
  };
  const assertion = await new SignJWT(claims)
    .setProtectedHeader({ alg, kid, typ: 'oauth-id-jag+jwt' })
    .sign(signingKey);
  ctx.set('Cache-Control', 'no-store');
  ctx.set('Pragma', 'no-cache');
  ctx.body = {
    access_token: assertion,
    issued_token_type: ID_JAG,
    token_type: 'N_A',
    expires_in: config.idJagTtl,
    scope: claimsTemplate.scope,
  };
});
const ceilingServer = createServer(ceiling.callback());
ceilingServer.listen(0, '127.0.0.1');
await once(ceilingServer, 'listening');
const ceilingUrl = `http://127.0.0.1:${(ceilingServer.address() as AddressInfo).port}`;

// The load generator, in its own process.

const loader = fork(fileURLToPath(new URL('./mint-load.ts', import.meta.url)), [], {
  execArgv: ['--import', 'tsx'],
  stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
});
let jobs = 0;
function load(label: string, url: string, requests: LoadRequest[]): Promise<LoadResult> {
  const job: LoadJob = {
    id: (jobs += 1),
    label,
    url,
    connections,
    durationSeconds,
    warmupSeconds: WARMUP_SECONDS,
    requests,
  };
  return new Promise((resolve, reject) => {
    const onMessage = (result: LoadResult) => {
      if (result.id !== job.id) return;
      loader.off('exit', onExit);
      loader.off('message', onMessage);
      resolve(result);
    };
    const onExit = (code: number | null) => reject(new Error(`load generator exited with ${code}`));
    loader.on('message', onMessage);
    loader.once('exit', onExit);
    loader.send(job);
  });
}

let peakRss = process.memoryUsage.rss();
const sampler = setInterval(() => {
  peakRss = Math.max(peakRss, process.memoryUsage.rss());
}, 100);

progress(`mint: ${connections} connections, ${durationSeconds} s (after ${WARMUP_SECONDS} s warm-up)`);
const profiler = values.profile === undefined ? undefined : await startProfiler();
const mint = await load('mint', issuer, mintRequests);
if (profiler !== undefined) await stopProfiler(profiler, values.profile as string);

progress('ceiling: bare koa + @koa/bodyparser + jose SignJWT');
const bare = await load('ceiling', ceilingUrl, mintRequests);

progress('jwks: GET /.well-known/jwks.json');
const jwks = await load('jwks', issuer, [{ method: 'GET', path: '/.well-known/jwks.json', headers: {} }]);

clearInterval(sampler);
peakRss = Math.max(peakRss, process.memoryUsage.rss());

// Report.

const runs = [mint, bare, jwks];
const errorsOf = (r: LoadResult) => r.non200 + r.connectionErrors + r.timeouts;
const errors = runs.reduce((sum, r) => sum + errorsOf(r), 0);
const result = {
  delegations: delegationCount,
  connections,
  duration: durationSeconds,
  alg,
  mints_per_second: mint.perSecond,
  p50_ms: mint.p50Ms,
  p99_ms: mint.p99Ms,
  peak_rss_mb: Math.round(peakRss / 1e6),
  mint_ceiling_ratio: bare.perSecond === 0 ? 0 : Number((mint.perSecond / bare.perSecond).toFixed(3)),
  jwks_per_second: jwks.perSecond,
  errors,
};

for (const r of runs) {
  if (errorsOf(r) === 0) continue;
  console.error(
    `${r.label}: ${r.non200} non-200 answers ${JSON.stringify(r.statuses)}, ` +
      `${r.connectionErrors} connection errors, ${r.timeouts} timeouts`,
  );
  for (const sample of r.errorSamples) console.error(`  ${sample}`);
}

if (values.json) {
  console.log(JSON.stringify(result));
} else {
  const n = (x: number) => x.toLocaleString('en-US');
  console.log(
    [
      `mint     ${n(mint.perSecond)}/s  p50 ${mint.p50Ms} ms  p99 ${mint.p99Ms} ms  ` +
        `(${n(mint.ok)} ID-JAGs in ${mint.seconds} s, ${alg}, ${n(delegationCount)} seeded delegations, ${connections} connections)`,
      `ceiling  ${n(bare.perSecond)}/s  p50 ${bare.p50Ms} ms  p99 ${bare.p99Ms} ms  (bare koa + @koa/bodyparser + jose SignJWT)`,
      `ratio    mint/ceiling ${result.mint_ceiling_ratio}`,
      `jwks     ${n(jwks.perSecond)}/s  p50 ${jwks.p50Ms} ms  p99 ${jwks.p99Ms} ms`,
      `peak RSS ${result.peak_rss_mb} MB (Deputy and the ceiling server; the load generator runs in its own process)`,
      `errors   ${errors} (mint ${errorsOf(mint)}, ceiling ${errorsOf(bare)}, jwks ${errorsOf(jwks)})`,
    ].join('\n'),
  );
}

loader.disconnect();
await closeServer(ceilingServer);
await closeServer(server);
await deputy.close();
rmSync(dir, { recursive: true, force: true });
process.exit(0);

// Helpers.

/**
 * Inserts `count` delegations spread over count/4 users, up to 1,000 agents and 1,000
 * audiences, each 'always', with service snapshots and use counts like real ones. Ids are
 * derived from a hash of the row number, so they look like Deputy's (prefix and 22 base64url
 * characters) and land at random places in the indexes, and nothing is kept in memory.
 */
function seed(db: Database.Database, count: number): { users: number; agents: number; delegations: number } {
  const users = Math.ceil(count / DELEGATIONS_PER_USER);
  const agents = Math.min(1000, Math.max(10, Math.ceil(count / 1000)));
  const now = Math.floor(Date.now() / 1000);
  const year = 365 * 86400;
  const userCreated = (u: number) => now - ((u * 7919) % year);
  const id = (prefix: string, n: number) =>
    `${prefix}_${createHash('sha256').update(`${prefix}${n}`).digest('base64url').slice(0, 22)}`;

  const insertUser = db.prepare(
    `insert into users (id, email, email_verified, name, amr, auth_time, created_at, updated_at)
     values (?, ?, 1, ?, '["pwd"]', ?, ?, ?)`,
  );
  const insertAgent = db.prepare(
    `insert into agents (client_id, name, logo_uri, redirect_uris, token_endpoint_auth_method, secret_hash, created_at)
     values (?, ?, ?, '[]', 'client_secret_basic', ?, ?)`,
  );
  const insertDelegation = db.prepare(
    `insert into delegations (id, user_id, agent_client_id, audience, resources, scope, mode, expires_at,
       service_name, service_logo_uri, service_agent_auth, uses, last_used_at, created_at)
     values (?, ?, ?, ?, ?, ?, 'always', null, ?, ?, ?, ?, ?, ?)`,
  );

  const agentIds = Array.from({ length: agents }, (_, a) => id('agt', a));
  db.transaction(() => {
    agentIds.forEach((clientId, a) => {
      insertAgent.run(clientId, `Seeded Agent ${a}`, `https://agent-${a}.example/logo.png`, createHash('sha256').update(`secret${a}`).digest('hex'), now - year);
    });
  })();

  const userBatch = db.transaction((from: number, to: number) => {
    for (let u = from; u < to; u += 1) {
      const createdAt = userCreated(u);
      insertUser.run(id('usr', u), `person-${u}@example.com`, `Person ${u}`, createdAt, createdAt, createdAt);
    }
  });
  for (let from = 0; from < users; from += SEED_BATCH) userBatch(from, Math.min(users, from + SEED_BATCH));

  const delegationBatch = db.transaction((from: number, to: number) => {
    for (let u = from; u < to; u += 1) {
      const userId = id('usr', u);
      const userCreatedAt = userCreated(u);
      for (let k = 0; k < DELEGATIONS_PER_USER; k += 1) {
        const i = u * DELEGATIONS_PER_USER + k;
        if (i >= count) return;
        const s = ((u * 31 + k * 17) % SEEDED_AUDIENCES) + 1;
        const audience = `https://service-${s}.example`;
        const createdAt = userCreatedAt + ((i * 104729) % (now - userCreatedAt + 1));
        const uses = i % 50;
        insertDelegation.run(
          id('dlg', i),
          userId,
          agentIds[(u * 7 + k * 13) % agents],
          audience,
          JSON.stringify([`${audience}/api`]),
          k % 2 === 0 ? 'read' : 'read write',
          `Service ${s}`,
          `${audience}/logo.png`,
          JSON.stringify({
            eventsEndpoint: `${audience}/agent/events`,
            eventsSupported: ['https://schemas.workos.com/events/agent/identity/assertion/revoked'],
          }),
          uses,
          uses === 0 ? null : createdAt + ((i * 13) % (now - createdAt + 1)),
          createdAt,
        );
      }
    }
  });
  const usersPerBatch = SEED_BATCH / DELEGATIONS_PER_USER;
  for (let from = 0; from < users; from += usersPerBatch) delegationBatch(from, Math.min(users, from + usersPerBatch));

  return { users, agents, delegations: count };
}

async function startProfiler(): Promise<Session> {
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.start');
  return session;
}

async function stopProfiler(session: Session, path: string): Promise<void> {
  const { profile } = await session.post('Profiler.stop');
  writeFileSync(path, JSON.stringify(profile));
  session.disconnect();
  progress(`CPU profile of the mint run written to ${path}`);
}

async function closeServer(s: Server): Promise<void> {
  s.closeAllConnections();
  s.close();
  await once(s, 'close');
}

