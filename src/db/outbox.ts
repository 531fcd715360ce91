/**
 * The revocation outbox: rows are written by the revocation's own transaction (enqueue), then
 * claimed, delivered and settled by the delivery worker (events/worker.ts). A claim is a lease,
 * so a process that dies mid-delivery leaves the row to be claimed again once the lease ends;
 * delivery is at least once.
 */
import { and, asc, desc, eq, inArray, isNull, lte, or, sql } from 'drizzle-orm';
import type { Database, Db, Tables } from './index.ts';
import type { EventDialect, revocationEvents } from './schema.ts';
import { newId } from './store.ts';

export type RevocationEvent = typeof revocationEvents.$inferSelect;

/** Event URIs for the two transports (SPEC opening note, 2.7). */
export const SECEVENT_REVOKED = 'https://schemas.workos.com/events/agent/identity/assertion/revoked';
export const LOGOUT_REVOKED = 'https://schemas.workos.com/events/agent/auth/identity/assertion/revoked';

/** What the service published about revocation, as kept in the delegation's snapshot. */
interface AgentAuthSnapshot {
  eventsEndpoint?: unknown;
  revocationUri?: unknown;
  eventsSupported?: unknown;
}

export interface RevokedDelegation {
  id: string;
  userId: string;
  agentClientId: string;
  audience: string;
  uses: number;
  lastUsedAt: number | null;
  serviceAgentAuth: Record<string, unknown> | null;
}

/**
 * The transport a service asked for: a security event token to `events_endpoint` when
 * advertised, else a logout token to `revocation_uri` (DESIGN 2.5); null when it has neither.
 */
export function transportFor(
  snapshot: Record<string, unknown> | null,
): { dialect: EventDialect; endpoint: string; eventUri: string } | null {
  const auth = (snapshot ?? {}) as AgentAuthSnapshot;
  const supported = Array.isArray(auth.eventsSupported)
    ? auth.eventsSupported.filter((e): e is string => typeof e === 'string')
    : [];
  const revoked = supported.find((e) => e.endsWith('/assertion/revoked'));

  if (typeof auth.eventsEndpoint === 'string') {
    return { dialect: 'secevent', endpoint: auth.eventsEndpoint, eventUri: revoked ?? SECEVENT_REVOKED };
  }
  if (typeof auth.revocationUri === 'string') {
    return { dialect: 'logout', endpoint: auth.revocationUri, eventUri: revoked ?? LOGOUT_REVOKED };
  }
  return null;
}

/**
 * Writes the events a revocation owes, inside the caller's transaction: one per service that
 * received at least one ID-JAG under the revoked delegations. Services that publish no
 * revocation endpoint get a row marked failed, so the person sees why nothing was sent.
 */
export async function enqueueRevocations(
  tx: Db,
  { revocationEvents }: Tables,
  revoked: RevokedDelegation[],
  nowMs = Date.now(),
): Promise<number> {
  const seen = new Set<string>();
  let count = 0;

  // One event per (user, service) covers every delegation revoked with it; it is shown on the
  // one used last, which is the one the person recognises as in use.
  const lastUsedFirst = [...revoked].sort((a, b) => (b.lastUsedAt ?? 0) - (a.lastUsedAt ?? 0));
  for (const delegation of lastUsedFirst) {
    if (delegation.uses === 0) continue;
    const key = `${delegation.userId} ${delegation.audience}`;
    if (seen.has(key)) continue;
    seen.add(key);

    const transport = transportFor(delegation.serviceAgentAuth);
    await tx
      .insert(revocationEvents)
      .values({
        id: newId('evt'),
        delegationId: delegation.id,
        userId: delegation.userId,
        agentClientId: delegation.agentClientId,
        audience: delegation.audience,
        dialect: transport?.dialect ?? 'secevent',
        endpoint: transport?.endpoint ?? '',
        eventUri: transport?.eventUri ?? SECEVENT_REVOKED,
        state: transport === null ? 'failed' : 'pending',
        lastError: transport === null ? 'the service publishes no revocation endpoint' : null,
        nextAttemptMs: nowMs,
        createdAt: Math.floor(nowMs / 1000),
      });
    count += 1;
  }
  return count;
}

export class OutboxStore {
  readonly #database: Database;

  constructor(database: Database) {
    this.#database = database;
  }

  #run<T>(fn: (db: Db, t: Tables) => Promise<T>): Promise<T> {
    return this.#database.run((db) => fn(db, this.#database.t));
  }

  /**
   * Takes up to `limit` due events for one delivery attempt each, leasing them until
   * `leaseMs` from now. Two workers, in any process, never claim the same row: the update
   * re-checks the lease of each row as committed, so a row another worker leased meanwhile
   * is left out of what this one gets back.
   */
  claimDue(limit: number, leaseMs: number, nowMs = Date.now()): Promise<RevocationEvent[]> {
    return this.#database.transaction(async (tx) => {
      const { revocationEvents } = this.#database.t;
      const claimable = and(
        eq(revocationEvents.state, 'pending'),
        lte(revocationEvents.nextAttemptMs, nowMs),
        or(isNull(revocationEvents.leaseUntilMs), lte(revocationEvents.leaseUntilMs, nowMs)),
      );
      const due = await tx
        .select({ id: revocationEvents.id })
        .from(revocationEvents)
        .where(claimable)
        .orderBy(asc(revocationEvents.nextAttemptMs))
        .limit(limit);
      if (due.length === 0) return [];

      return tx
        .update(revocationEvents)
        .set({ leaseUntilMs: nowMs + leaseMs, attempts: sql`${revocationEvents.attempts} + 1` })
        .where(and(inArray(revocationEvents.id, due.map((row) => row.id)), claimable))
        .returning();
    });
  }

  delivered(id: string, nowMs = Date.now()): Promise<void> {
    return this.#settle(id, { state: 'delivered', deliveredAt: Math.floor(nowMs / 1000), lastError: null });
  }

  failed(id: string, reason: string): Promise<void> {
    return this.#settle(id, { state: 'failed', lastError: reason });
  }

  retryAt(id: string, nextAttemptMs: number, reason: string): Promise<void> {
    return this.#settle(id, { nextAttemptMs, lastError: reason });
  }

  /** The soonest time a pending event is due, for the worker's next wake-up. */
  async nextDueMs(): Promise<number | undefined> {
    const [row] = await this.#run((db, { revocationEvents }) =>
      db
        .select({ next: sql<number | null>`min(${revocationEvents.nextAttemptMs})`.mapWith(Number) })
        .from(revocationEvents)
        .where(eq(revocationEvents.state, 'pending')),
    );
    return row?.next ?? undefined;
  }

  async forDelegations(ids: string[]): Promise<RevocationEvent[]> {
    if (ids.length === 0) return [];
    return this.#run((db, { revocationEvents }) =>
      db
        .select()
        .from(revocationEvents)
        .where(inArray(revocationEvents.delegationId, ids))
        .orderBy(desc(revocationEvents.createdAt), desc(revocationEvents.id)),
    );
  }

  /** How many events are in each state (the metrics gauge). */
  async countByState(): Promise<Record<string, number>> {
    const rows = await this.#run((db, { revocationEvents }) =>
      db
        .select({ state: revocationEvents.state, n: sql<number>`count(*)`.mapWith(Number) })
        .from(revocationEvents)
        .groupBy(revocationEvents.state),
    );
    return Object.fromEntries(rows.map((row) => [row.state, row.n]));
  }

  list(limit = 100): Promise<RevocationEvent[]> {
    return this.#run((db, { revocationEvents }) =>
      db.select().from(revocationEvents).orderBy(desc(revocationEvents.createdAt), desc(revocationEvents.id)).limit(limit),
    );
  }

  async #settle(id: string, values: Partial<RevocationEvent>): Promise<void> {
    await this.#run((db, { revocationEvents }) =>
      db
        .update(revocationEvents)
        .set({ ...values, leaseUntilMs: null })
        .where(and(eq(revocationEvents.id, id), eq(revocationEvents.state, 'pending'))),
    );
  }
}
