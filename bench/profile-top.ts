/**
 * The hottest functions of a V8 CPU profile (`.cpuprofile`, from `npm run bench -- --profile
 * FILE` or `node --cpu-prof`), by self time, and the same time summed per package.
 *
 *   node --import tsx bench/profile-top.ts FILE [--top 10]
 *
 * Then the inclusive time of Deputy's own functions (src/): the time spent in them and in
 * everything they called, which is where the native SQLite and drizzle time above comes from.
 *
 * Self time is the time a function was on top of the stack. `(idle)` is the event loop waiting
 * (for sockets, or for work in libuv's thread pool such as WebCrypto signatures, which this
 * profile of the main thread does not see); `(program)` is native work V8 cannot attribute.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { top: { type: 'string', default: '10' } },
});
const file = positionals[0];
if (file === undefined) {
  console.error('usage: node --import tsx bench/profile-top.ts FILE [--top 10]');
  process.exit(2);
}
const top = Number(values.top);
const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;

const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
const parents = new Map<number, number>();
for (const node of profile.nodes) for (const child of node.children ?? []) parents.set(child, node.id);
const selfMicros = new Map<number, number>();
const average = (profile.endTime - profile.startTime) / Math.max(1, profile.samples.length);
profile.samples.forEach((id, i) => {
  // timeDeltas[i] is the time since the previous sample: the next delta is this sample's time.
  const micros = profile.timeDeltas[i + 1] ?? average;
  selfMicros.set(id, (selfMicros.get(id) ?? 0) + micros);
});

/** Where a function lives: the project file, the package in node_modules, or Node itself. */
function place(url: string): { short: string; pkg: string } {
  if (url === '') return { short: '', pkg: '(native)' };
  if (url.startsWith('node:')) return { short: url, pkg: 'node' };
  const path = url.replace(/^file:\/\//, '');
  const modules = path.lastIndexOf('/node_modules/');
  if (modules >= 0) {
    const rest = path.slice(modules + '/node_modules/'.length);
    const parts = rest.split('/');
    const pkg = rest.startsWith('@') ? `${parts[0]}/${parts[1]}` : (parts[0] as string);
    return { short: rest, pkg };
  }
  const project = path.indexOf('/src/') >= 0 ? path.slice(path.indexOf('/src/') + 1) : path;
  return { short: project, pkg: project.startsWith('src/') ? 'deputy' : project };
}

/** tsx-compiled project files report every function on line 1: leave the line out then. */
function where(short: string, lineNumber: number): string {
  return lineNumber === 0 ? short : `${short}:${lineNumber + 1}`;
}

/**
 * A native function (better-sqlite3's `run`, `get`, `Statement`…), named with the Deputy
 * function that led to it (else its nearest JavaScript caller), so the SQLite time is attributed.
 */
function nativeKey(id: number, name: string): string {
  if (name.startsWith('(')) return name;
  let caller: string | undefined;
  for (let at = parents.get(id); at !== undefined; at = parents.get(at)) {
    const { functionName, url } = (nodes.get(at) as ProfileNode).callFrame;
    const { short, pkg } = place(url);
    if (pkg === 'deputy') return `${name}  (native) <- ${functionName || '(anonymous)'} in ${short}`;
    if (caller === undefined && url !== '') caller = `${functionName || '(anonymous)'} in ${short}`;
  }
  return caller === undefined ? `${name}  (native)` : `${name}  (native) <- ${caller}`;
}

const byFunction = new Map<string, { micros: number; pkg: string }>();
const byPackage = new Map<string, number>();
let total = 0;
for (const [id, micros] of selfMicros) {
  const { functionName, url, lineNumber } = (nodes.get(id) as ProfileNode).callFrame;
  const { short, pkg } = place(url);
  const name = functionName === '' ? '(anonymous)' : functionName;
  const key = short === '' ? nativeKey(id, name) : `${name}  ${where(short, lineNumber)}`;
  const entry = byFunction.get(key) ?? { micros: 0, pkg };
  entry.micros += micros;
  byFunction.set(key, entry);
  const group = name.startsWith('(') && short === '' ? name : pkg;
  byPackage.set(group, (byPackage.get(group) ?? 0) + micros);
  total += micros;
}

// Inclusive time of Deputy's functions: each sample counts once for every distinct src/ frame
// on its stack.
const inclusive = new Map<string, number>();
for (const [id, micros] of selfMicros) {
  const seen = new Set<string>();
  for (let at: number | undefined = id; at !== undefined; at = parents.get(at)) {
    const { functionName, url, lineNumber } = (nodes.get(at) as ProfileNode).callFrame;
    const { short, pkg } = place(url);
    if (pkg !== 'deputy') continue;
    const key = `${functionName === '' ? '(anonymous)' : functionName}  ${where(short, lineNumber)}`;
    if (seen.has(key)) continue;
    seen.add(key);
    inclusive.set(key, (inclusive.get(key) ?? 0) + micros);
  }
}

const idle = byFunction.get('(idle)')?.micros ?? 0;
const ms = (micros: number) => `${(micros / 1000).toFixed(0).padStart(7)} ms`;
const share = (micros: number) => `${((100 * micros) / total).toFixed(1).padStart(5)}%`;

console.log(`profile: ${(total / 1e6).toFixed(2)} s sampled, ${(idle / 1e6).toFixed(2)} s idle\n`);
console.log(`top ${top} functions by self time (idle excluded):`);
[...byFunction]
  .filter(([key]) => key !== '(idle)')
  .sort((a, b) => b[1].micros - a[1].micros)
  .slice(0, top)
  .forEach(([key, { micros }], i) => console.log(`${String(i + 1).padStart(3)}. ${ms(micros)} ${share(micros)}  ${key}`));

console.log('\nself time by package:');
[...byPackage]
  .sort((a, b) => b[1] - a[1])
  .slice(0, 15)
  .forEach(([pkg, micros]) => console.log(`     ${ms(micros)} ${share(micros)}  ${pkg}`));

console.log(`\nDeputy's functions by inclusive time (theirs and what they call):`);
[...inclusive]
  .sort((a, b) => b[1] - a[1])
  .slice(0, 20)
  .forEach(([key, micros]) => console.log(`     ${ms(micros)} ${share(micros)}  ${key}`));
