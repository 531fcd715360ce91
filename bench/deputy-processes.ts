/**
 * Deputy as separate operating-system processes for bench/mint.ts --postgres: `node
 * bin/deputy.js serve` children, each with its own event loop, sharing only the database, and
 * a round-robin balancer in the bench process whose URL is their shared issuer (the setup's
 * browser and device flows go through it; the load goes straight to each process's port).
 *
 * No child outlives the bench: `stop()` ends it (SIGTERM, then SIGKILL), `killAll()` is for
 * the bench's exit and signal handlers, and each child also stops by itself when its standard
 * input (a pipe from the bench) closes, which covers the bench being killed outright.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 5_000;
/** What is kept of a child's standard error, for failure messages. */
const STDERR_TAIL = 16 * 1024;

/** Loaded before Deputy in every child: the pipe from the bench closing stops it (see above). */
const ORPHAN_GUARD =
  'data:text/javascript,process.stdin.on("end",()=>{setTimeout(()=>process.exit(1),2000).unref();' +
  'process.kill(process.pid,"SIGTERM")}).resume()';

const live = new Set<ChildProcess>();

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

/** SIGKILLs every child still running; synchronous, for `exit` handlers. */
export function killAll(): void {
  for (const child of live) child.kill('SIGKILL');
}

export interface DeputyProcess {
  name: string;
  /** `http://127.0.0.1:<port>`, where this process listens. */
  url: string;
  pid: number;
  /** The process's peak resident set (VmHWM) so far, in bytes; undefined where /proc is not. */
  peakRss(): number | undefined;
  /** CPU time (user + system) the process used so far, in seconds; undefined where /proc is not. */
  cpuSeconds(): number | undefined;
  stderr(): string;
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
 * Starts `deputy serve` on 127.0.0.1 and a free port, with exactly `env` (plus PATH and HOME)
 * as its configuration, and resolves once /readyz answers 200. The port is chosen here rather
 * than logged by the child, so the child's log level can stay above `info` (which logs every
 * request); a port taken in between is retried with another.
 */
export async function startDeputyProcess(name: string, env: Record<string, string>): Promise<DeputyProcess> {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await startOnce(name, env, await freePort());
    } catch (error) {
      if (attempt >= 3 || !/already in use/.test((error as Error).message)) throw error;
    }
  }
}

async function startOnce(name: string, env: Record<string, string>, port: number): Promise<DeputyProcess> {
  const child = spawn(process.execPath, ['--import', ORPHAN_GUARD, 'bin/deputy.js', 'serve'], {
    cwd: REPO_ROOT,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env, PORT: String(port), DEPUTY_HOST: '127.0.0.1' },
    stdio: ['pipe', 'ignore', 'pipe'],
  });
  live.add(child);
  let exit: { code: number | null; signal: string | null } | undefined;
  const exited = once(child, 'exit').then(([code, signal]) => {
    live.delete(child);
    exit = { code: code as number | null, signal: signal as string | null };
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-STDERR_TAIL);
  });

  const pid = child.pid as number;
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (exit !== undefined) return;
    child.kill('SIGTERM');
    const done = await Promise.race([exited.then(() => true), sleep(STOP_TIMEOUT_MS).then(() => false)]);
    if (!done) {
      child.kill('SIGKILL');
      await exited;
    }
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
    stderr: () => stderr,
    stop,
  };
}

export interface Balancer {
  /** The public URL, what DEPUTY_ISSUER names. */
  url: string;
  /** Where requests are forwarded, in turn; set once the processes are up. */
  targets: string[];
  close(): Promise<void>;
}

/** A round-robin HTTP balancer on 127.0.0.1: each request goes, untouched, to the next target. */
export async function startBalancer(): Promise<Balancer> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const balancer: Balancer = {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    targets: [],
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
