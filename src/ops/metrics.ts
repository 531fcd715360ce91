/**
 * Prometheus metrics (prom-client), on a registry of this Deputy's own so that several in one
 * process (the tests) do not share counters. Counters and histograms are updated where things
 * happen; gauges that describe stored state are read from the database at scrape time.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export type MintResult = 'issued' | 'consent_required' | 'refused';
export type DeliveryResult = 'delivered' | 'retry' | 'failed';

export interface StateReaders {
  activeDelegations(): Promise<number>;
  outboxByState(): Promise<Record<string, number>>;
  /** Seconds since the signing key in use became active. */
  signingKeyAgeSeconds(): number;
}

export class Metrics {
  readonly registry = new Registry();
  readonly #mints: Counter<'result' | 'error'>;
  readonly #mintSeconds: Histogram<'result'>;
  readonly #deliveries: Counter<'result'>;
  readonly #requests: Counter<'method' | 'status'>;
  readonly #rateLimited: Counter<'limit'>;

  constructor(state: StateReaders) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'deputy_' });

    this.#mints = new Counter({
      name: 'deputy_mints_total',
      help: 'Token exchange requests for an ID-JAG, by result and OAuth error code ("" when issued).',
      labelNames: ['result', 'error'],
      registers,
    });
    this.#mintSeconds = new Histogram({
      name: 'deputy_mint_duration_seconds',
      help: 'Time from the token request reaching Deputy to its answer, for ID-JAG requests.',
      labelNames: ['result'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    this.#deliveries = new Counter({
      name: 'deputy_revocation_deliveries_total',
      help: 'Revocation event delivery attempts, by outcome.',
      labelNames: ['result'],
      registers,
    });
    this.#requests = new Counter({
      name: 'deputy_http_requests_total',
      help: 'HTTP requests answered, by method and status code.',
      labelNames: ['method', 'status'],
      registers,
    });
    this.#rateLimited = new Counter({
      name: 'deputy_rate_limited_total',
      help: 'Requests refused with 429, by limit.',
      labelNames: ['limit'],
      registers,
    });
    new Gauge({
      name: 'deputy_active_delegations',
      help: 'Delegations that can be used now: not revoked, not consumed, not expired.',
      registers,
      async collect() {
        this.set(await state.activeDelegations());
      },
    });
    const outbox = new Gauge({
      name: 'deputy_outbox_events',
      help: 'Revocation events in the outbox, by state (pending, delivered, failed).',
      labelNames: ['state'],
      registers,
      async collect() {
        const counts = await state.outboxByState();
        for (const name of ['pending', 'delivered', 'failed']) outbox.set({ state: name }, counts[name] ?? 0);
      },
    });
    new Gauge({
      name: 'deputy_signing_key_age_seconds',
      help: 'Seconds since the signing key in use became active.',
      registers,
      collect() {
        this.set(state.signingKeyAgeSeconds());
      },
    });
  }

  mint(result: MintResult, error: string, seconds: number | undefined): void {
    this.#mints.inc({ result, error });
    if (seconds !== undefined) this.#mintSeconds.observe({ result }, seconds);
  }

  delivery(result: DeliveryResult): void {
    this.#deliveries.inc({ result });
  }

  request(method: string, status: number): void {
    this.#requests.inc({ method, status: String(status) });
  }

  rateLimited(limit: string): void {
    this.#rateLimited.inc({ limit });
  }
}
