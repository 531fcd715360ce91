/**
 * A small auth.md service for trying Deputy locally: it trusts the Deputy you name, accepts
 * ID-JAGs at its registration endpoint, hands out a credential for its `/api/me`, and takes
 * revocation events. It is the same independent verifier the test suite uses.
 *
 *   node --import tsx examples/service.ts [--trust http://localhost:4000] [--port 4500]
 */
import { parseArgs } from 'node:util';
import { startAuthMdService } from '../test/helpers/services.ts';

const { values } = parseArgs({
  options: {
    trust: { type: 'string', default: process.env.DEPUTY_URL ?? 'http://localhost:4000' },
    port: { type: 'string', default: '4500' },
    name: { type: 'string', default: 'Example Notes' },
  },
});

const service = await startAuthMdService({
  trustedIssuers: [values.trust],
  name: values.name,
  port: Number(values.port),
}).catch((error: NodeJS.ErrnoException) => {
  console.error(error.code === 'EADDRINUSE' ? `port ${values.port} is in use; try --port` : error.message);
  process.exit(1);
});

console.log(`${values.name} is running.`);
console.log(`  protected resource: ${service.resource}`);
console.log(`  issuer (audience):  ${service.issuer}`);
console.log(`  trusts ID-JAGs from ${values.trust}`);

const stop = async () => {
  await service.close();
  process.exit(0);
};
process.once('SIGINT', stop);
process.once('SIGTERM', stop);

const printed = new Set<string>();
setInterval(() => {
  const latest = service.accepted.at(-1);
  if (latest !== undefined && !printed.has(String(latest.claims.jti))) {
    printed.add(String(latest.claims.jti));
    console.log(`accepted an ID-JAG for ${latest.claims.email} (sub ${latest.claims.sub}) from ${latest.claims.agent_platform}`);
  }
}, 500);
