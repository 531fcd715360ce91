/**
 * Connections, delegations, consent requests, the assertion audit trail and the service cache:
 * the records the mint reads and the web pages change. Read-then-write decisions run in
 * exclusive transactions so that several processes on one database agree.
 */
import { and, desc, eq, gt, inArray, isNull, lte, or, sql, type Placeholder, type SQL } from 'drizzle-orm';
import type { Database, Db, ExclusiveScope, Tables } from './index.ts';
import type { assertions, connections, consentRequests, delegations, DelegationMode } from './schema.ts';
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

/** Consent requests one agent may have waiting for one person at a time. */
export const MAX_OPEN_CONSENT_REQUESTS = 20;

export class DelegationStore {
  readonly #database: Database;
  readonly #t: Tables;
  // The reads of every mint, prepared once (see Database.prepared).
  readonly #activeDelegation;
  readonly #isConnected;
  readonly #serviceClientId;
  readonly #countUse;
  readonly #recordAssertion;

  constructor(database: Database) {
    this.#database = database;
    this.#t = database.t;
    this.#isConnected = database.prepared('is_connected', (db, t) =>
      db
        .select({ id: t.connections.id })
        .from(t.connections)
        .innerJoin(t.oidcModels, grantLivesAt(t, sql.placeholder('now')))
        .where(
          and(
            openConnection(t, sql.placeholder('userId'), sql.placeholder('agentClientId')),
            lte(t.connections.createdAt, sql.placeholder('issuedAt')),
          ),
        )
        .limit(1),
    );
    this.#serviceClientId = database.prepared('service_client_id', (db, t) =>
      db
        .select({ clientId: t.agentServiceClientIds.clientId })
        .from(t.agentServiceClientIds)
        .where(
          and(
            eq(t.agentServiceClientIds.agentClientId, sql.placeholder('agentClientId')),
            eq(t.agentServiceClientIds.audience, sql.placeholder('audience')),
          ),
        ),
    );
    // A use counts, and consumes a `once` delegation, only while the delegation is usable.
    this.#countUse = database.statement('count_use', (db, { delegations }) =>
      db
        .update(delegations)
        .set({
          uses: sql`${delegations.uses} + 1`,
          lastUsedAt: sql`${sql.placeholder('now')}`,
          consumedAt: sql`case when ${delegations.mode} = 'once' then ${sql.placeholder('now')} else ${delegations.consumedAt} end`,
        })
        .where(and(eq(delegations.id, sql.placeholder('id')), usableAt(database.t, sql.placeholder('now'))))
        .returning({ id: delegations.id }),
    );
    this.#recordAssertion = database.statement('record_assertion', (db, { assertions }) =>
      db
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
        .returning({ jti: assertions.jti }),
    );
    this.#activeDelegation = database.prepared('active_delegation', (db, t) =>
      db
        .select()
        .from(t.delegations)
        .where(
          usableFor(
            t,
            sql.placeholder('userId'),
            sql.placeholder('agentClientId'),
            sql.placeholder('audience'),
            sql.placeholder('now'),
          ),
        )
        .orderBy(desc(t.delegations.createdAt))
        .limit(1),
    );
  }

  #run<T>(fn: (db: Db, t: Tables) => Promise<T>): Promise<T> {
    return this.#database.run((db) => fn(db, this.#t));
  }

  #exclusive<T>(scope: ExclusiveScope, fn: (tx: Db, t: Tables) => Promise<T>): Promise<T> {
    return this.#database.transaction((tx) => fn(tx, this.#t), { exclusive: scope });
  }

  // Connections

  /** Records the agent's connection to the user under `grantId`, or refreshes the live one. */
  recordConnection(userId: string, agentClientId: string, grantId: string, scope: string): Promise<void> {
    return this.#exclusive(`user:${userId}`, async (tx, { connections }) => {
      const now = epoch();
      const [existing] = await tx
        .select({ id: connections.id })
        .from(connections)
        .where(and(eq(connections.grantId, grantId), isNull(connections.disconnectedAt)));

      if (existing !== undefined) {
        await tx.update(connections).set({ scope, lastConnectedAt: now }).where(eq(connections.id, existing.id));
        return;
      }
      await tx
        .insert(connections)
        .values({ id: newId('con'), userId, agentClientId, grantId, scope, createdAt: now, lastConnectedAt: now });
    });
  }

  /**
   * Whether the agent still acts for the user: a connection not ended, whose grant still
   * exists. oidc-provider deletes a grant when it detects a rotated refresh token being reused,
   * and that ends the connection for ID tokens too.
   */
  isConnected(userId: string, agentClientId: string): Promise<boolean> {
    return this.isConnectedSince(userId, agentClientId, Number.MAX_SAFE_INTEGER);
  }

  /**
   * Whether a token issued at `issuedAt` (an ID token, which names no grant) belongs to a
   * connection that is still live: one made at or before it. A token from before a disconnect
   * stays dead when the agent connects again, since the new connection is younger than it
   * (to the second: one issued, disconnected and reconnected within the same second passes).
   */
  async isConnectedSince(userId: string, agentClientId: string, issuedAt: number): Promise<boolean> {
    const rows = await this.#isConnected({ userId, agentClientId, now: epoch(), issuedAt });
    return rows.length > 0;
  }

  async connectedAgents(userId: string): Promise<ConnectedAgent[]> {
    const rows = await this.#run((db, t) =>
      db
        .select({
          clientId: t.agents.clientId,
          name: t.agents.name,
          logoUri: t.agents.logoUri,
          scope: t.connections.scope,
          connectedAt: t.connections.lastConnectedAt,
        })
        .from(t.connections)
        .innerJoin(t.agents, eq(t.agents.clientId, t.connections.agentClientId))
        // Only connections whose grant lives, as isConnected: such an agent can act for the person.
        .innerJoin(t.oidcModels, grantLivesAt(t, epoch()))
        .where(and(eq(t.connections.userId, userId), isNull(t.connections.disconnectedAt)))
        .orderBy(desc(t.connections.lastConnectedAt)),
    );

    const seen = new Set<string>();
    return rows.filter((row) => !seen.has(row.clientId) && seen.add(row.clientId));
  }

  /**
   * Ends every connection between the user and the agent: its grants and the tokens issued
   * under them are deleted and its delegations revoked, in one transaction.
   */
  disconnect(userId: string, agentClientId: string): Promise<{ revokedDelegations: string[] }> {
    return this.#exclusive(`user:${userId}`, async (tx, t) => {
      const revoked = await endConnections(
        tx,
        t,
        and(eq(t.connections.userId, userId), eq(t.connections.agentClientId, agentClientId)) as SQL,
        and(eq(t.delegations.userId, userId), eq(t.delegations.agentClientId, agentClientId)) as SQL,
        epoch(),
      );
      return { revokedDelegations: revoked.map((d) => d.id) };
    });
  }

  // Delegations

  /**
   * Creates a delegation unless the agent already has an active one for this user and
   * audience: there is at most one, so that revoking it stops the minting (a second would keep
   * it going). Returns undefined then; checked and inserted in one exclusive transaction, so
   * two approvals at once cannot both create one.
   */
  createDelegation(input: NewDelegation): Promise<Delegation | undefined> {
    return this.#exclusive(`user:${input.userId}`, (tx, t) => insertUnlessActive(tx, t, input, epoch()));
  }

  async findDelegation(id: string): Promise<Delegation | undefined> {
    const [row] = await this.#run((db, { delegations }) => db.select().from(delegations).where(eq(delegations.id, id)));
    return row;
  }

  /** The delegation a mint for (user, agent, audience) would use now, if any. */
  async activeDelegation(userId: string, agentClientId: string, audience: string): Promise<Delegation | undefined> {
    return (await this.#activeDelegation({ userId, agentClientId, audience, now: epoch() }))[0];
  }

  /**
   * Uses the delegation for one assertion and records it, atomically: a `once` delegation is
   * consumed by exactly one caller however many race for it, in any process (DESIGN 2.4 step
   * 6): the update's condition is evaluated against the row as committed, so a second caller
   * updates nothing. Returns false when the delegation is no longer usable.
   */
  async useDelegation(delegation: Delegation, record: AssertionRecord): Promise<boolean> {
    if (this.#database.dialect === 'postgres') return this.#useDelegationInOneStatement(delegation, record);
    return this.#database.transaction(async (tx) => {
      const used = await this.#countUse(tx, { id: delegation.id, now: record.issuedAt });
      if (used.length !== 1) return false;
      await this.#recordAssertion(tx, { ...record, delegationId: delegation.id });
      return true;
    });
  }

  /**
   * useDelegation on PostgreSQL: the update and the audit row in one statement, so the row lock
   * a concurrent mint of the same delegation waits for is held for one round trip, not four
   * (begin, update, insert, commit); a statement is atomic by itself.
   */
  async #useDelegationInOneStatement(delegation: Delegation, record: AssertionRecord): Promise<boolean> {
    const { delegations: d, assertions: a } = this.#t;
    const now = record.issuedAt;
    const column = (c: { name: string }) => sql.identifier(c.name);
    const inserted = await this.#database.execute<{ jti: string }>(sql`
      with used as (
        update ${d}
        set ${column(d.uses)} = ${d.uses} + 1,
            ${column(d.lastUsedAt)} = ${now},
            ${column(d.consumedAt)} = case when ${d.mode} = 'once' then ${now} else ${d.consumedAt} end
        where ${and(eq(d.id, delegation.id), usableAt(this.#t, now))}
        returning ${d.id}
      )
      insert into ${a} (${sql.join(
        [a.jti, a.delegationId, a.userId, a.agentClientId, a.audience, a.resources, a.scope, a.kid, a.issuedAt, a.expiresAt].map(column),
        sql`, `,
      )})
      -- A select list's parameters are text unless cast.
      select ${record.jti}, used.id, ${record.userId}, ${record.agentClientId}, ${record.audience},
             ${sql.param(record.resources, a.resources)}::jsonb, ${record.scope}, ${record.kid},
             ${record.issuedAt}::bigint, ${record.expiresAt}::bigint
      from used
      returning ${column(a.jti)}`);
    return inserted.length === 1;
  }

  /**
   * Revokes one of the user's delegations and queues the revocation event in the same
   * transaction; false if it was not theirs or already revoked.
   */
  revokeDelegation(userId: string, id: string): Promise<boolean> {
    return this.#exclusive(`user:${userId}`, async (tx, t) => {
      const { delegations } = t;
      const revoked = await tx
        .update(delegations)
        .set({ revokedAt: epoch() })
        .where(and(eq(delegations.id, id), eq(delegations.userId, userId), isNull(delegations.revokedAt)))
        .returning();
      await enqueueRevocations(tx, t, revoked);
      return revoked.length === 1;
    });
  }

  /**
   * Removes an agent (`deputy agents remove`): it can no longer authenticate, its grants and
   * tokens are deleted, its delegations revoked and their events queued. The row stays,
   * marked removed, for the audit trail.
   */
  removeAgent(agentClientId: string): Promise<{ revokedDelegations: number } | undefined> {
    // Every person the agent acts for: excludes all their transactions at once.
    return this.#exclusive('all', async (tx, t) => {
      const now = epoch();
      const [agent] = await tx
        .update(t.agents)
        .set({ removedAt: now })
        .where(and(eq(t.agents.clientId, agentClientId), isNull(t.agents.removedAt)))
        .returning({ clientId: t.agents.clientId });
      if (agent === undefined) return undefined;

      const revoked = await endConnections(
        tx,
        t,
        eq(t.connections.agentClientId, agentClientId),
        eq(t.delegations.agentClientId, agentClientId),
        now,
      );
      return { revokedDelegations: revoked.length };
    });
  }

  /**
   * Removes a person (`deputy users remove`): their sessions, connections, grants and tokens
   * end, their delegations are revoked with events queued, and their upstream identity is
   * unlinked, so signing in again makes a new user. The row stays, marked removed.
   */
  removeUser(userId: string): Promise<{ revokedDelegations: number } | undefined> {
    return this.#exclusive(`user:${userId}`, async (tx, t) => {
      const now = epoch();
      const [user] = await tx
        .update(t.users)
        .set({ removedAt: now })
        .where(and(eq(t.users.id, userId), isNull(t.users.removedAt)))
        .returning({ id: t.users.id });
      if (user === undefined) return undefined;

      await tx.delete(t.sessions).where(eq(t.sessions.userId, userId));
      await tx.delete(t.upstreamIdentities).where(eq(t.upstreamIdentities.userId, userId));
      const revoked = await endConnections(
        tx,
        t,
        eq(t.connections.userId, userId),
        eq(t.delegations.userId, userId),
        now,
      );
      return { revokedDelegations: revoked.length };
    });
  }

  /** The user's delegations, newest first, with the agent's name. */
  async delegationsOf(userId: string): Promise<(Delegation & { agentName: string })[]> {
    const rows = await this.#run((db, { delegations, agents }) =>
      db
        .select({ delegation: delegations, agentName: agents.name })
        .from(delegations)
        .innerJoin(agents, eq(agents.clientId, delegations.agentClientId))
        .where(eq(delegations.userId, userId))
        // Ties (the same second) in one order on both databases; SQLite alone would keep its own.
        .orderBy(desc(delegations.createdAt), desc(delegations.id)),
    );
    return rows.map((row) => ({ ...row.delegation, agentName: row.agentName }));
  }

  assertionsOf(delegationId: string, limit: number, offset: number): Promise<Assertion[]> {
    return this.#run((db, { assertions }) =>
      db
        .select()
        .from(assertions)
        .where(eq(assertions.delegationId, delegationId))
        .orderBy(desc(assertions.issuedAt), desc(assertions.jti))
        .limit(limit)
        .offset(offset),
    );
  }

  // Consent requests

  createConsentRequest(
    input: Pick<ConsentRequest, 'userId' | 'agentClientId' | 'audience' | 'resources' | 'scope'>,
    ttlSeconds: number,
  ): Promise<(ConsentRequest & { expiresIn: number }) | 'too-many'> {
    // An agent that retries while the person decides gets the same link back, not a new row
    // each time, as long as more than half its life is left; looked up and written in one
    // exclusive transaction, so retries at once get one link.
    return this.#exclusive(`user:${input.userId}`, async (tx, { consentRequests }) => {
      const now = epoch();
      const candidates = await tx
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
        );
      const open = candidates.find(
        (r) => r.scope === input.scope && JSON.stringify(r.resources) === JSON.stringify(input.resources),
      );
      if (open !== undefined) return { ...open, expiresIn: open.expiresAt - now };

      // An agent asking again and again, for other audiences or scopes, may not fill the
      // person's page and the database with requests: a bounded number wait at a time.
      const [waiting] = await tx
        .select({ n: sql<number>`count(*)`.mapWith(Number) })
        .from(consentRequests)
        .where(
          and(
            eq(consentRequests.userId, input.userId),
            eq(consentRequests.agentClientId, input.agentClientId),
            isNull(consentRequests.outcome),
            gt(consentRequests.expiresAt, now),
          ),
        );
      if ((waiting?.n ?? 0) >= MAX_OPEN_CONSENT_REQUESTS) return 'too-many';

      const [created] = await tx
        .insert(consentRequests)
        .values({ id: newId('cns'), ...input, createdAt: now, expiresAt: now + ttlSeconds })
        .returning();
      return { ...(created as ConsentRequest), expiresIn: ttlSeconds };
    });
  }

  /**
   * Whether the person denied this agent a consent request for the audience that is still
   * within its lifetime: the denial stands that long, so the agent is told rather than asking
   * again and again.
   */
  async consentDenied(userId: string, agentClientId: string, audience: string): Promise<boolean> {
    const denied = await this.#run((db, { consentRequests }) =>
      db
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
        .limit(1),
    );
    return denied.length > 0;
  }

  async findConsentRequest(id: string): Promise<ConsentRequest | undefined> {
    const [row] = await this.#run((db, { consentRequests }) =>
      db.select().from(consentRequests).where(eq(consentRequests.id, id)),
    );
    return row;
  }

  /**
   * Records the person's answer, once: approving creates the delegation in the same
   * transaction. Returns undefined if the request was already answered or has expired.
   */
  answerConsentRequest(
    userId: string,
    id: string,
    outcome: 'approved' | 'denied',
    delegation: NewDelegation | null,
  ): Promise<{ request: ConsentRequest; delegation: Delegation | null } | 'already-delegated' | 'not-connected' | undefined> {
    if (delegation !== null && delegation.userId !== userId) throw new Error('a delegation for another person');
    return this.#exclusive(`user:${userId}`, async (tx, t) => {
      const { consentRequests } = t;
      const now = epoch();
      const [open] = await tx
        .select({ id: consentRequests.id })
        .from(consentRequests)
        .where(
          and(
            eq(consentRequests.id, id),
            eq(consentRequests.userId, userId),
            isNull(consentRequests.outcome),
            gt(consentRequests.expiresAt, now),
          ),
        );
      if (open === undefined) return undefined;

      let created: Delegation | null = null;
      // Checked here too, in the transaction that writes: the person may have disconnected
      // the agent while the service's metadata was being read for this approval.
      if (delegation !== null && !(await connectedIn(tx, t, delegation.userId, delegation.agentClientId, now))) {
        return 'not-connected';
      }
      if (delegation !== null) {
        created = (await insertUnlessActive(tx, t, delegation, now)) ?? null;
        // The request stays open: the person may revoke the delegation they have and come back.
        if (created === null) return 'already-delegated';
      }
      const [request] = await tx
        .update(consentRequests)
        .set({ outcome, delegationId: created?.id ?? null })
        .where(eq(consentRequests.id, id))
        .returning();
      return { request: request as ConsentRequest, delegation: created };
    });
  }

  // Services

  async cachedService(audience: string): Promise<Record<string, unknown> | undefined> {
    const [row] = await this.#run((db, { services }) =>
      db
        .select({ metadata: services.metadata })
        .from(services)
        .where(and(eq(services.audience, audience), gt(services.expiresAt, epoch()))),
    );
    return row?.metadata;
  }

  async cacheService(audience: string, metadata: Record<string, unknown>, ttlSeconds: number): Promise<void> {
    const now = epoch();
    const values = { metadata, fetchedAt: now, expiresAt: now + ttlSeconds };
    await this.#run((db, { services }) =>
      db
        .insert(services)
        .values({ audience, ...values })
        .onConflictDoUpdate({ target: services.audience, set: values }),
    );
  }

  // Agents at services

  /** The agent's client id at this service, if an administrator mapped one. */
  async serviceClientId(agentClientId: string, audience: string): Promise<string | undefined> {
    return (await this.#serviceClientId({ agentClientId, audience }))[0]?.clientId;
  }

  serviceClientIdsOf(agentClientId: string): Promise<{ audience: string; clientId: string }[]> {
    return this.#run((db, { agentServiceClientIds }) =>
      db
        .select({ audience: agentServiceClientIds.audience, clientId: agentServiceClientIds.clientId })
        .from(agentServiceClientIds)
        .where(eq(agentServiceClientIds.agentClientId, agentClientId)),
    );
  }

  async mapServiceClientId(agentClientId: string, audience: string, clientId: string): Promise<void> {
    await this.#run((db, { agentServiceClientIds }) =>
      db
        .insert(agentServiceClientIds)
        .values({ agentClientId, audience, clientId })
        .onConflictDoUpdate({
          target: [agentServiceClientIds.agentClientId, agentServiceClientIds.audience],
          set: { clientId },
        }),
    );
  }

  /** Removes the mapping; false if there was none. */
  async unmapServiceClientId(agentClientId: string, audience: string): Promise<boolean> {
    const removed = await this.#run((db, { agentServiceClientIds }) =>
      db
        .delete(agentServiceClientIds)
        .where(
          and(eq(agentServiceClientIds.agentClientId, agentClientId), eq(agentServiceClientIds.audience, audience)),
        )
        .returning({ clientId: agentServiceClientIds.clientId }),
    );
    return removed.length > 0;
  }

  // Client assertions

  /**
   * Records a client assertion's `jti`; false if this client already used it. The primary key
   * makes the check hold across processes (DESIGN 7).
   */
  async useClientAssertionJti(clientId: string, jti: string, expiresAt: number): Promise<boolean> {
    const inserted = await this.#run((db, { clientAssertionJtis }) =>
      db
        .insert(clientAssertionJtis)
        .values({ clientId, jti, expiresAt })
        .onConflictDoNothing()
        .returning({ jti: clientAssertionJtis.jti }),
    );
    return inserted.length === 1;
  }

  /** Forgets every discovered service: settings such as the loopback allowance may have changed. */
  async clearServiceCache(): Promise<void> {
    await this.#run((db, { services }) => db.delete(services));
  }

  /** Delegations a mint could use now (the metrics gauge). */
  async countActive(): Promise<number> {
    const [row] = await this.#run((db, t) =>
      db.select({ n: sql<number>`count(*)`.mapWith(Number) }).from(t.delegations).where(usableAt(t, epoch())),
    );
    return row?.n ?? 0;
  }

  async purgeExpired(): Promise<void> {
    const now = epoch();
    await this.#run(async (db, { clientAssertionJtis, consentRequests, services }) => {
      await db.delete(clientAssertionJtis).where(lte(clientAssertionJtis.expiresAt, now));
      await db.delete(consentRequests).where(lte(consentRequests.expiresAt, now - 86400));
      await db.delete(services).where(lte(services.expiresAt, now));
    });
  }
}

/**
 * Ends the connections and revokes the delegations the filters select, inside the caller's
 * transaction: the grants and every token issued under them are deleted, and the revocation
 * events queued.
 */
async function endConnections(
  tx: Db,
  t: Tables,
  whichConnections: SQL,
  whichDelegations: SQL,
  now: number,
): Promise<Delegation[]> {
  const ended = await tx
    .update(t.connections)
    .set({ disconnectedAt: now })
    .where(and(whichConnections, isNull(t.connections.disconnectedAt)))
    .returning({ grantId: t.connections.grantId });
  await deleteGrants(tx, t, ended);

  const revoked = await tx
    .update(t.delegations)
    .set({ revokedAt: now })
    .where(and(whichDelegations, isNull(t.delegations.revokedAt)))
    .returning();
  await enqueueRevocations(tx, t, revoked);
  return revoked;
}

/** Deletes the grants of ended connections and every token issued under them. */
async function deleteGrants(tx: Db, t: Tables, ended: { grantId: string | null }[]): Promise<void> {
  const { oidcModels } = t;
  const grantIds = ended.map((c) => c.grantId).filter((g): g is string => g !== null);
  if (grantIds.length === 0) return;
  await tx.delete(oidcModels).where(grantsAndTokens(t, grantIds));
}

/**
 * The rows of these grants and of everything issued under them: deleting them ends the
 * connections they hold: this module reads a connection as live only while its grant row is there.
 */
export function grantsAndTokens({ oidcModels }: Tables, grantIds: string[], prefix = ''): SQL {
  return or(
    inArray(oidcModels.grantId, grantIds),
    and(eq(oidcModels.model, `${prefix}Grant`), inArray(oidcModels.id, grantIds)),
  ) as SQL;
}

/** Whether the user and agent have a live connection, read inside the caller's transaction. */
async function connectedIn(tx: Db, t: Tables, userId: string, agentClientId: string, now: number): Promise<boolean> {
  const rows = await tx
    .select({ id: t.connections.id })
    .from(t.connections)
    .innerJoin(t.oidcModels, grantLivesAt(t, now))
    .where(openConnection(t, userId, agentClientId))
    .limit(1);
  return rows.length > 0;
}

/** Inserts the delegation if (user, agent, audience) has none active at `now`; see createDelegation. */
async function insertUnlessActive(tx: Db, t: Tables, input: NewDelegation, now: number): Promise<Delegation | undefined> {
  const { delegations } = t;
  const active = await tx
    .select({ id: delegations.id })
    .from(delegations)
    .where(usableFor(t, input.userId, input.agentClientId, input.audience, now))
    .limit(1);
  if (active.length > 0) return undefined;
  const [created] = await tx.insert(delegations).values({ id: newId('dlg'), ...input, createdAt: now }).returning();
  return created;
}

/**
 * The join of a connection to its oidc-provider grant while the grant lives: oidc-provider
 * deletes it when a code or rotated refresh token is used again, which ends the connection.
 */
function grantLivesAt({ oidcModels, connections }: Tables, now: number | Placeholder): SQL {
  return and(
    eq(oidcModels.model, 'Grant'),
    eq(oidcModels.id, connections.grantId),
    or(isNull(oidcModels.expiresAt), gt(oidcModels.expiresAt, now)),
  ) as SQL;
}

/** The user's connections to the agent that have not been ended (join grantLivesAt for live ones). */
function openConnection({ connections }: Tables, userId: string | Placeholder, agentClientId: string | Placeholder): SQL {
  return and(
    eq(connections.userId, userId),
    eq(connections.agentClientId, agentClientId),
    isNull(connections.disconnectedAt),
  ) as SQL;
}

/** The agent's delegations from the user for the audience that can mint at `now`. */
function usableFor(
  t: Tables,
  userId: string | Placeholder,
  agentClientId: string | Placeholder,
  audience: string | Placeholder,
  now: number | Placeholder,
): SQL {
  return and(
    eq(t.delegations.userId, userId),
    eq(t.delegations.agentClientId, agentClientId),
    eq(t.delegations.audience, audience),
    usableAt(t, now),
  ) as SQL;
}

/** A delegation that can still mint at `now`: not revoked, not consumed, not expired. */
function usableAt({ delegations }: Tables, now: number | Placeholder): SQL {
  return and(
    isNull(delegations.revokedAt),
    isNull(delegations.consumedAt),
    or(isNull(delegations.expiresAt), gt(delegations.expiresAt, now)),
  ) as SQL;
}
