/**
 * The store: every query Deputy makes, and the only module besides the connection that
 * imports drizzle. Callers pass and receive plain records.
 */
import { createHash, randomBytes } from 'node:crypto';
import { and, asc, eq, gt, isNull, lte, sql } from 'drizzle-orm';
import type { Database, Db, ExclusiveScope, Tables } from './index.ts';
import type { agents, loginAttempts, signingKeys, users } from './schema.ts';

export type User = typeof users.$inferSelect;
export type Agent = typeof agents.$inferSelect;
export type NewAgent = typeof agents.$inferInsert;
export type SigningKeyRow = typeof signingKeys.$inferSelect;
export type LoginAttempt = typeof loginAttempts.$inferSelect;

export function sha256(value: string): string {
  return createHash('sha256').update(value).digest('hex');
}

export function epoch(): number {
  return Math.floor(Date.now() / 1000);
}

/** Random identifiers with a readable prefix, e.g. `usr_…`. 128 bits of entropy. */
export function newId(prefix: string): string {
  return `${prefix}_${randomBytes(16).toString('base64url')}`;
}

/** What Deputy keeps of the upstream's claims at each sign-in. */
export interface UpstreamProfile {
  email: string | null;
  emailVerified: boolean;
  name: string | null;
  phoneNumber: string | null;
  phoneNumberVerified: boolean;
  amr: string[] | null;
  acr: string | null;
  authTime: number | null;
}

function refused(_values: Record<string, unknown>): Promise<never> {
  return Promise.reject(new Error('a prepared lookup used inside a transaction'));
}

export class Store {
  readonly database: Database;
  /** The transaction this store is bound to, if it is one (see exclusive). */
  readonly #tx: Db | undefined;
  readonly #findAgent;
  readonly #findUser;
  readonly #findSessionUser;

  constructor(database: Database, tx?: Db) {
    this.database = database;
    this.#tx = tx;
    // The prepared lookups run outside transactions; a transaction's store (the signing key
    // rotations) has no use for them and refuses them rather than run them beside it.
    const inTransaction = tx !== undefined;
    this.#findAgent = inTransaction ? refused : database.prepared('find_agent', (db, { agents }) =>
      db
        .select()
        .from(agents)
        .where(and(eq(agents.clientId, sql.placeholder('clientId')), isNull(agents.removedAt))),
    );
    this.#findUser = inTransaction ? refused : database.prepared('find_user', (db, { users }) =>
      db
        .select()
        .from(users)
        .where(and(eq(users.id, sql.placeholder('id')), isNull(users.removedAt))),
    );
    this.#findSessionUser = inTransaction ? refused : database.prepared('find_session_user', (db, { sessions, users }) =>
      db
        .select({ user: users })
        .from(sessions)
        .innerJoin(users, eq(users.id, sessions.userId))
        .where(
          and(
            eq(sessions.idHash, sql.placeholder('idHash')),
            gt(sessions.expiresAt, sql.placeholder('now')),
            isNull(users.removedAt),
          ),
        ),
    );
  }

  /** Runs queries on the transaction this store is bound to, or on the database. */
  #q<T>(fn: (db: Db, t: Tables) => Promise<T>): Promise<T> {
    const t = this.database.t;
    return this.#tx !== undefined ? fn(this.#tx, t) : this.database.run((db) => fn(db, t));
  }

  // Users

  /**
   * Finds the user by their upstream identity or creates one, and records the claims of this
   * sign-in. One exclusive transaction, so two simultaneous first sign-ins make one user.
   */
  upsertUpstreamUser(issuer: string, subject: string, profile: UpstreamProfile): Promise<User> {
    return this.database.transaction(
      async (tx) => {
        const { upstreamIdentities, users } = this.database.t;
        const [link] = await tx
          .select({ userId: upstreamIdentities.userId })
          .from(upstreamIdentities)
          .where(and(eq(upstreamIdentities.issuer, issuer), eq(upstreamIdentities.subject, subject)));

        const values = { ...profile, updatedAt: epoch() };
        if (link !== undefined) {
          const [updated] = await tx.update(users).set(values).where(eq(users.id, link.userId)).returning();
          return updated as User;
        }

        const [user] = await tx.insert(users).values({ id: newId('usr'), ...values }).returning();
        await tx.insert(upstreamIdentities).values({ issuer, subject, userId: (user as User).id });
        return user as User;
      },
      { exclusive: `upstream:${issuer} ${subject}` },
    );
  }

  /** A user who has not been removed. */
  async findUser(id: string): Promise<User | undefined> {
    return (await this.#findUser({ id }))[0];
  }

  listUsers(): Promise<User[]> {
    return this.#q((db, { users }) =>
      db.select().from(users).where(isNull(users.removedAt)).orderBy(asc(users.createdAt), asc(users.id)),
    );
  }

  upstreamIdentitiesOf(userId: string): Promise<{ issuer: string; subject: string }[]> {
    return this.#q((db, { upstreamIdentities }) =>
      db
        .select({ issuer: upstreamIdentities.issuer, subject: upstreamIdentities.subject })
        .from(upstreamIdentities)
        .where(eq(upstreamIdentities.userId, userId)),
    );
  }

  // Sessions

  /** Creates a session and returns the id for the cookie; only its hash is stored. */
  async createSession(userId: string, ttlSeconds: number): Promise<string> {
    const id = randomBytes(32).toString('base64url');
    await this.#q((db, { sessions }) =>
      db.insert(sessions).values({ idHash: sha256(id), userId, expiresAt: epoch() + ttlSeconds }),
    );
    return id;
  }

  async findSessionUser(sessionId: string): Promise<User | undefined> {
    return (await this.#findSessionUser({ idHash: sha256(sessionId), now: epoch() }))[0]?.user;
  }

  async deleteSession(sessionId: string): Promise<void> {
    await this.#q((db, { sessions }) => db.delete(sessions).where(eq(sessions.idHash, sha256(sessionId))));
  }

  // Sign-in attempts

  async saveLoginAttempt(state: string, attempt: Omit<LoginAttempt, 'stateHash'>): Promise<void> {
    await this.#q((db, { loginAttempts }) =>
      db.insert(loginAttempts).values({ stateHash: sha256(state), ...attempt }),
    );
  }

  /** Returns the attempt for this state and deletes it, so each state finishes at most once. */
  async takeLoginAttempt(state: string): Promise<LoginAttempt | undefined> {
    const [row] = await this.#q((db, { loginAttempts }) =>
      db.delete(loginAttempts).where(eq(loginAttempts.stateHash, sha256(state))).returning(),
    );
    if (row === undefined || row.expiresAt <= epoch()) return undefined;
    return row;
  }

  /** Drops expired sessions and sign-in attempts. */
  async purgeExpired(): Promise<void> {
    const now = epoch();
    await this.#q(async (db, { sessions, loginAttempts }) => {
      await db.delete(sessions).where(lte(sessions.expiresAt, now));
      await db.delete(loginAttempts).where(lte(loginAttempts.expiresAt, now));
    });
  }

  // Agents

  async insertAgent(agent: NewAgent): Promise<Agent> {
    const [inserted] = await this.#q((db, { agents }) => db.insert(agents).values(agent).returning());
    return inserted as Agent;
  }

  /** A registered agent that has not been removed. */
  async findAgent(clientId: string): Promise<Agent | undefined> {
    return (await this.#findAgent({ clientId }))[0];
  }

  /** The agent's record even after its removal (kept for the audit trail). */
  async findAgentRecord(clientId: string): Promise<Agent | undefined> {
    const [agent] = await this.#q((db, { agents }) => db.select().from(agents).where(eq(agents.clientId, clientId)));
    return agent;
  }

  listAgents(): Promise<Agent[]> {
    return this.#q((db, { agents }) =>
      db.select().from(agents).where(isNull(agents.removedAt)).orderBy(asc(agents.createdAt), asc(agents.name)),
    );
  }

  // Signing keys

  async insertSigningKey(row: SigningKeyRow): Promise<void> {
    await this.#q((db, { signingKeys }) => db.insert(signingKeys).values(row));
  }

  /** Ends a key's signing at `retiredAt` and its publication at `removeAfter`. */
  async retireSigningKey(kid: string, retiredAt: number, removeAfter: number): Promise<void> {
    await this.#q((db, { signingKeys }) =>
      db.update(signingKeys).set({ retiredAt, removeAfter }).where(eq(signingKeys.kid, kid)),
    );
  }

  async updateSigningKeyCiphertext(kid: string, privateJwe: string): Promise<void> {
    await this.#q((db, { signingKeys }) => db.update(signingKeys).set({ privateJwe }).where(eq(signingKeys.kid, kid)));
  }

  allSigningKeys(): Promise<SigningKeyRow[]> {
    return this.#q((db, { signingKeys }) =>
      db.select().from(signingKeys).orderBy(asc(signingKeys.createdAt), asc(signingKeys.activatesAt), asc(signingKeys.kid)),
    );
  }

  /**
   * Runs `fn` in an exclusive transaction, with a store bound to it: for read-then-write
   * decisions that several processes on one database must agree on.
   */
  exclusive<T>(scope: ExclusiveScope, fn: (store: Store) => Promise<T>): Promise<T> {
    if (this.#tx !== undefined) return fn(this);
    return this.database.transaction((tx) => fn(new Store(this.database, tx)), { exclusive: scope });
  }
}
