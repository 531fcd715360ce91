/**
 * oidc-provider's storage in SQLite. One adapter class serves every model: `Client` reads the
 * agent registry; everything else (sessions, grants, codes, tokens, interactions, device codes)
 * is a row of `oidc_models` keyed by (model, id), with the secondary lookups the interface
 * needs (grant id, user code, uid) on indexes.
 */
import { and, eq, lte, sql } from 'drizzle-orm';
import type { Adapter, AdapterPayload } from 'oidc-provider';
import type { Db } from './index.ts';
import { oidcModels } from './schema.ts';
import { epoch, sha256, type Agent } from './store.ts';

/**
 * Models whose id is itself a bearer credential: the value the agent holds. They are stored
 * under the SHA-256 of that value, and without it in the payload, so a copy of the database
 * holds no usable token; the id is put back from the caller's value when found. Device codes
 * stay as they are: oidc-provider finds them by user code, and needs their id back from the
 * row; they live ten minutes and are useless without the agent's client credentials.
 */
const HASHED_MODELS = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'ClientCredentials']);

/** Turns an agent into the client metadata oidc-provider validates and uses. */
export type ClientMetadataOf = (agent: Agent) => AdapterPayload;

export function createAdapter(
  db: Db,
  findAgent: (clientId: string) => Agent | undefined,
  clientMetadataOf: ClientMetadataOf,
): new (name: string) => Adapter {
  const byId = db
    .select()
    .from(oidcModels)
    .where(and(eq(oidcModels.model, sql.placeholder('model')), eq(oidcModels.id, sql.placeholder('id'))))
    .prepare();
  const byUid = db
    .select()
    .from(oidcModels)
    .where(and(eq(oidcModels.model, sql.placeholder('model')), eq(oidcModels.uid, sql.placeholder('uid'))))
    .prepare();
  const byUserCode = db
    .select()
    .from(oidcModels)
    .where(
      and(eq(oidcModels.model, sql.placeholder('model')), eq(oidcModels.userCode, sql.placeholder('userCode'))),
    )
    .prepare();

  function live(row: typeof oidcModels.$inferSelect | undefined): AdapterPayload | undefined {
    if (row === undefined) return undefined;
    if (row.expiresAt !== null && row.expiresAt <= epoch()) return undefined;
    return row.consumedAt === null ? row.payload : { ...row.payload, consumed: row.consumedAt };
  }

  return class SqliteAdapter implements Adapter {
    readonly model: string;
    readonly #hashed: boolean;

    constructor(model: string) {
      this.model = model;
      this.#hashed = HASHED_MODELS.has(model);
    }

    /** The row's key: the id, or its hash for bearer credentials. */
    #key(id: string): string {
      return this.#hashed ? sha256(id) : id;
    }

    async upsert(id: string, payload: AdapterPayload, expiresIn: number): Promise<void> {
      let stored = payload;
      if (this.#hashed) {
        const { jti: _value, ...rest } = payload;
        stored = rest;
      }
      const values = {
        payload: stored as Record<string, unknown>,
        grantId: payload.grantId ?? null,
        userCode: payload.userCode ?? null,
        uid: payload.uid ?? null,
        expiresAt: expiresIn ? epoch() + expiresIn : null,
      };
      db.insert(oidcModels)
        .values({ model: this.model, id: this.#key(id), ...values })
        .onConflictDoUpdate({ target: [oidcModels.model, oidcModels.id], set: values })
        .run();
    }

    async find(id: string): Promise<AdapterPayload | undefined> {
      if (this.model === 'Client') {
        const agent = findAgent(id);
        return agent === undefined ? undefined : clientMetadataOf(agent);
      }
      const found = live(byId.get({ model: this.model, id: this.#key(id) }));
      return found !== undefined && this.#hashed ? { ...found, jti: id } : found;
    }

    async findByUid(uid: string): Promise<AdapterPayload | undefined> {
      return live(byUid.get({ model: this.model, uid }));
    }

    async findByUserCode(userCode: string): Promise<AdapterPayload | undefined> {
      return live(byUserCode.get({ model: this.model, userCode }));
    }

    async consume(id: string): Promise<void> {
      db.update(oidcModels)
        .set({ consumedAt: epoch() })
        .where(and(eq(oidcModels.model, this.model), eq(oidcModels.id, this.#key(id))))
        .run();
    }

    async destroy(id: string): Promise<void> {
      db.delete(oidcModels)
        .where(and(eq(oidcModels.model, this.model), eq(oidcModels.id, this.#key(id))))
        .run();
    }

    async revokeByGrantId(grantId: string): Promise<void> {
      db.delete(oidcModels)
        .where(and(eq(oidcModels.model, this.model), eq(oidcModels.grantId, grantId)))
        .run();
    }
  };
}

/** Deletes expired rows; oidc-provider only ever reads live ones. */
export function purgeExpiredModels(db: Db): void {
  db.delete(oidcModels).where(lte(oidcModels.expiresAt, epoch())).run();
}
