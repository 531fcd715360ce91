/**
 * What Deputy knows about services: discovered through the guarded fetcher and kept in the
 * database for as long as the service's cache headers allow (clamped between one minute and
 * a day), so approving a delegation shows exactly what the service published.
 */
import type { DelegationStore } from '../db/delegations.ts';
import {
  discoverAudience,
  discoverService,
  governedResource,
  ServiceDiscoveryError,
  type ServiceMetadata,
} from './discovery.ts';
import { GuardedFetchError, type FetchGuard } from './fetch.ts';

const MIN_CACHE_SECONDS = 60;
const DEFAULT_CACHE_SECONDS = 300;
const MAX_CACHE_SECONDS = 86400;
const REFUSAL_CACHE_SECONDS = 10;
/** Past this many (audience, resource) answers the cache starts again rather than grow. */
const MAX_GOVERNED_ENTRIES = 10_000;

export class ServiceDirectory {
  readonly #delegations: DelegationStore;
  readonly #guard: FetchGuard;
  readonly #governed = new Map<string, { governed: boolean; until: number }>();

  constructor(delegations: DelegationStore, guard: FetchGuard) {
    this.#delegations = delegations;
    this.#guard = guard;
  }

  /**
   * A URL a person typed: a protected resource or an authorization server. Never cached:
   * what one person typed must not become what another person is shown for that audience.
   */
  lookup(url: string): Promise<ServiceMetadata> {
    return discoverService(url, this.#guard);
  }

  /**
   * An audience (and resources) an agent named; each resource must be governed by it. Only
   * the audience's own metadata (no resources named) is cached, since it is the same for all.
   */
  async forAudience(audience: string, resources: string[]): Promise<ServiceMetadata> {
    if (resources.length === 0) {
      const cached = await this.#delegations.cachedService(audience);
      if (cached !== undefined) return cached as unknown as ServiceMetadata;
    }
    const metadata = await discoverAudience(audience, resources, this.#guard);
    if (resources.length === 0) await this.#remember(metadata);
    return metadata;
  }

  /**
   * Whether the resource's own metadata (RFC 9728) names the audience among its authorization
   * servers: what lets a delegation made for a whole service cover that resource. Answers are
   * kept for the resource metadata's cache lifetime, in this process only (a cache, not state).
   */
  async governs(audience: string, resource: string): Promise<boolean> {
    const key = `${audience} ${resource}`;
    const known = this.#governed.get(key);
    if (known !== undefined && known.until > Date.now()) return known.governed;

    let governed: boolean;
    let maxAge: number | undefined;
    try {
      ({ maxAge } = await governedResource(resource, audience, this.#guard));
      governed = true;
    } catch (error) {
      if (!isDiscoveryFailure(error)) throw error;
      governed = false;
    }
    // A refusal is remembered only briefly: the service may be down for a moment.
    const ttl = governed ? cacheSeconds(maxAge) : REFUSAL_CACHE_SECONDS;
    if (this.#governed.size >= MAX_GOVERNED_ENTRIES) this.#governed.clear();
    this.#governed.set(key, { governed, until: Date.now() + ttl * 1000 });
    return governed;
  }

  async #remember(metadata: ServiceMetadata): Promise<void> {
    const record = metadata as unknown as Record<string, unknown>;
    await this.#delegations.cacheService(metadata.audience, record, cacheSeconds(metadata.maxAge));
  }
}

/** How long to keep what a service published: its own max-age, clamped. */
function cacheSeconds(maxAge: number | undefined): number {
  return Math.min(MAX_CACHE_SECONDS, Math.max(MIN_CACHE_SECONDS, maxAge ?? DEFAULT_CACHE_SECONDS));
}

/** A failure whose message is meant for the person: the service, not Deputy, is at fault. */
export function isDiscoveryFailure(error: unknown): error is Error {
  return error instanceof ServiceDiscoveryError || error instanceof GuardedFetchError;
}
