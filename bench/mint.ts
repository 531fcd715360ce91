/**
 * Benchmark: how many ID-JAGs Deputy mints per second, against what the same process could do
 * at best (a bare koa endpoint that parses the same form and signs the same JWT), and how many
 * JWKS requests it serves; with --postgres, also how many two Deputy processes on one
 * PostgreSQL database mint together.
 *
 *   npm run bench [-- --delegations 10000] [-- --duration 10] [-- --json] [-- --profile FILE]
 *   npm run bench -- --postgres postgres://user@host:5432/db     (adds two processes on PostgreSQL)
 *
 * Starts Deputy in this process on a temporary SQLite file, seeds `delegations` delegations
 * (with their users and agents; bench/seed.ts) straight into SQLite, then makes the subjects of
 * the load the real way: agents registered in the registry, connected by the device flow for
 * people signed in through the development sign-in (real refresh tokens), and an 'always'
 * delegation for each (person, agent, audience). autocannon then drives, each for `duration`
 * seconds at 64 connections:
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
 * answer but 200, connection error or timeout counts as an error. Peak RSS is sampled in this
 * process (Deputy and the ceiling server, not the load generator) during the runs.
 *
 * `--profile FILE` writes a V8 CPU profile of this process during the mint run only (warm-up
 * included); `node --import tsx bench/profile-top.ts FILE` lists its hottest functions.
 *
 * `--postgres URL` names a PostgreSQL server where the bench may create and drop a database of
 * its own (the URL's database is only where it connects to do so). After the runs above it
 * also measures the scale-out setup: a fresh database `deputy_bench_<random>`, migrated and
 * seeded with the same rows, and TWO Deputy processes on it (`node bin/deputy.js serve`, real
 * OS processes, each its own event loop, sharing only the database), with the same
 * DEPUTY_ISSUER, DEPUTY_SECRET and DEPUTY_DB, rate limits off, log level warn (the in-process
 * SQLite Deputy logs nothing), each on its own port. The issuer is a round-robin balancer in
 * this process, which the setup's sign-ins and device flows go through, to both processes in
 * turn (the development sign-in keeps its sign-ins in the shared database); agents are
 * registered and their 'always' delegations made through the store in this process, and every
 * (agent, refresh token, audience) is minted once at each process before the load. The mint
 * load then goes straight to the two ports, not through the balancer: one autocannon instance
 * per process, each with half the connections, in the same load-generator child and over the
 * same time window; mints/s, errors and p50/p99 are reported over both together and per
 * process, with each process's peak RSS (VmHWM from /proc, its whole life: start, setup and
 * the run) and the CPU time it used during the load (/proc/PID/stat). The ceiling and JWKS
 * runs are not repeated there. The processes are stopped and the database dropped at the end,
 * also on failure and on Ctrl-C (SIGINT/SIGTERM); if this one is killed outright, a watchdog
 * process kills the Deputy processes (test/helpers/processes.ts), but the database then stays.
 *
 * Not a test: it prints numbers and asserts only that the setup worked. With --json, one JSON
 * object; --postgres adds a `postgres` object to it (whose errors are not in the top-level
 * `errors`, which stays the SQLite runs').
 */
import { fork } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { Session } from 'node:inspector/promises';
import type { AddressInfo } from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { bodyParser } from '@koa/bodyparser';
import Database from 'better-sqlite3';
import { decodeJwt, decodeProtectedHeader, SignJWT } from 'jose';
import Koa from 'koa';
import pg from 'pg';
import pino from 'pino';
import { registerAgent } from '../src/agents/registry.ts';
import { createDeputy } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { DelegationStore } from '../src/db/delegations.ts';
import { isPostgresUrl, openDatabaseOrExplain, redactUrl } from '../src/db/index.ts';
import { Store } from '../src/db/store.ts';
import { basic, connectByDevice, ID_JAG, REFRESH_TOKEN, TOKEN_EXCHANGE } from '../test/helpers/agent.ts';
import { Browser, formAction } from '../test/helpers/browser.ts';
import { NO_RATE_LIMITS } from '../test/helpers/deputy.ts';
import { killAll, startBalancer, startDeputyProcess, type DeputyProcess } from '../test/helpers/processes.ts';
import type { LoadJob, LoadRequest, LoadResult } from './mint-load.ts';
import { SEEDED_AUDIENCES, seedPostgres, seedSqlite } from './seed.ts';

const USAGE =
  'usage: npm run bench -- [--delegations N] [--duration SECONDS] [--connections N] [--json] [--profile FILE]\n' +
  '                        [--postgres URL]   also two Deputy processes on a fresh database on that server';

function parseOptions() {
  try {
    return parseArgs({
      options: {
        delegations: { type: 'string', default: '10000' },
        duration: { type: 'string', default: '10' },
        connections: { type: 'string', default: '64' },
        json: { type: 'boolean', default: false },
        profile: { type: 'string' },
        postgres: { type: 'string' },
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
const postgresUrl = values.postgres;
if (postgresUrl !== undefined && !(isPostgresUrl(postgresUrl) && URL.canParse(postgresUrl))) {
  console.error(`--postgres must be a postgres:// URL, got '${postgresUrl}'\n${USAGE}`);
  process.exit(2);
}
if (postgresUrl !== undefined && connections < 2) {
  console.error('--connections must be at least 2 with --postgres (they are split over two processes)');
  process.exit(2);
}
const WARMUP_SECONDS = 1;
/** Real agents, each connected for its own person, each with a delegation per audience. */
const REAL_AGENTS = 4;
const REAL_AUDIENCES = 4;
/** Deputy processes on PostgreSQL. */
const PG_PROCESSES = 2;

const progress = (message: string) => {
  if (!values.json) console.error(message);
};

// Clean-up, last in first out, once: on the way out, on failure and on SIGINT/SIGTERM.

const cleanups: (() => Promise<void>)[] = [];
let cleaning: Promise<void> | undefined;
let interrupted = false;
function cleanUp(): Promise<void> {
  cleaning ??= (async () => {
    for (let task = cleanups.pop(); task !== undefined; task = cleanups.pop()) {
      await task().catch((error: unknown) => console.error(`clean-up: ${(error as Error).message}`));
    }
  })();
  return cleaning;
}
process.on('exit', killAll);
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    interrupted = true;
    console.error(`${signal}: cleaning up${postgresUrl === undefined ? '' : ' (Deputy processes, bench database)'}`);
    void cleanUp().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
  });
}

// A PostgreSQL server that does not answer fails now, not after the SQLite runs.
if (postgresUrl !== undefined) await adminQuery(postgresUrl, 'select 1');

const dir = mkdtempSync(join(tmpdir(), 'deputy-bench-'));
cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
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
const seeded = seedSqlite(seedDb, delegationCount);
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
const triples = await connectAgents(running, deputy.store, deputy.delegations);

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
const template = await setupMints(issuer, mintRequests);
const claimsTemplate = template.claims;
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
function load(label: string, url: string, requests: LoadRequest[], targets?: string[]): Promise<LoadResult> {
  const job: LoadJob = {
    id: (jobs += 1),
    label,
    url,
    ...(targets === undefined ? {} : { targets }),
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

// The SQLite Deputy and the ceiling are done: this process only orchestrates from here on.
await closeServer(ceilingServer);
await closeServer(server);
await deputy.close();

const postgres = postgresUrl === undefined ? undefined : await runPostgres(postgresUrl);

// Report.

const runs = [mint, bare, jwks];
const errorsOf = (r: LoadResult) => r.non200 + r.connectionErrors + r.timeouts;
const errors = runs.reduce((sum, r) => sum + errorsOf(r), 0);
const mb = (bytes: number | undefined) => (bytes === undefined ? null : Math.round(bytes / 1e6));
const cpuOf = (seconds: number | undefined) => (seconds === undefined ? null : Number(seconds.toFixed(1)));
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
  ...(postgres === undefined
    ? {}
    : {
        postgres: {
          processes: PG_PROCESSES,
          alg: postgres.alg,
          mints_per_second: postgres.mint.perSecond,
          p50_ms: postgres.mint.p50Ms,
          p99_ms: postgres.mint.p99Ms,
          /** Two processes on PostgreSQL over one process on SQLite, mints per second. */
          sqlite_ratio: mint.perSecond === 0 ? 0 : Number((postgres.mint.perSecond / mint.perSecond).toFixed(3)),
          errors: errorsOf(postgres.mint),
          per_process: (postgres.mint.perTarget ?? []).map((target, i) => ({
            connections: target.connections,
            mints_per_second: target.perSecond,
            p50_ms: target.p50Ms,
            p99_ms: target.p99Ms,
            errors: target.non200 + target.connectionErrors + target.timeouts,
            peak_rss_mb: mb(postgres.peakRss[i]),
            cpu_seconds: cpuOf(postgres.cpuSeconds[i]),
          })),
          /** Seconds the load lasted, warm-up included: the span of per_process[].cpu_seconds. */
          load_seconds: Number(postgres.loadSeconds.toFixed(1)),
        },
      }),
};

for (const r of postgres === undefined ? runs : [...runs, postgres.mint]) {
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
  const lines = [
    `mint     ${n(mint.perSecond)}/s  p50 ${mint.p50Ms} ms  p99 ${mint.p99Ms} ms  ` +
      `(${n(mint.ok)} ID-JAGs in ${mint.seconds} s, ${alg}, ${n(delegationCount)} seeded delegations, ${connections} connections)`,
    `ceiling  ${n(bare.perSecond)}/s  p50 ${bare.p50Ms} ms  p99 ${bare.p99Ms} ms  (bare koa + @koa/bodyparser + jose SignJWT)`,
    `ratio    mint/ceiling ${result.mint_ceiling_ratio}`,
    `jwks     ${n(jwks.perSecond)}/s  p50 ${jwks.p50Ms} ms  p99 ${jwks.p99Ms} ms`,
    `peak RSS ${result.peak_rss_mb} MB (Deputy and the ceiling server; the load generator runs in its own process)`,
    `errors   ${errors} (mint ${errorsOf(mint)}, ceiling ${errorsOf(bare)}, jwks ${errorsOf(jwks)})`,
  ];
  if (postgres !== undefined && result.postgres !== undefined) {
    const pgMint = postgres.mint;
    const perProcess = pgMint.perTarget ?? [];
    const rss = (i: number) => {
      const value = mb(postgres.peakRss[i]);
      return value === null ? 'n/a' : `${value} MB`;
    };
    lines.unshift('SQLite, 1 process (Deputy in this process)');
    lines.push(
      '',
      `PostgreSQL, ${PG_PROCESSES} processes (node bin/deputy.js serve each, one database, the load split over both)`,
      `mint     ${n(pgMint.perSecond)}/s  p50 ${pgMint.p50Ms} ms  p99 ${pgMint.p99Ms} ms  ` +
        `(${n(pgMint.ok)} ID-JAGs in ${pgMint.seconds} s, ${postgres.alg}, ${n(delegationCount)} seeded delegations, ${connections} connections)`,
      ...perProcess.map(
        (target, i) =>
          `  ${String.fromCharCode(65 + i)}      ${n(target.perSecond)}/s  p50 ${target.p50Ms} ms  p99 ${target.p99Ms} ms  ` +
          `(${target.connections} connections, ${target.url}, errors ${target.non200 + target.connectionErrors + target.timeouts})`,
      ),
      `ratio    PostgreSQL ${PG_PROCESSES} processes / SQLite 1 process ${result.postgres.sqlite_ratio}`,
      `peak RSS ${perProcess.map((_, i) => `${String.fromCharCode(65 + i)} ${rss(i)}`).join(', ')} ` +
        '(each process, VmHWM; the load generator runs in its own process)',
      `CPU      ${perProcess.map((_, i) => `${String.fromCharCode(65 + i)} ${cpuOf(postgres.cpuSeconds[i]) ?? 'n/a'} s`).join(', ')} ` +
        `in the ${postgres.loadSeconds.toFixed(1)} s of the load, warm-up included (${availableParallelism()} cores)`,
      `errors   ${result.postgres.errors}`,
    );
  }
  console.log(lines.join('\n'));
}

loader.disconnect();
await cleanUp();
process.exit(0);

// Helpers.

/**
 * The subjects of the load, made the real way: REAL_AGENTS agents registered in the registry,
 * each connected by the device flow for its own person signed in through the development
 * sign-in at `at.url` (real refresh tokens), and an 'always' delegation for each of
 * REAL_AUDIENCES audiences.
 */
async function connectAgents(
  at: Parameters<typeof connectByDevice>[0],
  store: Store,
  delegations: DelegationStore,
): Promise<Triple[]> {
  const made: Triple[] = [];
  for (let a = 1; a <= REAL_AGENTS; a += 1) {
    const name = `Bench Agent ${a}`;
    const { agent, clientSecret } = await registerAgent(store, { name, redirectUris: [] });
    const credentials = { clientId: agent.clientId, clientSecret: clientSecret as string, name };

    const browser = new Browser();
    const form = await browser.go(`${at.url}/login`);
    const home = await browser.submit(formAction(form), { email: `bench-${a}@example.com`, name: `Bench User ${a}` });
    if (home.status !== 200 || home.url !== `${at.url}/`) throw new Error(`sign-in failed: ${home.status} ${home.url}`);

    const tokens = await connectByDevice(at, credentials, browser);
    const userId = decodeJwt(tokens.id_token).sub as string;
    for (let s = 1; s <= REAL_AUDIENCES; s += 1) {
      const audience = `https://service-${s}.example`;
      await delegations.createDelegation({
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
      made.push({ ...credentials, refreshToken: tokens.refresh_token, audience });
    }
  }
  return made;
}

/** One real mint per request at `url`; returns the first ID-JAG's claims and algorithm. */
async function setupMints(url: string, requests: LoadRequest[]): Promise<{ claims: Record<string, unknown>; alg: string }> {
  let first: { claims: Record<string, unknown>; alg: string } | undefined;
  for (const request of requests) {
    const response = await fetch(`${url}${request.path}`, {
      method: request.method,
      headers: request.headers,
      body: request.body as string,
    });
    const body = (await response.json()) as Record<string, unknown>;
    if (response.status !== 200) throw new Error(`setup mint at ${url} failed: ${response.status} ${JSON.stringify(body)}`);
    const header = decodeProtectedHeader(body.access_token as string);
    if (header.typ !== 'oauth-id-jag+jwt') throw new Error(`setup mint returned typ ${header.typ}`);
    first ??= { claims: decodeJwt(body.access_token as string), alg: header.alg as string };
  }
  if (first === undefined) throw new Error('no setup mint');
  return first;
}

/**
 * The PostgreSQL run (see the header): a fresh database, seeded; PG_PROCESSES Deputy processes
 * on it; the subjects made through them; the mint load split over them. Everything it starts
 * or creates is undone before it returns or throws.
 */
async function runPostgres(serverUrl: string): Promise<{
  mint: LoadResult;
  alg: string;
  peakRss: (number | undefined)[];
  /** CPU time each process used during the load (warm-up included). */
  cpuSeconds: (number | undefined)[];
  /** How long the load lasted, warm-up included. */
  loadSeconds: number;
}> {
  try {
    const name = `deputy_bench_${randomBytes(6).toString('hex')}`;
    await adminQuery(serverUrl, `create database ${name}`);
    cleanups.push(async () => {
      await adminQuery(serverUrl, `drop database if exists ${name} with (force)`);
      progress(`postgres: dropped database ${name}`);
    });
    const url = new URL(serverUrl);
    url.pathname = `/${name}`;
    const databaseUrl = url.toString();
    progress(`postgres: created database ${name} on ${redactUrl(serverUrl)}`);

    // Migrated and seeded from here, before any Deputy process starts.
    const database = await openDatabaseOrExplain(databaseUrl);
    let open = true;
    const closeDatabase = async () => {
      if (open) await database.close();
      open = false;
    };
    cleanups.push(closeDatabase);
    await database.migrate();
    const started = performance.now();
    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    const rows = await seedPostgres(client, delegationCount).finally(() => client.end());
    progress(
      `postgres: seeded ${rows.delegations} delegations for ${rows.users} users, ${rows.agents} agents and ` +
        `${SEEDED_AUDIENCES} audiences in ${((performance.now() - started) / 1000).toFixed(1)} s`,
    );

    const balancer = await startBalancer();
    cleanups.push(() => balancer.close());
    const env: Record<string, string> = {
      DEPUTY_ISSUER: balancer.url,
      DEPUTY_DB: databaseUrl,
      DEPUTY_SECRET: randomBytes(32).toString('hex'),
      ...(NO_RATE_LIMITS as Record<string, string>),
      DEPUTY_LOG_LEVEL: 'warn',
      DEPUTY_LOG_FORMAT: 'json',
      DEPUTY_SHUTDOWN_TIMEOUT: '2',
    };
    const processes: DeputyProcess[] = [];
    for (let i = 0; i < PG_PROCESSES; i += 1) {
      const started = await startDeputyProcess(`postgres-${String.fromCharCode(65 + i)}`, env);
      processes.push(started);
      cleanups.push(() => started.stop());
    }
    // The setup's browser goes through the balancer to both, as a fleet's would.
    balancer.targets = processes.map((p) => p.url);
    progress(
      `postgres: ${PG_PROCESSES} Deputy processes on one database, ` +
        `${processes.map((p, i) => `${String.fromCharCode(65 + i)} pid ${p.pid} at ${p.url}`).join(', ')}; issuer ${balancer.url}`,
    );

    const made = await connectAgents({ url: balancer.url } as Parameters<typeof connectByDevice>[0], new Store(database), new DelegationStore(database));
    const requests = made.map(mintRequest);
    let alg = '';
    for (const p of processes) alg = (await setupMints(p.url, requests)).alg;
    // This process holds no connection to the database during the load.
    await closeDatabase();
    progress(`postgres: connected ${REAL_AGENTS} agents by the device flow; every (agent, refresh token, audience) mints at every process`);

    const share = processes.map((_, i) => Math.floor(connections / PG_PROCESSES) + (i < connections % PG_PROCESSES ? 1 : 0));
    progress(
      `postgres mint: ${connections} connections (${share.join(' + ')}), ${durationSeconds} s (after ${WARMUP_SECONDS} s warm-up), ` +
        `straight to the ${PG_PROCESSES} processes`,
    );
    const cpuBefore = processes.map((p) => p.cpuSeconds());
    const loadStarted = performance.now();
    const pgMint = await load('postgres mint', processes[0]?.url as string, requests, processes.map((p) => p.url));
    const loadSeconds = (performance.now() - loadStarted) / 1000;
    const cpuSeconds = processes.map((p, i) => {
      const [before, after] = [cpuBefore[i], p.cpuSeconds()];
      return before === undefined || after === undefined ? undefined : after - before;
    });
    const peakRss = processes.map((p) => p.peakRss());
    for (const p of processes) {
      if (/"level":(50|60)/.test(p.stderr())) console.error(`${p.name} logged errors:\n${p.stderr()}`);
    }
    return { mint: pgMint, alg, peakRss, cpuSeconds, loadSeconds };
  } catch (error) {
    if (interrupted) await new Promise(() => {}); // the signal handler cleans up and exits
    throw error;
  } finally {
    await cleanUp();
  }
}

/** One statement on the server's own database (`serverUrl` as given), on a connection of its own. */
async function adminQuery(serverUrl: string, statement: string): Promise<void> {
  const admin = new pg.Client({ connectionString: serverUrl });
  try {
    await admin.connect();
    await admin.query(statement);
  } catch (error) {
    throw new Error(`--postgres ${redactUrl(serverUrl)}: ${statement}: ${(error as Error).message}`);
  } finally {
    await admin.end().catch(() => undefined);
  }
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

