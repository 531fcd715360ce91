/**
 * What Deputy knows about services: discovered through the guarded fetcher and kept in the
 * database for as long as the service's cache headers allow (clamped between one minute and
 * a day), so approving a delegation shows exactly what the service published.
 */
import type { DelegationStore } from '../db/delegations.ts';
import {
  discoverAudience,
  discoverService,
  ServiceDiscoveryError,
  type ServiceMetadata,
} from './discovery.ts';
import { GuardedFetchError, type FetchGuard } from './fetch.ts';

const MIN_CACHE_SECONDS = 60;
const DEFAULT_CACHE_SECONDS = 300;
const MAX_CACHE_SECONDS = 86400;

export class ServiceDirectory {
  readonly #delegations: DelegationStore;
  readonly #guard: FetchGuard;

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
      const cached = this.#delegations.cachedService(audience);
      if (cached !== undefined) return cached as unknown as ServiceMetadata;
    }
    const metadata = await discoverAudience(audience, resources, this.#guard);
    if (resources.length === 0) this.#remember(metadata);
    return metadata;
  }

  #remember(metadata: ServiceMetadata): void {
    const ttl = Math.min(MAX_CACHE_SECONDS, Math.max(MIN_CACHE_SECONDS, metadata.maxAge ?? DEFAULT_CACHE_SECONDS));
    this.#delegations.cacheService(metadata.audience, metadata as unknown as Record<string, unknown>, ttl);
  }
}

/** A failure whose message is meant for the person: the service, not Deputy, is at fault. */
export function isDiscoveryFailure(error: unknown): error is Error {
  return error instanceof ServiceDiscoveryError || error instanceof GuardedFetchError;
}
