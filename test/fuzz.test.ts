/**
 * Deputy's HTTP surface under malformed input (issue 6): fast-check generates thousands of
 * requests and sends them over real HTTP (node:http, so methods, raw bytes, duplicated headers
 * and content types go out exactly as generated) to one Deputy per describe block.
 *
 * Generated: parameter names (known, random, prototype names, bracketed), values (real tokens,
 * codes, ids and CSRF tokens from the set-up, mutations of them that keep their length,
 * random and binary strings), duplicated parameters, form, raw (invalid percent-encoding,
 * invalid UTF-8, Latin-1 bytes), JSON and random-byte bodies, absent, wrong and duplicated
 * content types and charsets, random methods, random headers, garbage Basic and Bearer
 * credentials, session cookies that are valid, foreign, tampered or garbage, and headers up to
 * Node's 16 KiB limit, and now and then a 2 MB body (explicit cases below too).
 *
 * Properties, for every response: never 5xx, never a stack trace or an internal path; the OAuth
 * endpoints (token, device authorization, revocation) answer JSON: 200 on success, else a 4xx
 * with a string `error` of RFC 6749 section 5.2's character set; the pages answer an HTML page
 * or a redirect.
 *
 * The seed is fixed. DEPUTY_FUZZ_SEED=<n> replays another, DEPUTY_FUZZ_SEED=random draws one
 * (fast-check prints seed and path of a failure), DEPUTY_FUZZ_RUNS=<factor> scales the runs.
 */
import assert from 'node:assert/strict';
import { Agent as HttpAgent, METHODS, request, type IncomingHttpHeaders } from 'node:http';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { registerAgent } from '../src/agents/registry.ts';
import { Browser, formAction } from './helpers/browser.ts';
import { listen, startDeputy, tempDir, upstreamEnv, type RunningDeputy } from './helpers/deputy.ts';
import {
  addAgent,
  basic,
  connectByDevice,
  ID_JAG,
  ID_TOKEN,
  mint,
  post,
  REFRESH_TOKEN,
  TOKEN_EXCHANGE,
  type DeviceTokens,
  type TestAgent,
} from './helpers/agent.ts';
import { startAuthMdService, type AuthMdService } from './helpers/services.ts';
import { startUpstream, type TestUpstream } from './helpers/upstream.ts';

const FIXED_SEED = 6_062_026;
const RUN_FACTOR = Number(process.env.DEPUTY_FUZZ_RUNS ?? '1');

/** fast-check's parameters for one property; each property (`label`) gets its own seed. */
function runs(label: string, count: number): fc.Parameters<unknown> {
  const wanted = process.env.DEPUTY_FUZZ_SEED;
  const base = wanted === 'random' ? undefined : wanted ? Number(wanted) : FIXED_SEED;
  let salt = 0;
  for (const char of label) salt = (salt * 31 + (char.codePointAt(0) as number)) | 0;
  const seed = base === undefined ? undefined : (base ^ salt) | 0;
  return {
    numRuns: Math.max(1, Math.round(count * RUN_FACTOR)),
    ...(seed === undefined ? {} : { seed }),
    includeErrorInReport: true,
    // Shrinking replays requests against a server whose state has moved on; keep it bounded.
    interruptAfterTimeLimit: 120_000,
  };
}

const DEVICE_CODE = 'urn:ietf:params:oauth:grant-type:device_code';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const TWO_MB = 2 * 1024 * 1024;

// -------------------------------------------------------------------------------------------
// Sending requests exactly as generated.

type Pairs = [string, string][];

interface Sent {
  method: string;
  /** Path and query, printable ASCII. */
  path: string;
  /** Header name/value pairs; Host and framing are added by `send`. */
  headers: [string, string][];
  body?: Buffer | undefined;
  chunked?: boolean;
}

interface Received {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

const keepAlive = new HttpAgent({ keepAlive: true, maxSockets: 4 });
let requestCount = 0;
/** What oversized bodies were answered, printed at the end for the report. */
const oversizedSeen: string[] = [];

/** Node refuses to send header values outside these characters; map the rest into them. */
function headerSafe(value: string): string {
  let out = '';
  for (const char of value) {
    const code = char.codePointAt(0) as number;
    out += code === 9 || (code >= 0x20 && code <= 0x7e) || (code >= 0x80 && code <= 0xff)
      ? char
      : String.fromCharCode(0x20 + (code % 0x5f));
  }
  return out;
}

/** Percent-encodes the UTF-8 bytes of a string (lone surrogates included, as U+FFFD). */
function percentEncode(text: string): string {
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    const char = String.fromCharCode(byte);
    out += /[A-Za-z0-9\-_.!~*'()]/.test(char) ? char : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/**
 * The request line in printable ASCII. Characters up to U+00FF are percent-encoded as one byte
 * (Latin-1, so invalid UTF-8 arrives), the rest as UTF-8. Node's client would send bytes
 * 0x80-0xff raw, but Node's server answers those itself, a bare 400 before any application
 * code runs.
 */
function pathSafe(value: string): string {
  let out = '';
  for (const char of value) {
    const code = char.codePointAt(0) as number;
    if (code >= 0x21 && code <= 0x7e) out += char;
    else if (code <= 0xff) out += `%${code.toString(16).toUpperCase().padStart(2, '0')}`;
    else out += percentEncode(char);
  }
  return out;
}

function sendOnce(base: URL, sent: Sent): Promise<Received> {
  return new Promise((resolve, reject) => {
    const headers: string[] = ['Host', base.host];
    for (const [name, value] of sent.headers) headers.push(name, value);
    if (sent.body !== undefined) {
      if (sent.chunked) headers.push('Transfer-Encoding', 'chunked');
      else headers.push('Content-Length', String(sent.body.length));
    }
    let answered = false;
    const req = request(
      {
        host: base.hostname,
        port: base.port,
        method: sent.method,
        path: sent.path,
        headers,
        // A server may answer an oversized body before reading it and then drop the rest with
        // the connection; such a body gets a connection of its own.
        agent: (sent.body?.length ?? 0) > 64 * 1024 ? false : keepAlive,
      },
      (res) => {
        answered = true;
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => resolve({ status: res.statusCode as number, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.setTimeout(15_000, () => req.destroy(new Error('no answer within 15 s')));
    req.on('error', (error: NodeJS.ErrnoException) => {
      // A server may answer before reading an oversized body and close; the answer counts.
      if (answered) return;
      Object.assign(error, { reusedSocket: req.reusedSocket });
      reject(error);
    });
    req.end(sent.body);
  });
}

async function send(base: URL, sent: Sent): Promise<Received> {
  requestCount += 1;
  try {
    return await sendOnce(base, sent);
  } catch (error) {
    // A kept-alive socket the server closed meanwhile: Node's documented retry.
    const { code, reusedSocket } = error as NodeJS.ErrnoException & { reusedSocket?: boolean };
    if (reusedSocket && (code === 'ECONNRESET' || code === 'EPIPE')) return sendOnce(base, sent);
    throw error;
  }
}

// -------------------------------------------------------------------------------------------
// The properties.

/** Stack frames, module paths or source locations in a body. */
const LEAK = /node_modules|file:\/\/|\bat [\w$.<>[\] ]+ \(|\.(?:ts|js|mjs):\d+:\d+|\b(?:TypeError|RangeError|ReferenceError|SyntaxError): /;
/** RFC 6749 section 5.2: `error` and `error_description` are %x20-21 / %x23-5B / %x5D-7E. */
const ERROR_CODE = /^[\x20\x21\x23-\x5b\x5d-\x7e]+$/;

function describeExchange(sent: Sent, got: Received): string {
  const headers = sent.headers.map(([n, v]) => `${n}: ${v.length > 120 ? `${v.slice(0, 120)}…(${v.length})` : v}`);
  const body = sent.body === undefined ? '(none)' : `${sent.body.subarray(0, 300).toString('latin1')}${sent.body.length > 300 ? `…(${sent.body.length} bytes)` : ''}`;
  return [
    `${sent.method} ${sent.path.slice(0, 300)}`,
    ...headers,
    `body: ${body}`,
    `=> ${got.status} ${got.headers['content-type'] ?? '(no content-type)'} location=${got.headers.location ?? ''}`,
    got.body.subarray(0, 600).toString('utf8'),
  ].join('\n');
}

function assertCommon(sent: Sent, got: Received): void {
  assert.ok(got.status < 500, `5xx\n${describeExchange(sent, got)}`);
  assert.ok(got.status >= 200, `status below 200\n${describeExchange(sent, got)}`);
  assert.doesNotMatch(got.body.toString('utf8'), LEAK, `internal detail in the body\n${describeExchange(sent, got)}`);
}

type OAuthEndpoint = '/token' | '/device_authorization' | '/revoke';

/** OAuth endpoints: JSON, 200 on success or a 4xx with a standard `error`. */
function assertOAuthAnswer(endpoint: OAuthEndpoint, sent: Sent, got: Received): void {
  assertCommon(sent, got);
  const context = describeExchange(sent, got);
  const type = String(got.headers['content-type'] ?? '');
  // A CORS preflight is answered by oidc-provider with 204 and no body.
  if (sent.method === 'OPTIONS' && got.status === 204) return;

  if (got.status >= 200 && got.status < 300) {
    assert.equal(got.status, 200, context);
    assert.equal(sent.method, 'POST', `success for another method\n${context}`);
    if (endpoint === '/revoke' && got.body.length === 0) return; // RFC 7009: 200, no content
    assert.match(type, /^application\/json/, context);
    const body = JSON.parse(got.body.toString('utf8')) as Record<string, unknown>;
    if (endpoint === '/token') assert.equal(typeof body.access_token, 'string', context);
    if (endpoint === '/device_authorization') assert.equal(typeof body.device_code, 'string', context);
    return;
  }

  assert.ok(got.status >= 400 && got.status < 500, `expected 200 or 4xx\n${context}`);
  assert.match(type, /^application\/json/, `an OAuth error must be JSON\n${context}`);
  if (sent.method === 'HEAD') return;
  let body: unknown;
  try {
    body = JSON.parse(got.body.toString('utf8'));
  } catch {
    assert.fail(`the error body is not JSON\n${context}`);
  }
  assert.ok(typeof body === 'object' && body !== null && !Array.isArray(body), context);
  const { error, error_description: description } = body as Record<string, unknown>;
  assert.equal(typeof error, 'string', `no string error\n${context}`);
  assert.match(error as string, ERROR_CODE, context);
  if (description !== undefined) {
    assert.equal(typeof description, 'string', context);
    assert.match(description as string, ERROR_CODE, context);
  }
  if (got.status === 401) assert.equal(error, 'invalid_client', context);
}

/** People's pages: an HTML page, or a redirect. */
function assertPageAnswer(sent: Sent, got: Received): void {
  assertCommon(sent, got);
  const context = describeExchange(sent, got);
  if (got.status >= 300 && got.status < 400) {
    assert.ok(got.headers.location, `a redirect without Location\n${context}`);
    return;
  }
  assert.match(String(got.headers['content-type'] ?? ''), /^text\/html/, `a page must be HTML\n${context}`);
  if (sent.method !== 'HEAD') assert.match(got.body.toString('utf8'), /^<!doctype html>|<html/i, context);
}

// -------------------------------------------------------------------------------------------
// Generators.

const METHODS_SENT = METHODS.filter((m) => m !== 'CONNECT');

function methodArb(usual: 'GET' | 'POST'): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 20, arbitrary: fc.constant(usual) },
    { weight: 2, arbitrary: fc.constant(usual === 'POST' ? 'GET' : 'POST') },
    { weight: 1, arbitrary: fc.constantFrom('HEAD', 'OPTIONS') },
    { weight: 2, arbitrary: fc.constantFrom(...METHODS_SENT) },
  );
}

/** A few characters that change byte length, break encodings or end strings early. */
const oddChar = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom('é', '€', 'ÿ', '中', 'ß', 'Ω', '\u202e') },
  { weight: 2, arbitrary: fc.constantFrom('\u0000', '\ud800', '\udfff', '😀', '%', '&', '=', '+', ' ', '"', '<') },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }) },
);

type Change = 'replace' | 'truncate' | 'append' | 'upper' | 'encode' | 'pad';
const changeArb = fc.tuple(fc.nat(), oddChar, fc.constantFrom<Change>('replace', 'replace', 'replace', 'truncate', 'append', 'upper', 'encode', 'pad'));

/** A known value changed the way a careless or hostile client would. */
function change(value: string, [at, char, how]: [number, string, Change]): string {
  const i = value.length === 0 ? 0 : at % value.length;
  switch (how) {
    case 'replace':
      // Often the same length in characters, not in bytes.
      return value.slice(0, i) + char + value.slice(i + 1);
    case 'truncate':
      return value.slice(0, i);
    case 'append':
      return value + char;
    case 'upper':
      return value.toUpperCase();
    case 'encode':
      return percentEncode(value);
    default:
      return ` ${value}\t`;
  }
}

function mutationOf(pool: string[]): fc.Arbitrary<string> {
  return fc.tuple(fc.constantFrom(...pool), changeArb).map(([value, how]) => change(value, how));
}

function valueArb(pool: string[]): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 8, arbitrary: fc.constantFrom(...pool) },
    { weight: 4, arbitrary: mutationOf(pool) },
    { weight: 2, arbitrary: fc.string({ maxLength: 40 }) },
    { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
    {
      weight: 1,
      arbitrary: fc.constantFrom(
        '',
        ' ',
        'null',
        'undefined',
        '[]',
        '{}',
        'true',
        '-1',
        '1e309',
        'NaN',
        '__proto__',
        '../../etc/passwd',
        '<script>alert(1)</script>',
        'a'.repeat(4000),
        'é'.repeat(43),
        '\u0000'.repeat(16),
      ),
    },
  );
}

const ODD_NAMES = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'a[b]', 'scope[]', 'client_id[]', '', ' ', 'grant_type ', 'GRANT_TYPE', 'x'.repeat(300)];

function nameArb(known: string[]): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 8, arbitrary: fc.constantFrom(...known) },
    { weight: 2, arbitrary: fc.string({ maxLength: 20 }) },
    { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 12 }) },
    { weight: 1, arbitrary: fc.constantFrom(...ODD_NAMES) },
  );
}

/**
 * Parameters: a template (a request that would do something), with entries dropped, values
 * replaced or changed a little, random entries added and some duplicated.
 */
function pairsArb(templates: Pairs[], names: fc.Arbitrary<string>, values: fc.Arbitrary<string>): fc.Arbitrary<Pairs> {
  return fc
    .record({
      template: fc.constantFrom(...templates),
      drop: fc.array(fc.integer({ min: 0, max: 9 }), { minLength: 16, maxLength: 16 }),
      replace: fc.array(fc.tuple(fc.nat(), values), { maxLength: 3 }),
      changes: fc.array(fc.tuple(fc.nat(), changeArb), { maxLength: 3 }),
      add: fc.array(fc.tuple(names, values), { maxLength: 5 }),
      duplicate: fc.array(fc.tuple(fc.nat(), fc.option(values, { freq: 2 })), { maxLength: 2 }),
    })
    .map(({ template, drop, replace, changes, add, duplicate }) => {
      const pairs: Pairs = template.filter((_, i) => (drop[i % drop.length] as number) > 0).map(([k, v]) => [k, v]);
      for (const [at, value] of replace) if (pairs.length > 0) (pairs[at % pairs.length] as [string, string])[1] = value;
      for (const [at, how] of changes) {
        if (pairs.length === 0) break;
        const pair = pairs[at % pairs.length] as [string, string];
        pair[1] = change(pair[1], how);
      }
      pairs.push(...add);
      for (const [at, value] of duplicate) {
        if (pairs.length === 0) break;
        const [name, original] = pairs[at % pairs.length] as [string, string];
        pairs.push([name, value ?? original]);
      }
      return pairs;
    });
}

/** How one name or value is written into a raw form or query. */
type Spelling = 'encoded' | 'plain' | 'latin1' | 'badPercent' | 'badUtf8';
const spellingArb = fc.oneof(
  { weight: 6, arbitrary: fc.constant<Spelling>('encoded') },
  { weight: 1, arbitrary: fc.constantFrom<Spelling>('plain', 'latin1', 'badPercent', 'badUtf8') },
);
const BAD_PERCENT = ['%', '%z', '%zz', '%G1', '%%', '%c3%28', '%ff%fe', '%e2%82', '%ed%a0%80', '%f8%88%80%80%80', '%00', '%C0%AF'];
const BAD_UTF8 = [Buffer.from([0xff]), Buffer.from([0xc3, 0x28]), Buffer.from([0xe2, 0x82]), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from([0xc0, 0xaf]), Buffer.from([0xfe, 0xff, 0x00])];

function spell(text: string, how: Spelling, salt: number): Buffer {
  switch (how) {
    case 'encoded':
      return Buffer.from(percentEncode(text));
    case 'plain':
      return Buffer.from(text, 'utf8');
    case 'latin1':
      return Buffer.from(text, 'latin1');
    case 'badPercent': {
      const at = text.length === 0 ? 0 : salt % (text.length + 1);
      return Buffer.from(percentEncode(text.slice(0, at)) + BAD_PERCENT[salt % BAD_PERCENT.length] + percentEncode(text.slice(at)));
    }
    default: {
      const at = text.length === 0 ? 0 : salt % (text.length + 1);
      return Buffer.concat([Buffer.from(text.slice(0, at)), BAD_UTF8[salt % BAD_UTF8.length] as Buffer, Buffer.from(text.slice(at))]);
    }
  }
}

interface RawForm {
  spellings: [Spelling, Spelling, number][];
  separator: string;
}

const rawFormArb: fc.Arbitrary<RawForm> = fc.record({
  spellings: fc.array(fc.tuple(spellingArb, spellingArb, fc.nat()), { minLength: 12, maxLength: 12 }),
  separator: fc.constantFrom('&', '&', '&', ';', '&&', '&amp;'),
});

function rawForm(pairs: Pairs, raw: RawForm): Buffer {
  const parts: Buffer[] = [];
  pairs.forEach(([name, value], i) => {
    const [nameHow, valueHow, salt] = raw.spellings[i % raw.spellings.length] as [Spelling, Spelling, number];
    if (i > 0) parts.push(Buffer.from(raw.separator));
    parts.push(spell(name, nameHow, salt), Buffer.from('='), spell(value, valueHow, salt >> 3));
  });
  return Buffer.concat(parts);
}

type BodyKind = 'form' | 'raw' | 'json' | 'jsonJunk' | 'bytes' | 'none';

const bodyKindArb = (usual: 'form' | 'none') =>
  fc.oneof(
    { weight: 10, arbitrary: fc.constant<BodyKind>(usual) },
    { weight: 4, arbitrary: fc.constant<BodyKind>(usual === 'form' ? 'raw' : 'form') },
    { weight: 2, arbitrary: fc.constantFrom<BodyKind>('json', 'jsonJunk', 'bytes', usual === 'form' ? 'none' : 'raw') },
  );

const CONTENT_TYPES = [
  'application/x-www-form-urlencoded; charset=utf-8',
  'application/x-www-form-urlencoded; charset=UTF-8',
  'application/x-www-form-urlencoded; charset=latin1',
  'application/x-www-form-urlencoded; charset=iso-8859-1',
  'application/x-www-form-urlencoded; charset=utf-16le',
  'application/x-www-form-urlencoded; charset=bogus',
  'application/x-www-form-urlencoded; charset=',
  'application/x-www-form-urlencoded; charset="utf-8',
  'application/x-www-form-urlencoded;;;',
  'APPLICATION/X-WWW-FORM-URLENCODED',
  'application/x-www-form-urlencoded, application/json',
  'application/json',
  'application/json; charset=utf-32',
  'application/jwt',
  'text/plain',
  'text/html',
  'multipart/form-data',
  'multipart/form-data; boundary=----x',
  '*/*',
  ';',
  '',
  'garbage',
];

/** Each entry is one Content-Type header; none, one, or two. */
const contentTypeArb = (usual: string | undefined): fc.Arbitrary<string[]> =>
  fc.oneof(
    { weight: 10, arbitrary: fc.constant<string[]>(usual === undefined ? [] : [usual]) },
    { weight: 2, arbitrary: fc.constant<string[]>([]) },
    { weight: 4, arbitrary: fc.constantFrom(...CONTENT_TYPES).map((t): string[] => [t]) },
    { weight: 1, arbitrary: fc.string({ maxLength: 40 }).map((t): string[] => [headerSafe(t)]) },
    { weight: 1, arbitrary: fc.tuple(fc.constantFrom(...CONTENT_TYPES), fc.constantFrom(...CONTENT_TYPES)).map((t): string[] => [...t]) },
  );

const FORBIDDEN_HEADERS = new Set([
  'host',
  'content-length',
  'transfer-encoding',
  'connection',
  'keep-alive',
  'upgrade',
  'expect',
  'te',
  'trailer',
  'proxy-connection',
  'http2-settings',
  'content-type',
  'cookie',
  'authorization',
]);

const headerNameArb = fc.oneof(
  fc.constantFrom('x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'forwarded', 'origin', 'referer', 'user-agent', 'accept-language', 'accept-encoding', 'dpop', 'x-http-method-override', 'if-none-match', 'range', 'content-encoding', 'oauth-client-attestation', 'access-control-request-method'),
  fc.stringMatching(/^[a-z0-9!#$%&'*+.^_`|~-]{1,24}$/),
).filter((name) => !FORBIDDEN_HEADERS.has(name.toLowerCase()));

const headerValueArb = fc.oneof(fc.string({ maxLength: 80 }), fc.string({ unit: 'binary', maxLength: 40 }), fc.constantFrom('gzip', 'deflate', 'bytes=0-1', '*', 'null', 'POST')).map(headerSafe);

const ACCEPTS = ['application/json', 'text/html', 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8', '*/*', 'image/png', 'application/jwt', 'garbage;q=x'];

type Who = 'nobody' | 'ada' | 'bob' | 'anon';
type CookieTwist = 'asIs' | 'tampered' | 'extra' | 'garbage' | 'huge';

interface HeaderPlan {
  authorization: string[];
  who: Who;
  cookieTwist: CookieTwist;
  accept: string | null;
  extra: [string, string][];
  big: { name: string; size: number } | null;
  chunked: boolean;
}

/** Values of the Authorization header: none, real credentials, or garbage. */
function authorizationArb(credentials: string[], tokens: string[]): fc.Arbitrary<string[]> {
  const garbage = fc.oneof(
    fc.uint8Array({ maxLength: 48 }).map((b) => `Basic ${Buffer.from(b).toString('base64')}`),
    fc.tuple(fc.string({ maxLength: 20 }), fc.string({ maxLength: 20 })).map(([u, p]) => `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`),
    fc.string({ maxLength: 40 }).map((s) => `Basic ${s}`),
    fc.constantFrom('Basic', 'Basic ', 'Basic ===', 'Basic Og==', 'Basic %%%', 'basic  YTpi', 'Bearer', 'Bearer ', 'DPoP x', 'Digest username="a"', 'Negotiate YII='),
    fc.constantFrom(...tokens).map((t) => `Bearer ${t}`),
    fc.string({ maxLength: 60 }),
  ).map(headerSafe);
  return fc.oneof(
    { weight: 5, arbitrary: fc.constant<string[]>([]) },
    { weight: 6, arbitrary: fc.constantFrom(...credentials).map((c) => [c]) },
    { weight: 4, arbitrary: garbage.map((g) => [g]) },
    { weight: 1, arbitrary: fc.tuple(fc.constantFrom(...credentials), garbage).map((pair) => [...pair]) },
  );
}

function headerPlanArb(credentials: string[], tokens: string[], whoWeights: [Who, number][]): fc.Arbitrary<HeaderPlan> {
  return fc.record({
    authorization: authorizationArb(credentials, tokens),
    who: fc.oneof(...whoWeights.map(([who, weight]) => ({ weight, arbitrary: fc.constant(who) }))),
    cookieTwist: fc.oneof(
      { weight: 10, arbitrary: fc.constant<CookieTwist>('asIs') },
      { weight: 1, arbitrary: fc.constantFrom<CookieTwist>('tampered', 'extra', 'garbage', 'huge') },
    ),
    accept: fc.option(fc.constantFrom(...ACCEPTS), { freq: 2 }),
    extra: fc.array(fc.tuple(headerNameArb, headerValueArb), { maxLength: 4 }),
    big: fc.option(fc.record({ name: fc.constantFrom('x-fuzz-padding', 'user-agent', 'accept-language', 'authorization'), size: fc.integer({ min: 4000, max: 11_000 }) }), { freq: 12 }),
    chunked: fc.oneof({ weight: 8, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  });
}

async function cookieFor(browsers: Record<Exclude<Who, 'nobody'>, Browser>, who: Who, twist: CookieTwist, url: string): Promise<string | null> {
  const real = who === 'nobody' ? '' : await browsers[who].jar.getCookieString(url);
  switch (twist) {
    case 'asIs':
      return real === '' ? null : real;
    case 'tampered':
      // Flip a character of every signature.
      return real.replace(/(\.sig=)(.)/g, (_, prefix: string, c: string) => `${prefix}${c === 'A' ? 'B' : 'A'}`) || 'deputy_session=x; deputy_session.sig=y';
    case 'extra':
      return `${real}; deputy_session=${'z'.repeat(40)}; deputy_op_session=%ff; deputy_interaction=; ${'a'.repeat(10)}`;
    case 'garbage':
      return 'deputy_session=%E0%A4%A; deputy_session.sig=; =; ;;; deputy_interaction="unterminated';
    default:
      return `${real}; big=${'c'.repeat(9000)}`;
  }
}

// -------------------------------------------------------------------------------------------
// The request plan and its rendering into bytes.

interface Plan {
  method: string;
  path: string;
  pairs: Pairs;
  placement: 'body' | 'query' | 'both';
  bodyKind: BodyKind;
  raw: RawForm;
  json: unknown;
  bytes: Uint8Array;
  contentType: string[];
  headers: HeaderPlan;
  /** The body padded to 2 MB. */
  oversized: boolean;
}

/** A path segment `@consent` stands for a consent request that is still open. */
const LIVE_CONSENT = '@consent';

async function render(plan: Plan, world: World): Promise<Sent> {
  const { browsers } = world;
  const baseUrl = world.deputy.url;
  const inQuery = plan.placement !== 'body' ? plan.pairs : [];
  const inBody = plan.placement !== 'query' ? plan.pairs : [];
  const query = inQuery.length === 0 ? '' : `${plan.path.includes('?') ? '&' : '?'}${rawForm(inQuery, plan.raw).toString('latin1')}`;
  let target = plan.path;
  if (target.split('/').includes(LIVE_CONSENT)) target = target.replace(LIVE_CONSENT, await openConsentRequest(world));
  const path = pathSafe(target + query);

  let body: Buffer | undefined;
  switch (plan.bodyKind) {
    case 'form':
      body = Buffer.from(new URLSearchParams(inBody).toString());
      break;
    case 'raw':
      body = rawForm(inBody, plan.raw);
      break;
    case 'json': {
      const object: Record<string, unknown> = {};
      for (const [name, value] of inBody) {
        const previous = object[name];
        object[name] = previous === undefined ? value : Array.isArray(previous) ? [...previous, value] : [previous, value];
      }
      body = Buffer.from(JSON.stringify(Object.keys(object).length > 0 ? object : plan.json) ?? 'null');
      break;
    }
    case 'jsonJunk':
      body = Buffer.from((JSON.stringify(plan.json) ?? '').slice(0, -1) || '{"');
      break;
    case 'bytes':
      body = Buffer.from(plan.bytes);
      break;
    default:
      body = undefined;
  }

  if (plan.oversized) body = Buffer.concat([body ?? Buffer.alloc(0), Buffer.alloc(TWO_MB, 'a')]).subarray(0, TWO_MB);

  const headers: [string, string][] = [];
  for (const type of plan.contentType) headers.push(['Content-Type', type]);
  for (const value of plan.headers.authorization) headers.push(['Authorization', value]);
  const cookie = await cookieFor(browsers, plan.headers.who, plan.headers.cookieTwist, new URL(path.split('?')[0] as string, baseUrl).href);
  if (cookie !== null) headers.push(['Cookie', headerSafe(cookie)]);
  if (plan.headers.accept !== null) headers.push(['Accept', plan.headers.accept]);
  headers.push(...plan.headers.extra);

  // Node's server takes 16 KiB of request line and headers (more is its own bare 431): the
  // padding fills what is left, and the longest part is cut if a huge cookie or query went over.
  const budget = 15_800;
  let fitted = path;
  const size = () => fitted.length + 40 + headers.reduce((n, [k, v]) => n + k.length + v.length + 4, 0);
  if (plan.headers.big !== null) {
    const room = Math.min(plan.headers.big.size, budget - size() - plan.headers.big.name.length - 12);
    if (room > 0) {
      const filler = 'A'.repeat(room);
      headers.push([plan.headers.big.name, plan.headers.big.name === 'authorization' ? `Bearer ${filler}` : filler]);
    }
  }
  while (size() > budget) {
    const excess = size() - budget;
    const longest = headers.reduce((a, b) => (b[1].length > a[1].length ? b : a), ['', ''] as [string, string]);
    if (fitted.length > longest[1].length) fitted = fitted.slice(0, Math.max(1, fitted.length - excess));
    else longest[1] = longest[1].slice(0, Math.max(0, longest[1].length - excess));
  }
  return { method: plan.method, path: fitted, headers, body, chunked: plan.headers.chunked && body !== undefined };
}

interface TargetOptions {
  method: 'GET' | 'POST';
  paths: fc.Arbitrary<string>;
  pairs: fc.Arbitrary<Pairs>;
  headers: fc.Arbitrary<HeaderPlan>;
}

function planArb(target: TargetOptions): fc.Arbitrary<Plan> {
  const usualBody = target.method === 'POST' ? 'form' : 'none';
  return fc.record({
    method: methodArb(target.method),
    path: target.paths,
    pairs: target.pairs,
    placement: fc.oneof(
      { weight: 8, arbitrary: fc.constant<Plan['placement']>(target.method === 'POST' ? 'body' : 'query') },
      { weight: 2, arbitrary: fc.constantFrom<Plan['placement']>('body', 'query', 'both') },
    ),
    bodyKind: bodyKindArb(usualBody),
    raw: rawFormArb,
    json: fc.jsonValue({ maxDepth: 3 }),
    bytes: fc.uint8Array({ maxLength: 256 }),
    contentType: contentTypeArb(target.method === 'POST' ? 'application/x-www-form-urlencoded' : undefined),
    headers: target.headers,
    oversized: fc.oneof({ weight: 150, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  });
}

// -------------------------------------------------------------------------------------------
// One Deputy with everything a request can refer to.

interface World {
  dir: { remove(): void };
  upstream: TestUpstream;
  deputy: RunningDeputy;
  base: URL;
  serviceA: AuthMdService;
  serviceB: AuthMdService;
  agent: TestAgent;
  publicAgent: { clientId: string };
  browsers: { ada: Browser; bob: Browser; anon: Browser };
  minting: DeviceTokens;
  spare: DeviceTokens;
  deviceCodes: { device_code: string; user_code: string }[];
  consentIds: string[];
  /** Interactions at the consent step, in ada's browser. */
  consentUids: string[];
  /** Interactions at the sign-in step, in anon's browser. */
  loginUids: string[];
  csrf: string[];
  xsrf: string[];
}

/**
 * A consent request of ada's that is still open: the fuzz answers them (a valid CSRF token is
 * one of the values it draws), and the checks behind the answer are reached only while open.
 */
async function openConsentRequest(world: World): Promise<string> {
  for (const id of world.consentIds.slice(1)) {
    if ((await world.deputy.deputy.delegations.findConsentRequest(id))?.outcome === null) return id;
  }
  // Approvals the fuzz made would answer the mint below: withdraw them first.
  const { delegations } = world.deputy.deputy;
  const userId = (await delegations.findConsentRequest(world.consentIds[1] as string) as { userId: string }).userId;
  for (;;) {
    const approved = await delegations.activeDelegation(userId, world.agent.clientId, world.serviceB.issuer);
    if (approved === undefined) break;
    if (!(await delegations.revokeDelegation(userId, approved.id))) break;
  }
  const answer = await mint(world.deputy, world.agent, {
    audience: world.serviceB.issuer,
    subject_token: world.minting.id_token,
    subject_token_type: ID_TOKEN,
  });
  requestCount += 1;
  assert.equal(answer.body.error, 'consent_required', JSON.stringify(answer.body));
  const id = new URL(answer.body.consent_uri as string).pathname.split('/')[2] as string;
  world.consentIds.push(id);
  return id;
}

async function signIn(deputy: RunningDeputy, browser: Browser, sub: string): Promise<void> {
  const form = await browser.go(`${deputy.url}/login`);
  await browser.submit(formAction(form), { sub });
}

function authorizeUrl(deputy: RunningDeputy, clientId: string): string {
  const query = new URLSearchParams({
    client_id: clientId,
    response_type: 'code',
    redirect_uri: 'http://127.0.0.1:9/callback',
    scope: 'openid offline_access email',
    prompt: 'consent',
    code_challenge: 'E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM',
    code_challenge_method: 'S256',
    state: 'fuzz-state',
  });
  return `${deputy.url}/authorize?${query}`;
}

async function buildWorld(): Promise<World> {
  const dir = tempDir('deputy-fuzz-');
  const listening = await listen();
  const upstream = await startUpstream(`${listening.url}/login/callback`);
  upstream.accounts.set('ada', { sub: 'ada', email: 'ada@example.com', email_verified: true, name: 'Ada' });
  upstream.accounts.set('bob', { sub: 'bob', email: 'bob@example.com', email_verified: true, name: 'Bob' });
  const deputy = await startDeputy({
    dbPath: `${dir.path}/deputy.db`,
    env: {
      ...upstreamEnv(upstream),
      DEPUTY_ALLOW_LOOPBACK_SERVICES: 'true',
      // Rate limits would answer most of the fuzz with 429 before it reaches the handlers.
      DEPUTY_RATE_LIMIT_TOKEN: '0',
      DEPUTY_RATE_LIMIT_CLIENT_AUTH_FAILURES: '0',
      DEPUTY_RATE_LIMIT_SIGN_IN: '0',
      DEPUTY_RATE_LIMIT_CONSENT: '0',
    },
    listening,
  });
  const serviceA = await startAuthMdService({ trustedIssuers: [deputy.url], name: 'Acme Files' });
  const serviceB = await startAuthMdService({ trustedIssuers: [deputy.url], name: 'Beta Docs' });
  const agent = await addAgent(deputy, 'Research Bot');
  const { agent: publicAgent } = await registerAgent(deputy.deputy.store, {
    name: 'Public Bot',
    redirectUris: ['http://127.0.0.1:9/callback'],
    public: true,
  });

  const browsers = { ada: new Browser(), bob: new Browser(), anon: new Browser() };
  await signIn(deputy, browsers.ada, 'ada');
  await signIn(deputy, browsers.bob, 'bob');
  const minting = await connectByDevice(deputy, agent, browsers.ada);
  const spare = await connectByDevice(deputy, agent, browsers.ada);

  // A standing delegation for service A, so that mints can succeed; open consent requests for B.
  const first = await mint(deputy, agent, { audience: serviceA.issuer, subject_token: minting.id_token, subject_token_type: ID_TOKEN });
  assert.equal(first.body.error, 'consent_required');
  const consentUri = first.body.consent_uri as string;
  const consentPage = await browsers.ada.go(consentUri);
  const adaCsrf = /name="csrf" value="([^"]+)"/.exec(consentPage.body)?.[1] as string;
  const approved = await browsers.ada.submit(consentUri, { csrf: adaCsrf, decision: 'approve', mode: 'always' });
  assert.match(approved.body, /Approved/);
  const consentIds: string[] = [new URL(consentUri).pathname.split('/')[2] as string];
  for (let i = 0; i < 3; i += 1) {
    const answer = await mint(deputy, agent, { audience: serviceB.issuer, subject_token: minting.id_token, subject_token_type: ID_TOKEN });
    consentIds.push(new URL(answer.body.consent_uri as string).pathname.split('/')[2] as string);
  }

  const deviceCodes: World['deviceCodes'] = [];
  for (const audience of [undefined, serviceA.issuer]) {
    const device = await post(
      `${deputy.url}/device_authorization`,
      { scope: 'openid offline_access', ...(audience ? { audience } : {}) },
      { authorization: basic(agent) },
    );
    deviceCodes.push(device.body as unknown as World['deviceCodes'][number]);
  }

  const xsrf: string[] = [];
  for (const browser of [browsers.ada, browsers.anon]) {
    const page = await browser.go(`${deputy.url}/device`);
    xsrf.push(/name="xsrf" value="([^"]+)"/.exec(page.body)?.[1] as string);
  }
  const home = await browsers.bob.go(`${deputy.url}/`);
  const bobCsrf = /name="csrf" value="([^"]+)"/.exec(home.body)?.[1] as string;

  const consentUids: string[] = [];
  for (let i = 0; i < 3; i += 1) {
    const connect = await browsers.ada.go(authorizeUrl(deputy, agent.clientId));
    consentUids.push(/\/interaction\/([^/?#]+)/.exec(connect.url)?.[1] as string);
  }
  const loginUids: string[] = [];
  for (const clientId of [agent.clientId, publicAgent.clientId]) {
    const response = await browsers.anon.request(authorizeUrl(deputy, clientId));
    loginUids.push(/\/interaction\/([^/?#]+)/.exec(response.headers.get('location') ?? '')?.[1] as string);
  }
  assert.ok([...consentUids, ...loginUids].every(Boolean), 'interactions started');

  return {
    dir,
    upstream,
    deputy,
    base: new URL(deputy.url),
    serviceA,
    serviceB,
    agent,
    publicAgent,
    browsers,
    minting,
    spare,
    deviceCodes,
    consentIds,
    consentUids,
    loginUids,
    csrf: [adaCsrf, bobCsrf],
    xsrf,
  };
}

async function destroyWorld(world: World): Promise<void> {
  await world.deputy.stop();
  await world.serviceA.close();
  await world.serviceB.close();
  await world.upstream.close();
  world.dir.remove();
}

/** Every value a request may carry that means something to Deputy. */
function valuePool(world: World): string[] {
  const { agent, publicAgent, minting, spare, serviceA, serviceB, deviceCodes } = world;
  return [
    // grant and token types
    TOKEN_EXCHANGE,
    DEVICE_CODE,
    JWT_BEARER,
    'authorization_code',
    'refresh_token',
    'client_credentials',
    'password',
    'implicit',
    ID_JAG,
    ID_TOKEN,
    REFRESH_TOKEN,
    'urn:ietf:params:oauth:token-type:access_token',
    'urn:ietf:params:oauth:token-type:jwt',
    CLIENT_ASSERTION_TYPE,
    'access_token',
    // tokens and codes
    minting.id_token,
    minting.refresh_token,
    minting.access_token,
    spare.id_token,
    spare.refresh_token,
    ...deviceCodes.flatMap((d) => [d.device_code, d.user_code, d.user_code.toLowerCase(), d.user_code.replace('-', '')]),
    'eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.',
    'eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.e30.AAAA',
    'a.b.c.d.e',
    // clients
    agent.clientId,
    agent.clientSecret,
    publicAgent.clientId,
    'agt_unknown',
    'deputy',
    // targets and scopes
    serviceA.issuer,
    serviceB.issuer,
    serviceA.resource,
    `${serviceA.issuer}/`,
    'https://service.example',
    'http://example.com',
    'https://user:pass@service.example',
    'https://service.example#frag',
    'urn:x',
    'javascript:alert(1)',
    '//evil.example',
    '/\\evil.example',
    'openid',
    'openid offline_access email profile',
    'read',
    'read write',
    'read read',
    'admin',
    'http://127.0.0.1:9/callback',
    'S256',
    'plain',
    'code',
    'consent',
    'login',
    // forms
    ...world.csrf,
    ...world.xsrf,
    ...world.consentIds,
    ...world.consentUids,
    'approve',
    'deny',
    'once',
    'always',
    'until',
    '2030-01-01',
    new Date(Date.now() + 86_400_000).toISOString().slice(0, 10),
    '2027-02-30',
    '9999-99-99',
    'yes',
    'no',
    '1',
    '0',
    'access_denied',
    'login_required',
    '/',
    `/consent/${world.consentIds[1]}`,
  ];
}

const PARAMETER_NAMES = [
  'grant_type',
  'client_id',
  'client_secret',
  'client_assertion',
  'client_assertion_type',
  'code',
  'code_verifier',
  'redirect_uri',
  'refresh_token',
  'device_code',
  'scope',
  'audience',
  'resource',
  'requested_token_type',
  'subject_token',
  'subject_token_type',
  'actor_token',
  'actor_token_type',
  'token',
  'token_type_hint',
  'user_code',
  'xsrf',
  'confirm',
  'abort',
  'csrf',
  'decision',
  'mode',
  'until',
  'delegate',
  'state',
  'iss',
  'error',
  'error_description',
  'return_to',
  'session_state',
  'response_type',
  'prompt',
  'nonce',
];

/** Ways a client authenticates in the body, appended to a template. */
function withBodyAuth(world: World, template: Pairs): Pairs[] {
  return [
    template,
    [...template, ['client_id', world.agent.clientId], ['client_secret', world.agent.clientSecret]],
    [...template, ['client_id', world.publicAgent.clientId]],
    [
      ...template,
      ['client_id', world.agent.clientId],
      ['client_assertion_type', CLIENT_ASSERTION_TYPE],
      ['client_assertion', 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.AAAA'],
    ],
  ];
}

// -------------------------------------------------------------------------------------------

describe('fuzz: OAuth endpoints', () => {
  let world: World;
  const counts = new Map<string, number>();

  before(async () => {
    world = await buildWorld();
  });

  after(async () => {
    await destroyWorld(world);
  });

  function oauthProperty(endpoint: OAuthEndpoint, templates: Pairs[]) {
    const pool = valuePool(world);
    const values = valueArb(pool);
    const credentials = [basic(world.agent), `Basic ${Buffer.from(`${world.publicAgent.clientId}:`).toString('base64')}`, basic({ clientId: world.agent.clientId, clientSecret: 'wrong' })];
    const plans = planArb({
      method: 'POST',
      paths: fc.oneof({ weight: 20, arbitrary: fc.constant<string>(endpoint) }, { weight: 1, arbitrary: fc.constant(`${endpoint}/`) }),
      pairs: pairsArb(templates, nameArb(PARAMETER_NAMES), values),
      headers: headerPlanArb(credentials, [world.minting.access_token, world.minting.id_token, 'garbage'], [['nobody', 10], ['ada', 1]]),
    });
    return fc.asyncProperty(plans, async (plan) => {
      const sent = await render(plan, world);
      const got = await send(world.base, sent);
      counts.set(`${got.status}`, (counts.get(`${got.status}`) ?? 0) + 1);
      if (plan.path === endpoint) return assertOAuthAnswer(endpoint, sent, got);
      // With a trailing slash it is no endpoint (see the regression below), just a missing page.
      assertPageAnswer(sent, got);
      assert.ok(got.status === 404 || got.status === 413, describeExchange(sent, got));
      return undefined;
    });
  }

  test('the token endpoint: every grant type, with and without client authentication', async () => {
    const { minting, spare, serviceA, serviceB, deviceCodes } = world;
    const mintBase: Pairs = [
      ['grant_type', TOKEN_EXCHANGE],
      ['requested_token_type', ID_JAG],
      ['subject_token_type', ID_TOKEN],
      ['subject_token', minting.id_token],
      ['audience', serviceA.issuer],
      ['resource', serviceA.resource],
      ['scope', 'read'],
    ];
    const templates: Pairs[] = [
      mintBase,
      [['grant_type', TOKEN_EXCHANGE], ['requested_token_type', ID_JAG], ['subject_token_type', REFRESH_TOKEN], ['subject_token', minting.refresh_token], ['audience', serviceA.issuer]],
      [['grant_type', TOKEN_EXCHANGE], ['requested_token_type', ID_JAG], ['subject_token_type', ID_TOKEN], ['subject_token', minting.id_token], ['audience', serviceB.issuer], ['scope', 'read write']],
      [['grant_type', 'refresh_token'], ['refresh_token', spare.refresh_token], ['scope', 'openid']],
      [['grant_type', DEVICE_CODE], ['device_code', (deviceCodes[0] as { device_code: string }).device_code]],
      [['grant_type', 'authorization_code'], ['code', 'not-a-code'], ['redirect_uri', 'http://127.0.0.1:9/callback'], ['code_verifier', 'x'.repeat(43)]],
      [['grant_type', 'client_credentials'], ['scope', 'openid']],
      [['grant_type', JWT_BEARER], ['assertion', minting.id_token]],
      [],
    ].flatMap((template) => withBodyAuth(world, template as Pairs));

    await fc.assert(oauthProperty('/token', templates), runs('token', 2600));
  });

  test('the device authorization endpoint', async () => {
    const templates = [
      [['scope', 'openid offline_access email profile']],
      [['scope', 'openid'], ['audience', world.serviceA.issuer]],
      [['scope', 'openid offline_access'], ['audience', 'https://service.example'], ['audience', world.serviceB.issuer]],
      [],
    ].flatMap((template) => withBodyAuth(world, template as Pairs));
    await fc.assert(oauthProperty('/device_authorization', templates), runs('device_authorization', 1000));
  });

  test('the revocation endpoint', async () => {
    const templates = [
      [['token', world.spare.access_token], ['token_type_hint', 'access_token']],
      [['token', 'not-a-token'], ['token_type_hint', 'refresh_token']],
      [['token', world.minting.id_token]],
      [],
    ].flatMap((template) => withBodyAuth(world, template as Pairs));
    await fc.assert(oauthProperty('/revoke', templates), runs('revoke', 800));
  });

  test('introspection is not offered, and its paths answer like any unknown page', async () => {
    for (const path of ['/token/introspection', '/introspect', '/introspection']) {
      const sent: Sent = { method: 'POST', path, headers: [['Content-Type', 'application/x-www-form-urlencoded'], ['Authorization', basic(world.agent)]], body: Buffer.from(`token=${world.minting.access_token}`) };
      const got = await send(world.base, sent);
      assert.equal(got.status, 404, describeExchange(sent, got));
      assertPageAnswer(sent, got);
    }
  });

  test('regressions: the OAuth endpoints answer JSON errors', async () => {
    const form: [string, string] = ['Content-Type', 'application/x-www-form-urlencoded'];
    const cases: [OAuthEndpoint, Sent][] = [];
    for (const endpoint of ['/token', '/device_authorization', '/revoke'] as const) {
      // A browser-like Accept header once turned oidc-provider's errors into HTML pages.
      cases.push([endpoint, { method: 'POST', path: endpoint, headers: [form, ['Accept', 'text/html,application/xhtml+xml,*/*;q=0.8']], body: Buffer.from('grant_type=x&token=y') }]);
      // Any other method than POST was Deputy's HTML "Not found" page (OPTIONS: text/plain).
      for (const method of ['GET', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD']) {
        cases.push([endpoint, { method, path: endpoint, headers: [] }]);
      }
      cases.push([endpoint, { method: 'GET', path: `${endpoint}?grant_type=client_credentials`, headers: [['Accept', 'text/html']] }]);
    }
    for (const [endpoint, sent] of cases) {
      const got = await send(world.base, sent);
      assertOAuthAnswer(endpoint, sent, got);
      assert.ok(got.status >= 400, describeExchange(sent, got));
      if (sent.method !== 'POST') {
        assert.equal(got.status, 405, describeExchange(sent, got));
        assert.equal(got.headers.allow, 'POST', describeExchange(sent, got));
      }
    }
    // oidc-provider copied the Origin into error_description, `\` and `"` included.
    for (const origin of ['\\', '"x"', 'https://app.example/\u00e9']) {
      const sent: Sent = {
        method: 'POST',
        path: '/token',
        headers: [form, ['Authorization', basic(world.agent)], ['Origin', headerSafe(origin)]],
        body: Buffer.from('grant_type=client_credentials'),
      };
      const got = await send(world.base, sent);
      assertOAuthAnswer('/token', sent, got);
      assert.equal(got.status, 400, describeExchange(sent, got));
    }
    // oidc-provider served `/token/` as `/token`, past the rate and body limits Deputy applies
    // to the exact path; a slash more is no endpoint now.
    for (const endpoint of ['/token', '/device_authorization', '/revoke']) {
      const sent: Sent = {
        method: 'POST',
        path: `${endpoint}/`,
        headers: [form, ['Authorization', basic(world.agent)]],
        body: Buffer.from('grant_type=client_credentials&scope=openid&token=x'),
      };
      const got = await send(world.base, sent);
      assertPageAnswer(sent, got);
      assert.equal(got.status, 404, describeExchange(sent, got));
    }
    // A CORS preflight still reaches oidc-provider.
    const preflight = await send(world.base, { method: 'OPTIONS', path: '/token', headers: [['Origin', 'https://app.example'], ['Access-Control-Request-Method', 'POST']] });
    assert.equal(preflight.status, 204);
  });

  test('oversized bodies: not 5xx, the standard error shape', async () => {
    const big = Buffer.alloc(TWO_MB, 'a');
    big.write('grant_type=');
    for (const endpoint of ['/token', '/device_authorization', '/revoke'] as const) {
      for (const headers of [[['Content-Type', 'application/x-www-form-urlencoded']], [['Content-Type', 'application/json']], []] as [string, string][][]) {
        for (const chunked of [false, true]) {
          const sent: Sent = { method: 'POST', path: endpoint, headers: [...headers, ['Authorization', basic(world.agent)]], body: big, chunked };
          const got = await send(world.base, sent);
          assertOAuthAnswer(endpoint, sent, got);
          const error = got.body.length > 0 ? (JSON.parse(got.body.toString()) as { error?: string }).error : undefined;
          oversizedSeen.push(`${endpoint} ${headers[0]?.[1] ?? '(no content-type)'}${chunked ? ' chunked' : ''}: ${got.status} ${error ?? '(success)'}`);
        }
      }
    }
  });

  test('Deputy still serves after the fuzz', async () => {
    const answer = await mint(world.deputy, world.agent, {
      audience: world.serviceA.issuer,
      subject_token: world.minting.id_token,
      subject_token_type: ID_TOKEN,
    });
    // The fuzz may have revoked the subject token or consumed the delegation; it must still be an OAuth answer.
    assert.ok(answer.status === 200 || answer.status === 400, JSON.stringify(answer.body));
    const metadata = await fetch(`${world.deputy.url}/.well-known/oauth-authorization-server`);
    assert.equal(metadata.status, 200);
    console.log(`OAuth fuzz statuses: ${JSON.stringify(Object.fromEntries([...counts].sort()))}`);
  });
});


describe('fuzz: pages', () => {
  let world: World;
  const counts = new Map<string, number>();

  before(async () => {
    world = await buildWorld();
  });

  after(async () => {
    await destroyWorld(world);
    console.log(`page fuzz statuses: ${JSON.stringify(Object.fromEntries([...counts].sort()))}`);
    console.log(`oversized bodies:\n  ${oversizedSeen.join('\n  ')}`);
    console.log(`fuzz requests sent: ${requestCount}`);
  });

  /** A path segment: a real id, or something a router may choke on. */
  function segmentArb(real: string[]): fc.Arbitrary<string> {
    return fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom(...real) },
      { weight: 2, arbitrary: mutationOf(real).map(percentEncode) },
      { weight: 2, arbitrary: fc.string({ maxLength: 30 }).map(percentEncode) },
      { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 12 }) },
      {
        weight: 2,
        arbitrary: fc.constantFrom('%zz', '%', '%ff', '%c3%28', '%00', '..', '.', '%2e%2e', '%2F', 'a%2Fb', '~', '\xff\xfe', 'é', 'x'.repeat(3000)),
      },
    );
  }

  function pageProperty(method: 'GET' | 'POST', paths: fc.Arbitrary<string>, templates: Pairs[], extraCredentials: string[] = []) {
    const values = valueArb(valuePool(world));
    const plans = planArb({
      method,
      paths,
      pairs: pairsArb(templates, nameArb(PARAMETER_NAMES), values),
      headers: headerPlanArb([basic(world.agent), ...extraCredentials], [world.minting.access_token], [
        ['nobody', 3],
        ['ada', 6],
        ['bob', 2],
        ['anon', 2],
      ]),
    });
    return fc.asyncProperty(plans, async (plan) => {
      const sent = await render(plan, world);
      const got = await send(world.base, sent);
      counts.set(`${got.status}`, (counts.get(`${got.status}`) ?? 0) + 1);
      assertPageAnswer(sent, got);
    });
  }

  test('the device verification page, GET and POST, with and without a session and its xsrf token', async () => {
    const codes = world.deviceCodes.map((d) => d.user_code);
    const paths = fc.oneof(
      { weight: 10, arbitrary: fc.constant('/device') },
      { weight: 2, arbitrary: segmentArb(['x', ...world.loginUids]).map((s) => `/device/${s}`) },
    );
    const templates: Pairs[] = [];
    for (const xsrf of world.xsrf) {
      for (const code of codes) {
        templates.push([['xsrf', xsrf], ['user_code', code]]);
        templates.push([['xsrf', xsrf], ['user_code', code], ['confirm', 'yes']]);
        templates.push([['xsrf', xsrf], ['user_code', code], ['abort', 'yes']]);
      }
    }
    templates.push([['user_code', codes[0] as string]], []);
    await fc.assert(pageProperty('POST', paths, templates), runs('device POST', 900));
    await fc.assert(pageProperty('GET', paths, templates), runs('device GET', 500));
  });

  test('the interaction pages', async () => {
    // Interactions at the consent step come up twice as often: more of the checks are behind them.
    const uids = [...world.consentUids, ...world.consentUids, ...world.loginUids];
    const paths = (method: 'GET' | 'POST') =>
      fc.oneof(
        { weight: method === 'GET' ? 8 : 1, arbitrary: segmentArb(uids).map((s) => `/interaction/${s}`) },
        { weight: 6, arbitrary: segmentArb(uids).map((s) => `/interaction/${s}/confirm`) },
        { weight: 3, arbitrary: segmentArb(uids).map((s) => `/interaction/${s}/abort`) },
        { weight: 1, arbitrary: fc.tuple(segmentArb(uids), segmentArb(['confirm', 'abort', 'x'])).map(([a, b]) => `/interaction/${a}/${b}`) },
      );
    const templates: Pairs[] = world.csrf.flatMap((csrf) => [
      [['csrf', csrf]],
      [['csrf', csrf], ['delegate', 'yes'], ['mode', 'always'], ['scope', 'read']],
      [['csrf', csrf], ['delegate', 'yes'], ['mode', 'until'], ['until', '2030-01-01']],
    ]);
    templates.push([]);
    await fc.assert(pageProperty('POST', paths('POST'), templates), runs('interaction POST', 1000));
    await fc.assert(pageProperty('GET', paths('GET'), templates), runs('interaction GET', 500));
  });

  test('the consent pages', async () => {
    const paths = fc.oneof(
      { weight: 6, arbitrary: segmentArb([LIVE_CONSENT]).map((s) => `/consent/${s}`) },
      { weight: 3, arbitrary: segmentArb(world.consentIds).map((s) => `/consent/${s}`) },
      { weight: 1, arbitrary: fc.tuple(segmentArb(world.consentIds), segmentArb(['x'])).map(([a, b]) => `/consent/${a}/${b}`) },
    );
    const templates: Pairs[] = world.csrf.flatMap((csrf) => [
      [['csrf', csrf], ['decision', 'approve'], ['mode', 'once']],
      [['csrf', csrf], ['decision', 'approve'], ['mode', 'until'], ['until', '2030-01-01']],
      [['csrf', csrf], ['decision', 'deny']],
      [['csrf', csrf], ['decision', 'approve'], ['mode', 'always'], ['scope', 'read']],
    ]);
    templates.push([]);
    await fc.assert(pageProperty('POST', paths, templates), runs('consent POST', 900));
    await fc.assert(pageProperty('GET', paths, templates), runs('consent GET', 500));
  });

  test('sign-in and its callback, with and without a sign-in in progress', async () => {
    const upstreamIssuer = world.upstream.issuer;
    const paths = fc.oneof(
      { weight: 4, arbitrary: fc.constant('/login') },
      { weight: 6, arbitrary: fc.constant('/login/callback') },
      { weight: 1, arbitrary: segmentArb(['callback', 'x']).map((s) => `/login/${s}`) },
    );
    const templates: Pairs[] = [
      [['return_to', '/consent/x']],
      [['return_to', '//evil.example/']],
      [['code', 'garbage'], ['state', 'x'], ['iss', upstreamIssuer]],
      [['error', 'access_denied'], ['error_description', 'no'], ['state', 'x']],
      [['code', 'garbage'], ['state', 'x']],
      [],
    ];
    await fc.assert(pageProperty('GET', paths, templates), runs('login GET', 700));
    await fc.assert(pageProperty('POST', paths, templates), runs('login POST', 160));

    // With a sign-in in progress: the state and cookie are real, everything else is fuzzed.
    const values = valueArb(valuePool(world));
    const fresh = fc.record({
      extra: fc.array(fc.tuple(nameArb(['code', 'iss', 'error', 'error_description', 'session_state', 'state']), values), { maxLength: 4 }),
      keepState: fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
      spelling: spellingArb,
    });
    await fc.assert(
      fc.asyncProperty(fresh, async ({ extra, keepState, spelling }) => {
        const browser = new Browser();
        const start = await browser.request(`${world.deputy.url}/login`);
        requestCount += 1;
        const location = new URL(start.headers.get('location') as string);
        const state = location.searchParams.get('state') as string;
        const pairs: Pairs = [...(keepState ? [['state', state] as [string, string]] : []), ...extra];
        const query = pairs.map(([k, v]) => `${spell(k, spelling, 7).toString('latin1')}=${spell(v, spelling, 11).toString('latin1')}`).join('&');
        const path = pathSafe(`/login/callback?${query}`);
        const cookie = await browser.jar.getCookieString(`${world.deputy.url}${path}`);
        const sent: Sent = { method: 'GET', path, headers: [['Cookie', cookie]] };
        const got = await send(world.base, sent);
        counts.set(`${got.status}`, (counts.get(`${got.status}`) ?? 0) + 1);
        assertPageAnswer(sent, got);
      }),
      runs('login callback in progress', 300),
    );
  });

  test('regressions: pages', async () => {
    const form: [string, string] = ['Content-Type', 'application/x-www-form-urlencoded'];
    const cases: Sent[] = [
      // oidc-provider re-rendered the device form into a session it never stored: 500.
      { method: 'POST', path: '/device', headers: [form], body: Buffer.from('user_code=ABCD-EFGH') },
      { method: 'POST', path: '/device', headers: [form], body: Buffer.from('xsrf=x&user_code=ABCD-EFGH') },
      { method: 'GET', path: '/device/%zz', headers: [] },
      { method: 'GET', path: '/device/not-an-interaction', headers: [] },
    ];
    for (const sent of cases) {
      const got = await send(world.base, sent);
      assertPageAnswer(sent, got);
      assert.match(got.body.toString(), /name="user_code"/, `the code form again\n${describeExchange(sent, got)}`);
      // The form it shows works: its xsrf token is in a session the browser now holds.
      const cookie = (got.headers['set-cookie'] ?? []).map((c) => c.split(';')[0]).join('; ');
      const xsrf = /name="xsrf" value="([^"]+)"/.exec(got.body.toString())?.[1] as string;
      const again: Sent = { method: 'POST', path: '/device', headers: [form, ['Cookie', cookie]], body: Buffer.from(`xsrf=${xsrf}&user_code=ABCD-EFGH`) };
      const retried = await send(world.base, again);
      assertPageAnswer(again, retried);
      assert.match(retried.body.toString(), /Deputy knows no such code/, describeExchange(again, retried));
    }

    // A body that does not match its Content-Encoding failed in zlib without a status: 500.
    const adaCookieForForms = await world.browsers.ada.jar.getCookieString(`${world.deputy.url}/consent/x`);
    for (const path of [`/consent/${world.consentIds[1]}`, `/interaction/${world.consentUids[0]}/confirm`]) {
      for (const encoding of ['gzip', 'deflate', 'br']) {
        const sent: Sent = { method: 'POST', path, headers: [form, ['Content-Encoding', encoding], ['Cookie', adaCookieForForms]], body: Buffer.from('csrf=x') };
        const got = await send(world.base, sent);
        assertPageAnswer(sent, got);
        assert.equal(got.status, 400, describeExchange(sent, got));
      }
    }

    // A CSRF token of the right length in characters but not in bytes threw in timingSafeEqual: 500.
    const adaCookie = await world.browsers.ada.jar.getCookieString(`${world.deputy.url}/consent/x`);
    const wrongBytes = 'é'.repeat((world.csrf[0] as string).length);
    for (const path of [`/consent/${world.consentIds[1]}`, `/interaction/${world.consentUids[0]}/confirm`, `/interaction/${world.consentUids[0]}/abort`]) {
      const sent: Sent = { method: 'POST', path, headers: [form, ['Cookie', adaCookie]], body: Buffer.from(new URLSearchParams({ csrf: wrongBytes, decision: 'approve', mode: 'once' }).toString()) };
      const got = await send(world.base, sent);
      assertPageAnswer(sent, got);
      assert.ok(got.status === 403 || got.status === 400, describeExchange(sent, got));
    }
  });

  test('oversized bodies on pages: not 5xx, an HTML page', async () => {
    const big = Buffer.alloc(TWO_MB, 'a');
    const adaCookie = await world.browsers.ada.jar.getCookieString(`${world.deputy.url}/consent/x`);
    const paths = ['/device', `/interaction/${world.consentUids[1]}/confirm`, `/consent/${world.consentIds[2]}`, '/login', '/login/callback'];
    for (const path of paths) {
      const sent: Sent = { method: 'POST', path, headers: [['Content-Type', 'application/x-www-form-urlencoded'], ['Cookie', adaCookie]], body: big };
      const got = await send(world.base, sent);
      assertPageAnswer(sent, got);
      oversizedSeen.push(`POST ${path.replace(/[A-Za-z0-9_-]{20,}/g, ':id')}: ${got.status} ${got.headers['content-type']}`);
    }
  });
});
