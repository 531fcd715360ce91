/**
 * What Deputy knows about the request being served, wherever the code that runs for it sits:
 * the request id every log line carries, and when the request started (for latency metrics
 * observed deep inside oidc-provider's token endpoint).
 */
import { AsyncLocalStorage } from 'node:async_hooks';

export interface RequestContext {
  id: string;
  /** performance.now() when the request reached Deputy. */
  startedAt: number;
}

export const requestContext = new AsyncLocalStorage<RequestContext>();

/** Seconds since the current request started, or undefined outside a request. */
export function requestSeconds(): number | undefined {
  const context = requestContext.getStore();
  return context === undefined ? undefined : (performance.now() - context.startedAt) / 1000;
}
