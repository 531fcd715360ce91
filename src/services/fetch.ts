/**
 * The one guarded HTTP client for every outbound request to a URL that came from outside
 * Deputy: service metadata today, revocation event delivery later. It exists to stop
 * server-side request forgery (CIMD §6.5, RFC 9728 §7.7) and to bound what a hostile service
 * can make Deputy do:
 *
 * - https only; plain http only for loopback addresses, and only when `allowLoopback` is set
 *   (development and tests);
 * - DNS is resolved here, every address is classified (RFC 6890 special-use ranges are
 *   refused, IPv4-mapped IPv6 included), and the connection goes to exactly the addresses that
 *   were checked, so a second DNS answer cannot rebind the host to an internal address;
 * - no redirects, a deadline over the whole exchange, and a cap on the response size
 *   (CIMD §6.6).
 *
 * Errors are `GuardedFetchError`s whose messages are meant for a person reading a web page.
 * They name the host and path, never the query, headers or body.
 */
import { lookup as dnsLookup } from 'node:dns/promises';
import { isIP, type LookupFunction } from 'node:net';
import ipaddr from 'ipaddr.js';
import { Agent, request, type Dispatcher } from 'undici';

export const DEFAULT_TIMEOUT_MS = 5_000;
export const DEFAULT_MAX_BYTES = 64 * 1024;

export type GuardedFetchReason =
  | 'url'
  | 'address'
  | 'redirect'
  | 'timeout'
  | 'too_large'
  | 'network'
  | 'status'
  | 'not_json';

export class GuardedFetchError extends Error {
  override name = 'GuardedFetchError';
  readonly reason: GuardedFetchReason;
  /** The HTTP status, for `redirect` and `status` failures. */
  readonly status: number | undefined;

  constructor(
    reason: GuardedFetchReason,
    message: string,
    options?: { status?: number; cause?: unknown },
  ) {
    super(message, { cause: options?.cause });
    this.reason = reason;
    this.status = options?.status;
  }
}

export interface FetchGuard {
  /** Allow loopback addresses, and plain http to them. Development and tests only. */
  allowLoopback: boolean;
  /** Deadline for DNS, connection, headers and body together. Default 5 s. */
  timeoutMs?: number;
  /** Largest response body accepted. Default 64 KiB. */
  maxBytes?: number;
}

export interface GuardedRequest {
  method?: 'GET' | 'POST';
  headers?: Record<string, string>;
  body?: string;
}

export interface GuardedResponse {
  status: number;
  headers: Headers;
  body: Buffer;
}

export interface JsonDocument {
  json: Record<string, unknown>;
  /** Seconds the document may be cached (`Cache-Control: max-age`); none for no-store. */
  maxAge: number | undefined;
}

interface CheckedAddress {
  address: string;
  family: 4 | 6;
}

const USER_AGENT = 'Deputy';

/** Only 2000::/3 is allocated for global unicast (RFC 4291 §2.4). */
const GLOBAL_UNICAST_V6 = ipaddr.parseCIDR('2000::/3');

/** How each ipaddr.js range reads on a page; unnamed special ranges get a generic phrase. */
const RANGE_PHRASES: Partial<Record<string, string>> = {
  private: 'a private address',
  uniqueLocal: 'a private address',
  linkLocal: 'a link-local address',
  unspecified: 'an unspecified address',
  multicast: 'a multicast address',
  broadcast: 'a broadcast address',
  carrierGradeNat: 'a carrier-grade NAT address',
  reserved: 'a reserved address',
};

/**
 * Sends one request to `url` under the guard and returns whatever status the service answered
 * (the caller decides what a status means), except that a 3xx is an error: redirects are never
 * followed (CIMD §4.1).
 */
export async function guardedFetch(
  url: string,
  init: GuardedRequest,
  guard: FetchGuard,
): Promise<GuardedResponse> {
  const target = parseTarget(url);
  const where = describeUrl(target);
  const timeoutMs = guard.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const maxBytes = guard.maxBytes ?? DEFAULT_MAX_BYTES;
  const deadline = new AbortController();
  const timer = setTimeout(() => {
    const message = `${where} did not answer within ${timeoutMs} ms`;
    deadline.abort(new GuardedFetchError('timeout', message));
  }, timeoutMs);

  let agent: Agent | undefined;
  try {
    checkScheme(target, guard);
    const host = hostOf(target);
    const addresses = await beforeDeadline(resolveHost(host), deadline.signal);
    checkAddresses(host, addresses, guard);
    checkPlainHttpIsLoopback(target, addresses);

    agent = pinnedAgent(host, addresses, timeoutMs);
    const response = await request(target, {
      dispatcher: agent,
      method: init.method ?? 'GET',
      headers: { 'user-agent': USER_AGENT, ...init.headers },
      body: init.body,
      signal: deadline.signal,
    });

    if (response.statusCode >= 300 && response.statusCode < 400) {
      discard(response.body);
      const message = `the service at ${where} answered with a redirect (${response.statusCode}); `
        + 'Deputy does not follow redirects';
      throw new GuardedFetchError('redirect', message, { status: response.statusCode });
    }

    const body = await readBody(response, maxBytes, where);
    return { status: response.statusCode, headers: toHeaders(response.headers), body };
  } catch (error) {
    throw asGuardedError(error, deadline.signal, where);
  } finally {
    clearTimeout(timer);
    await agent?.destroy().catch(() => undefined);
  }
}

/**
 * GETs a JSON metadata document: requires 200 and a JSON object served as `application/json`
 * or `application/*+json`, and reports how long it may be cached.
 */
export async function fetchJson(url: string, guard: FetchGuard): Promise<JsonDocument> {
  const response = await guardedFetch(url, { headers: { accept: 'application/json' } }, guard);
  const where = describeUrl(new URL(url));

  if (response.status !== 200) {
    throw new GuardedFetchError('status', `the service at ${where} answered ${response.status}`, {
      status: response.status,
    });
  }

  if (!isJsonMediaType(response.headers.get('content-type'))) {
    throw new GuardedFetchError('not_json', `the service at ${where} did not answer with JSON`);
  }

  return { json: parseObject(response.body, where), maxAge: maxAgeOf(response.headers) };
}

/**
 * Why `address` may not be fetched from, as a phrase ("a private address"), or null when it
 * is an ordinary public unicast address (or loopback, when `allowLoopback` is set).
 */
export function forbiddenAddressKind(address: string, allowLoopback: boolean): string | null {
  let parsed = ipaddr.parse(address);
  // An IPv4-mapped IPv6 address reaches the IPv4 host, so judge it as that host.
  if (parsed.kind() === 'ipv6' && (parsed as ipaddr.IPv6).isIPv4MappedAddress()) {
    parsed = (parsed as ipaddr.IPv6).toIPv4Address();
  }

  const range = parsed.range();
  if (range === 'loopback') {
    return allowLoopback ? null : 'a loopback address';
  }

  if (range !== 'unicast') {
    return RANGE_PHRASES[range] ?? 'a special-use address';
  }

  // Outside 2000::/3, whatever ipaddr.js still calls "unicast" (IPv4-compatible ::a.b.c.d,
  // for one) is reserved by the IETF.
  if (parsed.kind() === 'ipv6' && !parsed.match(GLOBAL_UNICAST_V6)) {
    return 'a reserved address';
  }

  return null;
}

/** True for 127.0.0.0/8 and ::1, IPv4-mapped forms included. */
export function isLoopbackAddress(address: string): boolean {
  return ipaddr.isValid(address) && ipaddr.process(address).range() === 'loopback';
}

/** `url`'s host without IPv6 brackets, as DNS and the address parser expect it. */
export function hostOf(url: URL): string {
  return url.hostname.replace(/^\[(.*)\]$/, '$1');
}

/** Scheme and origin of a URL plus its path: enough to recognise it, never its query. */
export function describeUrl(url: URL): string {
  return `${url.origin}${url.pathname}`;
}

function parseTarget(url: string): URL {
  let target: URL;
  try {
    target = new URL(url);
  } catch {
    throw new GuardedFetchError('url', `'${url.slice(0, 200)}' is not a valid URL`);
  }

  if (target.protocol !== 'https:' && target.protocol !== 'http:') {
    throw new GuardedFetchError('url', `${describeUrl(target)} is not an https URL`);
  }

  if (target.username !== '' || target.password !== '') {
    throw new GuardedFetchError('url', `${target.host} is given with a user name or password`);
  }

  return target;
}

function checkScheme(target: URL, guard: FetchGuard): void {
  if (target.protocol === 'http:' && !guard.allowLoopback) {
    throw new GuardedFetchError('url', `${describeUrl(target)} is not an https URL`);
  }
}

async function resolveHost(host: string): Promise<CheckedAddress[]> {
  // The same test node:net applies to skip its lookup, so literals are checked here as they are.
  const literal = isIP(host);
  if (literal !== 0) {
    return [{ address: host, family: literal === 4 ? 4 : 6 }];
  }

  try {
    const found = await dnsLookup(host, { all: true, verbatim: true });
    return found.map(({ address, family }) => ({ address, family: family === 6 ? 6 : 4 }));
  } catch (error) {
    throw new GuardedFetchError('network', `${host} could not be resolved`, { cause: error });
  }
}

/** CIMD §6.5: refuse a host if any of its addresses is special-use (RFC 6890). */
function checkAddresses(host: string, addresses: CheckedAddress[], guard: FetchGuard): void {
  if (addresses.length === 0) {
    throw new GuardedFetchError('network', `${host} could not be resolved`);
  }

  for (const { address } of addresses) {
    const kind = forbiddenAddressKind(address, guard.allowLoopback);
    if (kind === null) {
      continue;
    }

    const message = address === host
      ? `${host} is ${kind}`
      : `${host} resolves to ${kind} (${address})`;
    throw new GuardedFetchError('address', message);
  }
}

/** Plain http only ever reaches loopback, in development (`checkScheme` required the setting). */
function checkPlainHttpIsLoopback(target: URL, addresses: CheckedAddress[]): void {
  if (target.protocol === 'https:') {
    return;
  }

  const loopback = addresses.every(({ address }) => isLoopbackAddress(address));
  if (!loopback) {
    throw new GuardedFetchError('url', `${describeUrl(target)} is not an https URL`);
  }
}

/**
 * A single-use agent whose DNS lookup answers with the addresses already checked, whatever
 * the resolver would say now: this is what defeats DNS rebinding. IP-literal hosts never reach
 * the lookup; they were checked as they are.
 */
function pinnedAgent(host: string, addresses: CheckedAddress[], timeoutMs: number): Agent {
  const lookup: LookupFunction = (hostname, options, callback) => {
    if (hostname !== host) {
      callback(new Error(`refusing to resolve ${hostname}: only ${host} was checked`), '', 4);
      return;
    }

    if (options.all) {
      callback(null, addresses);
      return;
    }

    const first = addresses[0]!;
    callback(null, first.address, first.family);
  };

  return new Agent({
    connect: { lookup, timeout: timeoutMs, autoSelectFamily: true },
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
    pipelining: 0,
  });
}

function beforeDeadline<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/** CIMD §6.6: read at most `maxBytes`, and stop reading as soon as the body is larger. */
async function readBody(
  response: Dispatcher.ResponseData,
  maxBytes: number,
  where: string,
): Promise<Buffer> {
  const tooLarge = (): GuardedFetchError =>
    new GuardedFetchError('too_large', `the answer from ${where} is larger than ${maxBytes} bytes`);

  const declared = Number(response.headers['content-length']);
  if (Number.isFinite(declared) && declared > maxBytes) {
    discard(response.body);
    throw tooLarge();
  }

  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of response.body) {
    const buffer = chunk as Buffer;
    size += buffer.length;
    if (size > maxBytes) {
      discard(response.body);
      throw tooLarge();
    }
    chunks.push(buffer);
  }

  return Buffer.concat(chunks, size);
}

/** Stops reading a body; the abort error this raises on the stream is expected, not news. */
function discard(body: Dispatcher.ResponseData['body']): void {
  body.on('error', () => undefined);
  body.destroy();
}

function toHeaders(raw: Dispatcher.ResponseData['headers']): Headers {
  const headers = new Headers();
  for (const [name, value] of Object.entries(raw)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined) {
        headers.append(name, item);
      }
    }
  }
  return headers;
}

/** Every failure leaves as a GuardedFetchError; a deadline that fired wins over what it broke. */
function asGuardedError(error: unknown, deadline: AbortSignal, where: string): GuardedFetchError {
  if (deadline.aborted && deadline.reason instanceof GuardedFetchError) {
    return deadline.reason;
  }

  if (error instanceof GuardedFetchError) {
    return error;
  }

  return new GuardedFetchError('network', `could not reach ${where} (${networkProblem(error)})`, {
    cause: error,
  });
}

function networkProblem(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  switch (code) {
    case 'ECONNREFUSED':
      return 'connection refused';
    case 'ECONNRESET':
    case 'UND_ERR_SOCKET':
      return 'connection closed';
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
      return 'timed out';
    default:
      if (typeof code === 'string' && /CERT|SSL|TLS|VERIFY/.test(code)) {
        return 'its TLS certificate could not be verified';
      }
      return typeof code === 'string' ? code : 'network error';
  }
}

/** `application/json` or a structured `application/*+json` type (RFC 6839 §3.1). */
function isJsonMediaType(contentType: string | null): boolean {
  const essence = contentType?.split(';')[0]?.trim().toLowerCase() ?? '';
  return essence === 'application/json' || /^application\/[^/\s]+\+json$/.test(essence);
}

function parseObject(body: Buffer, where: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(body.toString('utf8'));
  } catch (error) {
    const message = `the service at ${where} answered with malformed JSON`;
    throw new GuardedFetchError('not_json', message, { cause: error });
  }

  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    const message = `the service at ${where} did not answer with a JSON object`;
    throw new GuardedFetchError('not_json', message);
  }

  return value as Record<string, unknown>;
}

/** `max-age` in seconds from Cache-Control (RFC 9111 §5.2.2.1); none for no-store/no-cache. */
function maxAgeOf(headers: Headers): number | undefined {
  const directives = (headers.get('cache-control') ?? '')
    .split(',')
    .map((directive) => directive.trim().toLowerCase());

  if (directives.includes('no-store') || directives.includes('no-cache')) {
    return undefined;
  }

  for (const directive of directives) {
    const match = /^max-age\s*=\s*"?(\d+)"?$/.exec(directive);
    if (match) {
      return Number(match[1]);
    }
  }

  return undefined;
}
