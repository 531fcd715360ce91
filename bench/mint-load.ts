/**
 * The load generator of bench/mint.ts, run as a child process (`fork`) so that autocannon's
 * own work (building requests, parsing answers, histograms) runs in another process and does
 * not compete with the server's event loop; the OS schedules it on the other core.
 *
 * The parent sends one `LoadJob` per run over IPC; this process answers with a `LoadResult`.
 * Each run starts with a short warm-up whose answers are not counted. Status codes and the
 * latency of every 200 answer are recorded here exactly (to 0.01 ms), rather than from
 * autocannon's integer-millisecond histogram.
 *
 * A job with `targets` (several processes serving the same database) runs one autocannon
 * instance per target at once, over the same time window, with the connections split evenly
 * between them; the result counts them together (latency percentiles over every answer) and
 * also per target.
 */
import autocannon from 'autocannon';

export interface LoadRequest {
  method: 'GET' | 'POST';
  path: string;
  headers: Record<string, string>;
  body?: string;
}

export interface LoadJob {
  id: number;
  label: string;
  url: string;
  /** Several base URLs to drive at once instead of `url`, `connections` split between them. */
  targets?: string[];
  connections: number;
  durationSeconds: number;
  warmupSeconds: number;
  /** Rotated through in order by every connection (autocannon `requests`). */
  requests: LoadRequest[];
}

export interface LoadResult {
  id: number;
  label: string;
  /** Seconds the measured part of the run lasted (after the warm-up). */
  seconds: number;
  ok: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  /** Answers by status code, 200 included. */
  statuses: Record<string, number>;
  /** Answers other than 200. */
  non200: number;
  connectionErrors: number;
  timeouts: number;
  /** Up to five distinct bodies of non-200 answers, truncated. */
  errorSamples: string[];
  /** With `targets`: each one's share, in their order. */
  perTarget?: TargetResult[];
}

export interface TargetResult {
  url: string;
  connections: number;
  ok: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  non200: number;
  connectionErrors: number;
  timeouts: number;
}

interface Tally {
  /** Responses before this time (ms since the epoch) are the warm-up and are not counted. */
  countFrom: number;
  latencies: number[];
  statuses: Record<string, number>;
  errorSamples: Set<string>;
}

/**
 * One autocannon run of warm-up plus measured time over the same connections: a separate
 * warm-up run would end with its connections torn down, and the new ones' first requests then
 * wait behind the busy server (up to seconds for the mint), which is not the steady state.
 */
function runOnce(job: LoadJob, url: string, connections: number, tally: Tally): Promise<autocannon.Result> {
  return new Promise((resolve, reject) => {
    const instance = autocannon(
      {
        url,
        connections,
        duration: job.warmupSeconds + job.durationSeconds,
        requests: job.requests.map((r) => ({
          method: r.method,
          path: r.path,
          headers: r.headers,
          ...(r.body !== undefined ? { body: r.body } : {}),
          onResponse: (status: number, body: string) => {
            if (status !== 200 && tally.errorSamples.size < 5 && Date.now() >= tally.countFrom) {
              tally.errorSamples.add(`${status} ${String(body).slice(0, 300)}`);
            }
          },
        })),
      },
      (error, result) => (error ? reject(error) : resolve(result)),
    );
    instance.on('response', (_client, statusCode, _bytes, responseTime) => {
      if (Date.now() < tally.countFrom) return;
      tally.statuses[statusCode] = (tally.statuses[statusCode] ?? 0) + 1;
      if (statusCode === 200) tally.latencies.push(responseTime);
    });
  });
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  const index = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return Math.round((sorted[Math.max(0, index)] as number) * 100) / 100;
}

function newTally(countFrom: number): Tally {
  return { countFrom, latencies: [], statuses: {}, errorSamples: new Set() };
}

async function run(job: LoadJob): Promise<LoadResult> {
  const countFrom = Date.now() + job.warmupSeconds * 1000;
  const urls = job.targets ?? [job.url];
  // The connections split as evenly as they go: 64 over two targets is 32 each.
  const shares = urls.map((_, i) => Math.floor(job.connections / urls.length) + (i < job.connections % urls.length ? 1 : 0));
  const tallies = urls.map(() => newTally(countFrom));
  const results = await Promise.all(urls.map((url, i) => runOnce(job, url, shares[i] as number, tallies[i] as Tally)));
  const seconds = Math.round(Date.now() - countFrom) / 1000;

  const summary = (tally: Tally) => {
    const sorted = tally.latencies.sort((a, b) => a - b);
    const ok = tally.statuses['200'] ?? 0;
    const answered = Object.values(tally.statuses).reduce((a, b) => a + b, 0);
    return { ok, perSecond: Math.round(ok / seconds), p50Ms: percentile(sorted, 50), p99Ms: percentile(sorted, 99), non200: answered - ok };
  };
  const all = newTally(countFrom);
  for (const tally of tallies) {
    for (const latency of tally.latencies) all.latencies.push(latency);
    for (const [status, n] of Object.entries(tally.statuses)) all.statuses[status] = (all.statuses[status] ?? 0) + n;
    for (const sample of tally.errorSamples) if (all.errorSamples.size < 5) all.errorSamples.add(sample);
  }
  // autocannon counts these over the whole run, warm-up included.
  const connectionErrors = results.reduce((sum, r) => sum + r.errors, 0);
  const timeouts = results.reduce((sum, r) => sum + r.timeouts, 0);
  return {
    id: job.id,
    label: job.label,
    seconds,
    ...summary(all),
    statuses: all.statuses,
    connectionErrors,
    timeouts,
    errorSamples: [...all.errorSamples],
    ...(job.targets === undefined
      ? {}
      : {
          perTarget: urls.map((url, i) => ({
            url,
            connections: shares[i] as number,
            ...summary(tallies[i] as Tally),
            connectionErrors: (results[i] as autocannon.Result).errors,
            timeouts: (results[i] as autocannon.Result).timeouts,
          })),
        }),
  };
}

process.on('message', (job: LoadJob) => {
  run(job).then(
    (result) => process.send?.(result),
    (error: unknown) => {
      console.error(`load generator: ${(error as Error).stack ?? String(error)}`);
      process.exit(1);
    },
  );
});
process.on('disconnect', () => process.exit(0));
