/**
 * Deputy as real operating-system processes, the way several instances behind a load balancer
 * run: `node bin/deputy.js serve` children sharing one database, the `deputy` command line run
 * against that database, and a small round-robin balancer in this process whose URL is the
 * shared issuer. Used by the tests (test/multiprocess.test.ts) and by the bench
 * (bench/mint.ts --postgres), which also reads each process's peak RSS and CPU time.
 *
 * No child outlives this process: its owner stops them (`stop()`: SIGTERM, then SIGKILL), this
 * process kills any left on exit and, unless something else handles the signal (the bench
 * cleans up on SIGINT/SIGTERM, then exits), on SIGINT/SIGTERM; and a watchdog process kills
 * them when this one dies without a chance to (SIGKILL, a crash). The watchdog is plain Node,
 * apart from Deputy: a child cannot be trusted to end itself (one whose standard error nobody
 * reads any more can hang in its own shutdown, in tsx's loader thread, and one stopping itself
 * when its standard input closed was once seen hanging in Atomics.wait).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type { Env } from '../../src/config.ts';

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 5_000;
const CLI_TIMEOUT_MS = 30_000;
/** What is kept of a Deputy process's standard error as text, for failure messages. */
const STDERR_TAIL = 64 * 1024;

/**
 * The watchdog: reads "+PID" and "-PID" lines on standard input, a pipe from this process, and
 * when that pipe closes (this process ended, however) SIGKILLs every PID still listed.
 */
const WATCHDOG = `
const pids = new Set();
let buffer = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  buffer += chunk;
  for (let i = buffer.indexOf('\\n'); i >= 0; i = buffer.indexOf('\\n')) {
    const line = buffer.slice(0, i);
    buffer = buffer.slice(i + 1);
    if (line.startsWith('+')) pids.add(Number(line.slice(1)));
    if (line.startsWith('-')) pids.delete(Number(line.slice(1)));
  }
});
process.stdin.on('end', () => {
  for (const pid of pids) { try { process.kill(pid, 'SIGKILL'); } catch {} }
  process.exit(0);
});
`;

const live = new Set<ChildProcess>();
let watchdog: ChildProcess | undefined;

/** SIGKILLs every child still running; synchronous, for `exit` and signal handlers. */
export function killAll(): void {
  for (const child of live) child.kill('SIGKILL');
}

/**
 * On SIGINT/SIGTERM: if another listener handles the signal, it is theirs (they stop what they
 * started, and `exit` kills what is left); otherwise the children are killed and the signal's
 * default action, ending this process, is taken after all. Runs before the other listeners
 * (prepended), so it sees them all.
 */
function onSignal(signal: NodeJS.Signals): void {
  if (process.listenerCount(signal) > 1) return;
  killAll();
  process.removeListener(signal, onSignal);
  process.kill(process.pid, signal);
}

/** Tracks a child until it exits: killed on this process's exit and by the watchdog. */
function track(child: ChildProcess): void {
  if (watchdog === undefined) {
    watchdog = spawn(process.execPath, ['-e', WATCHDOG], { stdio: ['pipe', 'ignore', 'ignore'] });
    watchdog.unref();
    watchdog.stdin?.on('error', () => undefined);
    (watchdog.stdin as unknown as { unref(): void }).unref();
    process.on('exit', killAll);
    for (const signal of ['SIGINT', 'SIGTERM'] as const) process.prependListener(signal, onSignal);
  }
  const pid = child.pid;
  if (pid === undefined) return;
  live.add(child);
  watchdog.stdin?.write(`+${pid}\n`);
  child.once('exit', () => {
    live.delete(child);
    if (watchdog?.stdin?.writable) watchdog.stdin.write(`-${pid}\n`);
  });
}

/** The environment a child gets: only what is given, plus PATH and HOME. */
function childEnv(env: Env): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH, HOME: process.env.HOME, ...env };
}

let clockTicks: number | undefined;
/** The kernel's clock ticks per second, the unit of /proc/PID/stat's CPU times. */
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

export interface DeputyProcess {
  name: string;
  /** Where this process listens, `http://127.0.0.1:<port>`: requests may go straight here. */
  url: string;
  pid: number;
  /** Every JSON line the process logged so far, in order. */
  logs: Record<string, unknown>[];
  /** Its standard error as text (the last STDERR_TAIL characters), for failure messages. */
  stderr(): string;
  /** The process's peak resident set (VmHWM) so far, in bytes; undefined where /proc is not. */
  peakRss(): number | undefined;
  /** CPU time (user + system) the process used so far, in seconds; undefined where /proc is not. */
  cpuSeconds(): number | undefined;
  stop(): Promise<void>;
}

/** A port 127.0.0.1 has free right now (the child binds it a moment later). */
async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  server.close();
  await once(server, 'close');
  return port;
}

/**
 * Starts `deputy serve` on 127.0.0.1 and a free port, and resolves once /readyz answers 200.
 * `env` is Deputy's whole configuration (plus PATH and HOME); it logs JSON at level info unless
 * `env` says otherwise. The port is chosen here rather than read from the child's log, so the
 * log level may be above info (the bench's, as info logs every request); a port taken in
 * between is retried with another.
 */
export async function startDeputyProcess(name: string, env: Env): Promise<DeputyProcess> {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await startOnce(name, env, await freePort());
    } catch (error) {
      if (attempt >= 3 || !/already in use/.test((error as Error).message)) throw error;
    }
  }
}

async function startOnce(name: string, env: Env, port: number): Promise<DeputyProcess> {
  const child = spawn(process.execPath, ['bin/deputy.js', 'serve'], {
    cwd: REPO_ROOT,
    env: childEnv({ DEPUTY_LOG_FORMAT: 'json', DEPUTY_LOG_LEVEL: 'info', ...env, PORT: String(port), DEPUTY_HOST: '127.0.0.1' }),
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  track(child);
  let exit: { code: number | null; signal: string | null } | undefined;
  const exited = once(child, 'exit').then(([code, signal]) => {
    exit = { code: code as number | null, signal: signal as string | null };
  });

  const logs: Record<string, unknown>[] = [];
  let stderr = '';
  let partial = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-STDERR_TAIL);
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // Not one of Deputy's log lines (a Node warning, say): kept in stderr only.
      }
    }
  });

  const pid = child.pid as number;
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (exit !== undefined) return;
    child.kill('SIGTERM');
    const force = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await exited;
    clearTimeout(force);
  };

  try {
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (exit !== undefined) throw new Error(`exited with ${exit.code ?? exit.signal} before it was ready`);
      if (Date.now() > deadline) throw new Error(`not ready within ${START_TIMEOUT_MS} ms`);
      const ready = await fetch(`${url}/readyz`).then(
        (response) => response.status === 200,
        () => false,
      );
      if (ready) break;
      await sleep(50);
    }
  } catch (error) {
    await stop();
    throw new Error(`Deputy process ${name}: ${(error as Error).message}; stderr:\n${stderr}`);
  }

  return {
    name,
    url,
    pid,
    logs,
    stderr: () => stderr,
    peakRss: () => {
      try {
        const kb = /^VmHWM:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
        return kb === undefined ? undefined : Number(kb) * 1024;
      } catch {
        return undefined;
      }
    },
    cpuSeconds: () => {
      try {
        // Fields after the command name (in parentheses, which may hold spaces): utime is the
        // 12th, stime the 13th.
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond();
      } catch {
        return undefined;
      }
    },
    stop,
  };
}

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `deputy ARGS…` (bin/deputy.js) with exactly this configuration; fails on a hang. */
export function runCli(env: Env, ...args: string[]): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['bin/deputy.js', ...args], {
      cwd: REPO_ROOT,
      env: childEnv(env),
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: CLI_TIMEOUT_MS,
    });
    track(child);
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (signal !== null) reject(new Error(`deputy ${args.join(' ')} was killed by ${signal}; stderr:\n${stderr}`));
      else resolve({ code, stdout, stderr });
    });
  });
}

/** Like runCli, but the command must succeed; returns its standard output. */
export async function cli(env: Env, ...args: string[]): Promise<string> {
  const run = await runCli(env, ...args);
  if (run.code !== 0) throw new Error(`deputy ${args.join(' ')} exited with ${run.code}; stderr:\n${run.stderr}`);
  return run.stdout;
}

export interface Balancer {
  /** The public URL: what DEPUTY_ISSUER names, where browsers and services go. */
  url: string;
  /** Where requests are forwarded, in turn; set once the processes are up. */
  targets: string[];
  /** How many requests went to each target. */
  forwarded: Map<string, number>;
  close(): Promise<void>;
}

/**
 * A round-robin HTTP balancer on 127.0.0.1: each request goes, untouched, to the next target.
 * Deputy sets Host to the issuer's itself, so nothing needs rewriting.
 */
export async function startBalancer(): Promise<Balancer> {
  const server: Server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const balancer: Balancer = {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    targets: [],
    forwarded: new Map(),
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
  let next = 0;
  server.on('request', (incoming, outgoing) => {
    const target = balancer.targets[next++ % Math.max(1, balancer.targets.length)];
    if (target === undefined) {
      outgoing.writeHead(503).end('no backend');
      return;
    }
    balancer.forwarded.set(target, (balancer.forwarded.get(target) ?? 0) + 1);
    const { hostname, port } = new URL(target);
    const proxied = httpRequest(
      { hostname, port, method: incoming.method, path: incoming.url, headers: incoming.headers },
      (response) => {
        outgoing.writeHead(response.statusCode ?? 502, response.rawHeaders);
        response.pipe(outgoing);
      },
    );
    proxied.on('error', () => {
      if (!outgoing.headersSent) outgoing.writeHead(502);
      outgoing.end();
    });
    incoming.pipe(proxied);
  });
  return balancer;
}
