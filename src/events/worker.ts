/**
 * Delivers the revocation outbox (DESIGN 2.5): each due event is signed afresh (a new `jti`,
 * `iat` and a short `exp` per attempt, since services remember `jti`s) with Deputy's current
 * key and posted through the guarded fetcher.
 *
 * - a 2xx settles it as delivered (202 is what RFC 8935 asks for; any 2xx is accepted);
 * - a 4xx settles it as failed with the service's reason, never retried;
 * - a timeout, a connection error or a 5xx is retried with exponential backoff and jitter,
 *   until the event is older than the configured maximum age, then it fails.
 */
import { randomUUID } from 'node:crypto';
import { SignJWT } from 'jose';
import type { Logger } from 'pino';
import type { OutboxStore, RevocationEvent } from '../db/outbox.ts';
import type { KeyStore } from '../keys/keystore.ts';
import { EVENT_TOKEN_LIFETIME_SECONDS } from '../lifetimes.ts';
import { requestContext } from '../ops/context.ts';
import { guardedFetch, GuardedFetchError, type FetchGuard } from '../services/fetch.ts';

const BATCH = 16;
const MAX_REASON = 300;

export interface WorkerOptions {
  issuer: string;
  outbox: OutboxStore;
  keys: KeyStore;
  guard: FetchGuard;
  log: Logger;
  /** Give up on an event this long after the revocation. */
  maxAgeSeconds: number;
  /** The first retry waits about this long; each later one twice as long, up to an hour. */
  retryBaseMs: number;
  /** How often to look for due events when nothing wakes the worker sooner. */
  pollMs: number;
  /** Told the outcome of every delivery attempt (metrics). */
  onResult?: (result: 'delivered' | 'retry' | 'failed') => void;
}

const MAX_RETRY_DELAY_MS = 3600_000;

/** The n-th retry's delay: exponential, capped, with "equal jitter" (half fixed, half random). */
export function retryDelayMs(attempt: number, baseMs: number): number {
  const ceiling = Math.min(MAX_RETRY_DELAY_MS, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
}

const MEDIA_TYPES = {
  secevent: 'application/secevent+jwt',
  logout: 'application/logout+jwt',
} as const;

const TYPES = {
  secevent: 'secevent+jwt',
  logout: 'logout+jwt',
} as const;

export class DeliveryWorker {
  readonly #options: WorkerOptions;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #stopped = false;
  #again = false;

  constructor(options: WorkerOptions) {
    this.#options = options;
  }

  start(): void {
    this.#stopped = false;
    this.wake();
  }

  /** Looks for due events now (after a revocation, say) instead of at the next poll. */
  wake(): void {
    if (this.#stopped) return;
    if (this.#running !== undefined) {
      this.#again = true;
      return;
    }
    clearTimeout(this.#timer);
    // Outside the request that woke it (a revoke, say): its log lines, and those of every later
    // round its timers start, must not carry that request's id.
    this.#running = requestContext
      .exit(() => this.#drain())
      .then(() => (this.#stopped ? undefined : this.#options.outbox.nextDueMs()))
      .catch((error: unknown) => {
        this.#options.log.error({ err: error }, 'revocation delivery failed');
        return undefined;
      })
      .then((next) => {
        this.#running = undefined;
        if (this.#again) {
          this.#again = false;
          this.wake();
        } else {
          this.#schedule(next);
        }
      });
  }

  /** Stops claiming work and waits for deliveries in flight to settle. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#running;
  }

  /** Sleeps until `next`, the soonest due event (ms), or one poll interval. */
  #schedule(next: number | undefined): void {
    if (this.#stopped) return;
    const wait = next === undefined ? this.#options.pollMs : Math.max(0, Math.min(this.#options.pollMs, next - Date.now()));
    this.#timer = setTimeout(() => this.wake(), wait);
    this.#timer.unref();
  }

  async #drain(): Promise<void> {
    const leaseMs = (this.#options.guard.timeoutMs ?? 5000) + 10_000;
    for (;;) {
      if (this.#stopped) return;
      const batch = await this.#options.outbox.claimDue(BATCH, leaseMs);
      if (batch.length === 0) return;
      await Promise.all(batch.map((event) => this.#deliver(event)));
    }
  }

  async #deliver(event: RevocationEvent): Promise<void> {
    const { outbox, log } = this.#options;
    let status: number;
    let body: string;

    try {
      const token = await this.#sign(event);
      const response = await guardedFetch(
        event.endpoint,
        { method: 'POST', headers: { 'content-type': MEDIA_TYPES[event.dialect], accept: 'application/json' }, body: token },
        this.#options.guard,
      );
      status = response.status;
      body = response.body.toString('utf8');
    } catch (error) {
      const reason = error instanceof GuardedFetchError ? error.message : 'delivery failed';
      if (error instanceof GuardedFetchError && ['url', 'address', 'redirect'].includes(error.reason)) {
        await outbox.failed(event.id, reason);
        this.#options.onResult?.('failed');
        log.warn({ event: 'revocation_failed', id: event.id, audience: event.audience, reason }, 'revocation not deliverable');
        return;
      }
      if (!(error instanceof GuardedFetchError)) log.error({ err: error, id: event.id }, 'revocation delivery error');
      await this.#retry(event, reason);
      return;
    }

    if (status >= 200 && status < 300) {
      await outbox.delivered(event.id);
      this.#options.onResult?.('delivered');
      log.info(
        { event: 'revocation_delivered', id: event.id, audience: event.audience, attempts: event.attempts, status },
        'revocation delivered',
      );
      return;
    }

    if (status >= 400 && status < 500 && status !== 408 && status !== 429) {
      const reason = `the service answered ${status}: ${serviceReason(body)}`;
      await outbox.failed(event.id, reason);
      this.#options.onResult?.('failed');
      log.warn({ event: 'revocation_failed', id: event.id, audience: event.audience, status }, 'revocation refused');
      return;
    }

    await this.#retry(event, `the service answered ${status}`);
  }

  async #retry(event: RevocationEvent, reason: string): Promise<void> {
    const { outbox, log, maxAgeSeconds, retryBaseMs } = this.#options;
    const next = Date.now() + retryDelayMs(event.attempts, retryBaseMs);
    if (next / 1000 > event.createdAt + maxAgeSeconds) {
      await outbox.failed(event.id, `gave up after ${event.attempts} attempts: ${reason}`);
      this.#options.onResult?.('failed');
      log.warn({ event: 'revocation_failed', id: event.id, audience: event.audience, reason }, 'revocation abandoned');
      return;
    }
    await outbox.retryAt(event.id, next, reason);
    this.#options.onResult?.('retry');
    log.info({ event: 'revocation_retry', id: event.id, audience: event.audience, attempts: event.attempts, reason }, 'revocation will be retried');
  }

  /** The event token (RFC 8417 SET or logout token), signed with the current key. */
  async #sign(event: RevocationEvent): Promise<string> {
    const key = this.#options.keys.active();
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({
      iss: this.#options.issuer,
      sub: event.userId,
      aud: event.audience,
      jti: randomUUID(),
      iat: now,
      exp: now + EVENT_TOKEN_LIFETIME_SECONDS,
      events: { [event.eventUri]: {} },
    })
      .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: TYPES[event.dialect] })
      .sign(key.key);
  }
}

/** A service's reason for a refusal: RFC 8935 `err`/`description`, OAuth or auth.md fields. */
function serviceReason(body: string): string {
  let reason = body.trim();
  try {
    const json = JSON.parse(body) as Record<string, unknown>;
    const parts = [json.err ?? json.error, json.description ?? json.error_description ?? json.message]
      .filter((p): p is string => typeof p === 'string' && p !== '');
    if (parts.length > 0) reason = parts.join(': ');
  } catch {
    // Not JSON: the text itself, shortened below.
  }
  const clean = reason.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
  return clean === '' ? 'no reason given' : clean.slice(0, MAX_REASON);
}
