/**
 * The store: every query Deputy makes, and the only module besides the connection that
 * imports drizzle. Callers pass and receive plain records.
 */
import { createHash, randomBytes } from 'node:crypto';
import { and, asc, eq, gt, isNull, lte, sql } from 'drizzle-orm';
import type { Db } from './index.ts';
import {
  agents,
  loginAttempts,
  sessions,
  signingKeys,
  upstreamIdentities,
  users,
} from './schema.ts';

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

export class Store {
  readonly db: Db;
  // The queries every token request makes, prepared once: building and preparing a drizzle
  // query costs more than running it (bench/mint.ts --profile).
  readonly #findAgent;
  readonly #findUser;
  readonly #findSessionUser;

  constructor(db: Db) {
    this.db = db;
    this.#findAgent = db
      .select()
      .from(agents)
      .where(and(eq(agents.clientId, sql.placeholder('clientId')), isNull(agents.removedAt)))
      .prepare();
    this.#findUser = db
      .select()
      .from(users)
      .where(and(eq(users.id, sql.placeholder('id')), isNull(users.removedAt)))
      .prepare();
    this.#findSessionUser = db
      .select({ user: users })
      .from(sessions)
      .innerJoin(users, eq(users.id, sessions.userId))
      .where(
        and(
          eq(sessions.idHash, sql.placeholder('idHash')),
          gt(sessions.expiresAt, sql.placeholder('now')),
          isNull(users.removedAt),
        ),
      )
      .prepare();
  }

  // Users

  /**
   * Finds the user by their upstream identity or creates one, and records the claims of this
   * sign-in. One transaction, so two simultaneous first sign-ins make one user.
   */
  upsertUpstreamUser(issuer: string, subject: string, profile: UpstreamProfile): User {
    return this.db.transaction(
      (tx) => {
        const link = tx
          .select({ userId: upstreamIdentities.userId })
          .from(upstreamIdentities)
          .where(and(eq(upstreamIdentities.issuer, issuer), eq(upstreamIdentities.subject, subject)))
          .get();

        const values = { ...profile, updatedAt: epoch() };
        if (link !== undefined) {
          return tx.update(users).set(values).where(eq(users.id, link.userId)).returning().get();
        }

        const user = tx.insert(users).values({ id: newId('usr'), ...values }).returning().get();
        tx.insert(upstreamIdentities).values({ issuer, subject, userId: user.id }).run();
        return user;
      },
      { behavior: 'immediate' },
    );
  }

  /** A user who has not been removed. */
  findUser(id: string): User | undefined {
    return this.#findUser.get({ id });
  }

  listUsers(): User[] {
    return this.db.select().from(users).where(isNull(users.removedAt)).orderBy(asc(users.createdAt)).all();
  }

  upstreamIdentitiesOf(userId: string): { issuer: string; subject: string }[] {
    return this.db
      .select({ issuer: upstreamIdentities.issuer, subject: upstreamIdentities.subject })
      .from(upstreamIdentities)
      .where(eq(upstreamIdentities.userId, userId))
      .all();
  }

  // Sessions

  /** Creates a session and returns the id for the cookie; only its hash is stored. */
  createSession(userId: string, ttlSeconds: number): string {
    const id = randomBytes(32).toString('base64url');
    this.db
      .insert(sessions)
      .values({ idHash: sha256(id), userId, expiresAt: epoch() + ttlSeconds })
      .run();
    return id;
  }

  findSessionUser(sessionId: string): User | undefined {
    return this.#findSessionUser.get({ idHash: sha256(sessionId), now: epoch() })?.user;
  }

  deleteSession(sessionId: string): void {
    this.db.delete(sessions).where(eq(sessions.idHash, sha256(sessionId))).run();
  }

  // Sign-in attempts

  saveLoginAttempt(state: string, attempt: Omit<LoginAttempt, 'stateHash'>): void {
    this.db
      .insert(loginAttempts)
      .values({ stateHash: sha256(state), ...attempt })
      .run();
  }

  /** Returns the attempt for this state and deletes it, so each state finishes at most once. */
  takeLoginAttempt(state: string): LoginAttempt | undefined {
    const row = this.db
      .delete(loginAttempts)
      .where(eq(loginAttempts.stateHash, sha256(state)))
      .returning()
      .get();
    if (row === undefined || row.expiresAt <= epoch()) return undefined;
    return row;
  }

  /** Drops expired sessions and sign-in attempts. */
  purgeExpired(): void {
    const now = epoch();
    this.db.delete(sessions).where(lte(sessions.expiresAt, now)).run();
    this.db.delete(loginAttempts).where(lte(loginAttempts.expiresAt, now)).run();
  }

  // Agents

  insertAgent(agent: NewAgent): Agent {
    return this.db.insert(agents).values(agent).returning().get();
  }

  /** A registered agent that has not been removed. */
  findAgent(clientId: string): Agent | undefined {
    return this.#findAgent.get({ clientId });
  }

  /** The agent's record even after its removal (kept for the audit trail). */
  findAgentRecord(clientId: string): Agent | undefined {
    return this.db.select().from(agents).where(eq(agents.clientId, clientId)).get();
  }

  listAgents(): Agent[] {
    return this.db
      .select()
      .from(agents)
      .where(isNull(agents.removedAt))
      .orderBy(asc(agents.createdAt), asc(agents.name))
      .all();
  }

  // Signing keys

  insertSigningKey(row: SigningKeyRow): void {
    this.db.insert(signingKeys).values(row).run();
  }

  /** Ends a key's signing at `retiredAt` and its publication at `removeAfter`. */
  retireSigningKey(kid: string, retiredAt: number, removeAfter: number): void {
    this.db.update(signingKeys).set({ retiredAt, removeAfter }).where(eq(signingKeys.kid, kid)).run();
  }

  updateSigningKeyCiphertext(kid: string, privateJwe: string): void {
    this.db.update(signingKeys).set({ privateJwe }).where(eq(signingKeys.kid, kid)).run();
  }

  allSigningKeys(): SigningKeyRow[] {
    return this.db.select().from(signingKeys).orderBy(asc(signingKeys.createdAt)).all();
  }

  /**
   * Runs `fn` in an immediate (write-locked) transaction: for read-then-write decisions that
   * several processes on one database must agree on.
   */
  exclusive<T>(fn: (store: Store) => T): T {
    // A transaction answers the same queries as the database; Store only uses those.
    return this.db.transaction((tx) => fn(new Store(tx as Db)), { behavior: 'immediate' });
  }
}
