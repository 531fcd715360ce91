/**
 * Benchmark: how long Deputy takes to drain 1,000 queued revocations to a live service.
 *
 *   npm run bench:revocations [-- --count 1000] [-- --json]
 *
 * Starts Deputy on a temporary database and an auth.md service on 127.0.0.1, queues `count`
 * revocation events (one per delegation, as revoking them would), starts the delivery worker
 * and measures until the service has verified and accepted every event. Not a test: it
 * prints numbers and asserts nothing.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { createDeputy } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { enqueueRevocations } from '../src/db/outbox.ts';
import { REVOKED_EVENT, startAuthMdService } from '../test/helpers/services.ts';

const { values } = parseArgs({
  options: { count: { type: 'string', default: '1000' }, json: { type: 'boolean', default: false } },
});
const count = Number(values.count);

const dir = mkdtempSync(join(tmpdir(), 'deputy-bench-'));
const server = createServer();
server.listen(0, '127.0.0.1');
await once(server, 'listening');
const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
const config = loadConfig({
  DEPUTY_ISSUER: issuer,
  DEPUTY_DB: join(dir, 'deputy.db'),
  DEPUTY_ALLOW_LOOPBACK_SERVICES: 'true',
  DEPUTY_EVENT_POLL_MS: '20',
});
const deputy = await createDeputy(config, pino({ level: 'silent' }));
server.on('request', deputy.app.callback());
const service = await startAuthMdService({ trustedIssuers: [issuer] });

await deputy.worker.stop();
const rows = Array.from({ length: count }, (_, i) => ({
  id: `dlg_bench_${i}`,
  userId: `usr_bench_${i}`,
  agentClientId: 'agt_bench',
  audience: service.issuer,
  uses: 1,
  lastUsedAt: null,
  serviceAgentAuth: { eventsEndpoint: `${service.url}/agent/events`, eventsSupported: [REVOKED_EVENT] },
}));
const { database } = deputy.store;
await database.transaction((tx) => enqueueRevocations(tx, database.t, rows));

const started = performance.now();
deputy.worker.start();
while (service.events.length < count) await new Promise((r) => setTimeout(r, 10));
const seconds = (performance.now() - started) / 1000;
const failed = (await deputy.outbox.list(count)).filter((e) => e.state !== 'delivered').length;

const result = {
  revocations: count,
  seconds: Number(seconds.toFixed(2)),
  per_second: Math.round(count / seconds),
  not_delivered: failed,
  rss_mb: Math.round(process.memoryUsage().rss / 1e6),
};
console.log(values.json ? JSON.stringify(result) : `drained ${count} revocations in ${result.seconds} s (${result.per_second}/s), peak RSS ${result.rss_mb} MB`);

await service.close();
server.close();
await deputy.close();
rmSync(dir, { recursive: true, force: true });
process.exit(0);
