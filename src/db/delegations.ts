/**
 * Connections, delegations, consent requests, the assertion audit trail and the service cache:
 * the records the mint reads and the web pages change. Read-then-write decisions run in
 * immediate transactions so that several processes on one database agree.
 */
import { and, desc, eq, gt, inArray, isNull, lte, or, sql, type Placeholder, type SQL } from 'drizzle-orm';
import type { Db, Executor } from './index.ts';
import {
  agents,
  agentServiceClientIds,
  assertions,
  clientAssertionJtis,
  connections,
  consentRequests,
  delegations,
  oidcModels,
  services,
  sessions,
  upstreamIdentities,
  users,
  type DelegationMode,
} from './schema.ts';
import { enqueueRevocations } from './outbox.ts';
import { epoch, newId } from './store.ts';

export type Delegation = typeof delegations.$inferSelect;
export type ConsentRequest = typeof consentRequests.$inferSelect;
export type Assertion = typeof assertions.$inferSelect;
export type Connection = typeof connections.$inferSelect;

export interface NewDelegation {
  userId: string;
  agentClientId: string;
  audience: string;
  resources: string[];
  scope: string;
  mode: DelegationMode;
  expiresAt: number | null;
  serviceName: string | null;
  serviceLogoUri: string | null;
  serviceAgentAuth: Record<string, unknown> | null;
}

export interface ConnectedAgent {
  clientId: string;
  name: string;
  logoUri: string | null;
  scope: string;
  connectedAt: number;
}

/** What one mint needs to record, decided before the delegation is touched. */
export interface AssertionRecord {
  jti: string;
  userId: string;
  agentClientId: string;
  audience: string;
  resources: string[];
  scope: string;
  kid: string;
  issuedAt: number;
  expiresAt: number;
}

export class DelegationStore {
  readonly #db: Db;
  // The queries of every mint, prepared once (see Store).
  readonly #activeDelegation;
  readonly #isConnected;
  readonly #useDelegation;
  readonly #recordAssertion;
  readonly #serviceClientId;

  constructor(db: Db) {
    this.#db = db;
    this.#isConnected = db
      .select({ id: connections.id })
      .from(connections)
      .innerJoin(oidcModels, grantLivesAt(sql.placeholder('now')))
      .where(
        and(
          eq(connections.userId, sql.placeholder('userId')),
          eq(connections.agentClientId, sql.placeholder('agentClientId')),
          isNull(connections.disconnectedAt),
          lte(connections.createdAt, sql.placeholder('issuedAt')),
        ),
      )
      .limit(1)
      .prepare();
    // A use counts, and consumes a `once` delegation, only while the delegation is usable.
    this.#useDelegation = db
      .update(delegations)
      .set({
        uses: sql`${delegations.uses} + 1`,
        lastUsedAt: sql`${sql.placeholder('now')}`,
        consumedAt: sql`case when ${delegations.mode} = 'once' then ${sql.placeholder('now')} else ${delegations.consumedAt} end`,
      })
      .where(
        and(
          eq(delegations.id, sql.placeholder('id')),
          usableAt(sql.placeholder('now')),
        ),
      )
      .prepare();
    this.#recordAssertion = db
      .insert(assertions)
      .values({
        jti: sql.placeholder('jti'),
        delegationId: sql.placeholder('delegationId'),
        userId: sql.placeholder('userId'),
        agentClientId: sql.placeholder('agentClientId'),
        audience: sql.placeholder('audience'),
        resources: sql.placeholder('resources'),
        scope: sql.placeholder('scope'),
        kid: sql.placeholder('kid'),
        issuedAt: sql.placeholder('issuedAt'),
        expiresAt: sql.placeholder('expiresAt'),
      })
      .prepare();
    this.#serviceClientId = db
      .select({ clientId: agentServiceClientIds.clientId })
      .from(agentServiceClientIds)
      .where(
        and(
          eq(agentServiceClientIds.agentClientId, sql.placeholder('agentClientId')),
          eq(agentServiceClientIds.audience, sql.placeholder('audience')),
        ),
      )
      .prepare();
    this.#activeDelegation = db
      .select()
      .from(delegations)
      .where(
        and(
          eq(delegations.userId, sql.placeholder('userId')),
          eq(delegations.agentClientId, sql.placeholder('agentClientId')),
          eq(delegations.audience, sql.placeholder('audience')),
          usableAt(sql.placeholder('now')),
        ),
      )
      .orderBy(desc(delegations.createdAt))
      .limit(1)
      .prepare();
  }

  // Connections

  recordConnection(userId: string, agentClientId: string, grantId: string, scope: string): void {
    const now = epoch();
    const existing = this.#db
      .select({ id: connections.id })
      .from(connections)
      .where(and(eq(connections.grantId, grantId), isNull(connections.disconnectedAt)))
      .get();

    if (existing !== undefined) {
      this.#db
        .update(connections)
        .set({ scope, lastConnectedAt: now })
        .where(eq(connections.id, existing.id))
        .run();
      return;
    }

    this.#db
      .insert(connections)
      .values({ id: newId('con'), userId, agentClientId, grantId, scope, createdAt: now, lastConnectedAt: now })
      .run();
  }

  /**
   * Whether the agent still acts for the user: a connection not ended, whose grant still
   * exists. oidc-provider deletes a grant when it detects a rotated refresh token being reused,
   * and that ends the connection for ID tokens too.
   */
  isConnected(userId: string, agentClientId: string): boolean {
    return this.isConnectedSince(userId, agentClientId, Number.MAX_SAFE_INTEGER);
  }

  /**
   * Whether a token issued at `issuedAt` (an ID token, which names no grant) belongs to a
   * connection that is still live: one made at or before it. A token from before a disconnect
   * stays dead when the agent connects again, since the new connection is younger than it
   * (to the second: one issued, disconnected and reconnected within the same second passes).
   */
  isConnectedSince(userId: string, agentClientId: string, issuedAt: number): boolean {
    return this.#isConnected.get({ userId, agentClientId, now: epoch(), issuedAt }) !== undefined;
  }

  connectedAgents(userId: string): ConnectedAgent[] {
    const rows = this.#db
      .select({
        clientId: agents.clientId,
        name: agents.name,
        logoUri: agents.logoUri,
        scope: connections.scope,
        connectedAt: connections.lastConnectedAt,
      })
      .from(connections)
      .innerJoin(agents, eq(agents.clientId, connections.agentClientId))
      // Only connections whose grant lives, as isConnected: such an agent can act for the person.
      .innerJoin(oidcModels, grantLivesAt(epoch()))
      .where(and(eq(connections.userId, userId), isNull(connections.disconnectedAt)))
      .orderBy(desc(connections.lastConnectedAt))
      .all();

    const seen = new Set<string>();
    return rows.filter((row) => !seen.has(row.clientId) && seen.add(row.clientId));
  }

  /**
   * Ends every connection between the user and the agent: its grants and the tokens issued
   * under them are deleted and its delegations revoked, in one transaction.
   */
  disconnect(userId: string, agentClientId: string): { revokedDelegations: string[] } {
    return this.#db.transaction(
      (tx) => {
        const now = epoch();
        const revoked = endConnections(
          tx,
          and(eq(connections.userId, userId), eq(connections.agentClientId, agentClientId)) as SQL,
          and(eq(delegations.userId, userId), eq(delegations.agentClientId, agentClientId)) as SQL,
          now,
        );
        return { revokedDelegations: revoked.map((d) => d.id) };
      },
      { behavior: 'immediate' },
    );
  }

  // Delegations

  /**
   * Creates a delegation unless the agent already has an active one for this user and
   * audience: there is at most one, so that revoking it stops the minting (a second would keep
   * it going). Returns undefined then; checked and inserted in one immediate transaction, so two
   * approvals at once cannot both create one.
   */
  createDelegation(input: NewDelegation): Delegation | undefined {
    return this.#db.transaction(
      (tx) => insertUnlessActive(tx, input, epoch()),
      { behavior: 'immediate' },
    );
  }

  findDelegation(id: string): Delegation | undefined {
    return this.#db.select().from(delegations).where(eq(delegations.id, id)).get();
  }

  /** The delegation a mint for (user, agent, audience) would use now, if any. */
  activeDelegation(userId: string, agentClientId: string, audience: string): Delegation | undefined {
    return this.#activeDelegation.get({ userId, agentClientId, audience, now: epoch() });
  }

  /**
   * Uses the delegation for one assertion and records it, atomically: a `once` delegation is
   * consumed by exactly one caller however many race for it (DESIGN 2.4 step 6). Returns false
   * when the delegation is no longer usable.
   */
  useDelegation(delegation: Delegation, record: AssertionRecord): boolean {
    // The prepared statements run on this connection, so inside this transaction.
    return this.#db.transaction(
      () => {
        const changes = this.#useDelegation.run({ id: delegation.id, now: record.issuedAt }).changes;
        if (changes !== 1) return false;
        this.#recordAssertion.run({ ...record, delegationId: delegation.id });
        return true;
      },
      { behavior: 'immediate' },
    );
  }

  /**
   * Revokes one of the user's delegations and queues the revocation event in the same
   * transaction; false if it was not theirs or already revoked.
   */
  revokeDelegation(userId: string, id: string): boolean {
    return this.#db.transaction(
      (tx) => {
        const revoked = tx
          .update(delegations)
          .set({ revokedAt: epoch() })
          .where(and(eq(delegations.id, id), eq(delegations.userId, userId), isNull(delegations.revokedAt)))
          .returning()
          .all();
        enqueueRevocations(tx, revoked);
        return revoked.length === 1;
      },
      { behavior: 'immediate' },
    );
  }

  /**
   * Removes an agent (`deputy agents remove`): it can no longer authenticate, its grants and
   * tokens are deleted, its delegations revoked and their events queued. The row stays,
   * marked removed, for the audit trail.
   */
  removeAgent(agentClientId: string): { revokedDelegations: number } | undefined {
    return this.#db.transaction(
      (tx) => {
        const now = epoch();
        const agent = tx
          .update(agents)
          .set({ removedAt: now })
          .where(and(eq(agents.clientId, agentClientId), isNull(agents.removedAt)))
          .returning({ clientId: agents.clientId })
          .get();
        if (agent === undefined) return undefined;

        const revoked = endConnections(
          tx,
          eq(connections.agentClientId, agentClientId),
          eq(delegations.agentClientId, agentClientId),
          now,
        );
        return { revokedDelegations: revoked.length };
      },
      { behavior: 'immediate' },
    );
  }

  /**
   * Removes a person (`deputy users remove`): their sessions, connections, grants and tokens
   * end, their delegations are revoked with events queued, and their upstream identity is
   * unlinked, so signing in again makes a new user. The row stays, marked removed.
   */
  removeUser(userId: string): { revokedDelegations: number } | undefined {
    return this.#db.transaction(
      (tx) => {
        const now = epoch();
        const user = tx
          .update(users)
          .set({ removedAt: now })
          .where(and(eq(users.id, userId), isNull(users.removedAt)))
          .returning({ id: users.id })
          .get();
        if (user === undefined) return undefined;

        tx.delete(sessions).where(eq(sessions.userId, userId)).run();
        tx.delete(upstreamIdentities).where(eq(upstreamIdentities.userId, userId)).run();
        const revoked = endConnections(
          tx,
          eq(connections.userId, userId),
          eq(delegations.userId, userId),
          now,
        );
        return { revokedDelegations: revoked.length };
      },
      { behavior: 'immediate' },
    );
  }

  /** The user's delegations, newest first, with the agent's name. */
  delegationsOf(userId: string): (Delegation & { agentName: string })[] {
    return this.#db
      .select({ delegation: delegations, agentName: agents.name })
      .from(delegations)
      .innerJoin(agents, eq(agents.clientId, delegations.agentClientId))
      .where(eq(delegations.userId, userId))
      .orderBy(desc(delegations.createdAt))
      .all()
      .map((row) => ({ ...row.delegation, agentName: row.agentName }));
  }

  assertionsOf(delegationId: string, limit: number, offset: number): Assertion[] {
    return this.#db
      .select()
      .from(assertions)
      .where(eq(assertions.delegationId, delegationId))
      .orderBy(desc(assertions.issuedAt), desc(assertions.jti))
      .limit(limit)
      .offset(offset)
      .all();
  }

  // Consent requests

  createConsentRequest(
    input: Pick<ConsentRequest, 'userId' | 'agentClientId' | 'audience' | 'resources' | 'scope'>,
    ttlSeconds: number,
  ): ConsentRequest & { expiresIn: number } {
    // An agent that retries while the person decides gets the same link back, not a new row
    // each time, as long as more than half its life is left; looked up and written in one
    // immediate transaction, so retries at once get one link.
    return this.#db.transaction(
      (tx) => {
        const now = epoch();
        const open = tx
          .select()
          .from(consentRequests)
          .where(
            and(
              eq(consentRequests.userId, input.userId),
              eq(consentRequests.agentClientId, input.agentClientId),
              eq(consentRequests.audience, input.audience),
              isNull(consentRequests.outcome),
              gt(consentRequests.expiresAt, now + Math.floor(ttlSeconds / 2)),
            ),
          )
          .all()
          .find((r) => r.scope === input.scope && JSON.stringify(r.resources) === JSON.stringify(input.resources));
        if (open !== undefined) return { ...open, expiresIn: open.expiresAt - now };

        const created = tx
          .insert(consentRequests)
          .values({ id: newId('cns'), ...input, createdAt: now, expiresAt: now + ttlSeconds })
          .returning()
          .get();
        return { ...created, expiresIn: ttlSeconds };
      },
      { behavior: 'immediate' },
    );
  }

  /**
   * Whether the person denied this agent a consent request for the audience that is still
   * within its lifetime: the denial stands that long, so the agent is told rather than asking
   * again and again.
   */
  consentDenied(userId: string, agentClientId: string, audience: string): boolean {
    const denied = this.#db
      .select({ id: consentRequests.id })
      .from(consentRequests)
      .where(
        and(
          eq(consentRequests.userId, userId),
          eq(consentRequests.agentClientId, agentClientId),
          eq(consentRequests.audience, audience),
          eq(consentRequests.outcome, 'denied'),
          gt(consentRequests.expiresAt, epoch()),
        ),
      )
      .get();
    return denied !== undefined;
  }

  findConsentRequest(id: string): ConsentRequest | undefined {
    return this.#db.select().from(consentRequests).where(eq(consentRequests.id, id)).get();
  }

  /**
   * Records the person's answer, once: approving creates the delegation in the same
   * transaction. Returns undefined if the request was already answered or has expired.
   */
  answerConsentRequest(
    id: string,
    outcome: 'approved' | 'denied',
    delegation: NewDelegation | null,
  ): { request: ConsentRequest; delegation: Delegation | null } | 'already-delegated' | 'not-connected' | undefined {
    return this.#db.transaction(
      (tx) => {
        const now = epoch();
        const open = tx
          .select({ id: consentRequests.id })
          .from(consentRequests)
          .where(
            and(eq(consentRequests.id, id), isNull(consentRequests.outcome), gt(consentRequests.expiresAt, now)),
          )
          .get();
        if (open === undefined) return undefined;

        let created: Delegation | null = null;
        // Checked here too, in the transaction that writes: the person may have disconnected
        // the agent while the service's metadata was being read for this approval.
        if (delegation !== null && !this.isConnected(delegation.userId, delegation.agentClientId)) {
          return 'not-connected';
        }
        if (delegation !== null) {
          created = insertUnlessActive(tx, delegation, now) ?? null;
          // The request stays open: the person may revoke the delegation they have and come back.
          if (created === null) return 'already-delegated';
        }
        const request = tx
          .update(consentRequests)
          .set({ outcome, delegationId: created?.id ?? null })
          .where(eq(consentRequests.id, id))
          .returning()
          .get() as ConsentRequest;
        return { request, delegation: created };
      },
      { behavior: 'immediate' },
    );
  }

  // Services

  cachedService(audience: string): Record<string, unknown> | undefined {
    return this.#db
      .select({ metadata: services.metadata })
      .from(services)
      .where(and(eq(services.audience, audience), gt(services.expiresAt, epoch())))
      .get()?.metadata;
  }

  cacheService(audience: string, metadata: Record<string, unknown>, ttlSeconds: number): void {
    const now = epoch();
    const values = { metadata, fetchedAt: now, expiresAt: now + ttlSeconds };
    this.#db
      .insert(services)
      .values({ audience, ...values })
      .onConflictDoUpdate({ target: services.audience, set: values })
      .run();
  }

  // Agents at services

  /** The agent's client id at this service, if an administrator mapped one. */
  serviceClientId(agentClientId: string, audience: string): string | undefined {
    return this.#serviceClientId.get({ agentClientId, audience })?.clientId;
  }

  serviceClientIdsOf(agentClientId: string): { audience: string; clientId: string }[] {
    return this.#db
      .select({ audience: agentServiceClientIds.audience, clientId: agentServiceClientIds.clientId })
      .from(agentServiceClientIds)
      .where(eq(agentServiceClientIds.agentClientId, agentClientId))
      .all();
  }

  mapServiceClientId(agentClientId: string, audience: string, clientId: string): void {
    this.#db
      .insert(agentServiceClientIds)
      .values({ agentClientId, audience, clientId })
      .onConflictDoUpdate({
        target: [agentServiceClientIds.agentClientId, agentServiceClientIds.audience],
        set: { clientId },
      })
      .run();
  }

  /** Removes the mapping; false if there was none. */
  unmapServiceClientId(agentClientId: string, audience: string): boolean {
    const removed = this.#db
      .delete(agentServiceClientIds)
      .where(and(eq(agentServiceClientIds.agentClientId, agentClientId), eq(agentServiceClientIds.audience, audience)))
      .run();
    return removed.changes > 0;
  }

  // Client assertions

  /**
   * Records a client assertion's `jti`; false if this client already used it. The primary key
   * makes the check hold across processes (DESIGN 7).
   */
  useClientAssertionJti(clientId: string, jti: string, expiresAt: number): boolean {
    const result = this.#db
      .insert(clientAssertionJtis)
      .values({ clientId, jti, expiresAt })
      .onConflictDoNothing()
      .run();
    return result.changes === 1;
  }

  /** Forgets every discovered service: settings such as the loopback allowance may have changed. */
  clearServiceCache(): void {
    this.#db.delete(services).run();
  }

  /** Delegations a mint could use now (the metrics gauge). */
  countActive(): number {
    return this.#db.select({ n: sql<number>`count(*)` }).from(delegations).where(usableAt(epoch())).get()?.n ?? 0;
  }

  purgeExpired(): void {
    const now = epoch();
    this.#db.delete(clientAssertionJtis).where(lte(clientAssertionJtis.expiresAt, now)).run();
    this.#db.delete(consentRequests).where(lte(consentRequests.expiresAt, now - 86400)).run();
    this.#db.delete(services).where(lte(services.expiresAt, now)).run();
  }
}

/**
 * Ends the connections and revokes the delegations the filters select, inside the caller's
 * transaction: the grants and every token issued under them are deleted, and the revocation
 * events queued.
 */
function endConnections(tx: Executor, whichConnections: SQL, whichDelegations: SQL, now: number): Delegation[] {
  const ended = tx
    .update(connections)
    .set({ disconnectedAt: now })
    .where(and(whichConnections, isNull(connections.disconnectedAt)))
    .returning({ grantId: connections.grantId })
    .all();
  deleteGrants(tx, ended);

  const revoked = tx
    .update(delegations)
    .set({ revokedAt: now })
    .where(and(whichDelegations, isNull(delegations.revokedAt)))
    .returning()
    .all();
  enqueueRevocations(tx, revoked);
  return revoked;
}

/** Deletes the grants of ended connections and every token issued under them. */
function deleteGrants(tx: Executor, ended: { grantId: string | null }[]): void {
  const grantIds = ended.map((c) => c.grantId).filter((g): g is string => g !== null);
  if (grantIds.length === 0) return;
  tx.delete(oidcModels).where(inArray(oidcModels.grantId, grantIds)).run();
  tx.delete(oidcModels)
    .where(and(eq(oidcModels.model, 'Grant'), inArray(oidcModels.id, grantIds)))
    .run();
}

/** Inserts the delegation if (user, agent, audience) has none active at `now`; see createDelegation. */
function insertUnlessActive(tx: Executor, input: NewDelegation, now: number): Delegation | undefined {
  const active = tx
    .select({ id: delegations.id })
    .from(delegations)
    .where(
      and(
        eq(delegations.userId, input.userId),
        eq(delegations.agentClientId, input.agentClientId),
        eq(delegations.audience, input.audience),
        usableAt(now),
      ),
    )
    .get();
  if (active !== undefined) return undefined;
  return tx.insert(delegations).values({ id: newId('dlg'), ...input, createdAt: now }).returning().get();
}

/**
 * The join of a connection to its oidc-provider grant while the grant lives: oidc-provider
 * deletes it when a code or rotated refresh token is used again, which ends the connection.
 */
function grantLivesAt(now: number | Placeholder): SQL {
  return and(
    eq(oidcModels.model, 'Grant'),
    eq(oidcModels.id, connections.grantId),
    or(isNull(oidcModels.expiresAt), gt(oidcModels.expiresAt, now)),
  ) as SQL;
}

/** A delegation that can still mint at `now`: not revoked, not consumed, not expired. */
function usableAt(now: number | Placeholder): SQL {
  return and(
    isNull(delegations.revokedAt),
    isNull(delegations.consumedAt),
    or(isNull(delegations.expiresAt), gt(delegations.expiresAt, now)),
  ) as SQL;
}
