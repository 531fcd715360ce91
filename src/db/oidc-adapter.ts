/**
 * oidc-provider's storage in Deputy's database. One adapter class serves every model: `Client` reads the
 * agent registry; everything else (sessions, grants, codes, tokens, interactions, device codes)
 * is a row of `oidc_models` keyed by (model, id), with the secondary lookups the interface
 * needs (grant id, user code, uid) on indexes.
 */
import { and, eq, isNull, lte, sql } from 'drizzle-orm';
import { errors, type Adapter, type AdapterPayload } from 'oidc-provider';
import { grantsAndTokens } from './delegations.ts';
import type { Database } from './index.ts';
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
  database: Database,
  findAgent: (clientId: string) => Promise<Agent | undefined>,
  clientMetadataOf: ClientMetadataOf,
): new (name: string) => Adapter {
  const Models = createModelAdapter(database);
  return class DeputyAdapter extends Models {
    override async find(id: string): Promise<AdapterPayload | undefined> {
      if (this.name !== 'Client') return super.find(id);
      const agent = await findAgent(id);
      return agent === undefined ? undefined : clientMetadataOf(agent);
    }
  };
}

/**
 * An oidc-provider adapter over `oidc_models`, for every model it stores. `prefix` keeps
 * another provider's rows apart (the development sign-in's, under `dev-idp:`).
 */
export function createModelAdapter(database: Database, prefix = '') {
  const { oidcModels } = database.t;
  const byId = database.prepared('oidc_by_id', (db) =>
    db
      .select()
      .from(oidcModels)
      .where(and(eq(oidcModels.model, sql.placeholder('model')), eq(oidcModels.id, sql.placeholder('id')))),
  );
  const byUid = database.prepared('oidc_by_uid', (db) =>
    db
      .select()
      .from(oidcModels)
      .where(and(eq(oidcModels.model, sql.placeholder('model')), eq(oidcModels.uid, sql.placeholder('uid')))),
  );
  const byUserCode = database.prepared('oidc_by_user_code', (db) =>
    db
      .select()
      .from(oidcModels)
      .where(
        and(eq(oidcModels.model, sql.placeholder('model')), eq(oidcModels.userCode, sql.placeholder('userCode'))),
      ),
  );

  function live(row: typeof oidcModels.$inferSelect | undefined): AdapterPayload | undefined {
    if (row === undefined) return undefined;
    if (row.expiresAt !== null && row.expiresAt <= epoch()) return undefined;
    return row.consumedAt === null ? row.payload : { ...row.payload, consumed: row.consumedAt };
  }

  return class DatabaseAdapter implements Adapter {
    /** oidc-provider's name for the model. */
    readonly name: string;
    /** The model as stored: the name, behind the prefix. */
    readonly model: string;
    readonly #hashed: boolean;

    constructor(name: string) {
      this.name = name;
      this.model = `${prefix}${name}`;
      this.#hashed = HASHED_MODELS.has(name);
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
        // Whole seconds: oidc-provider passes what a client chose (a fractional exp) through.
        expiresAt: expiresIn ? epoch() + Math.ceil(expiresIn) : null,
      };
      await database.run((db) =>
        db
          .insert(oidcModels)
          .values({ model: this.model, id: this.#key(id), ...values })
          .onConflictDoUpdate({ target: [oidcModels.model, oidcModels.id], set: values }),
      );
    }

    async find(id: string): Promise<AdapterPayload | undefined> {
      const [row] = await byId({ model: this.model, id: this.#key(id) });
      const found = live(row);
      return found !== undefined && this.#hashed ? { ...found, jti: id } : found;
    }

    async findByUid(uid: string): Promise<AdapterPayload | undefined> {
      return live((await byUid({ model: this.model, uid }))[0]);
    }

    async findByUserCode(userCode: string): Promise<AdapterPayload | undefined> {
      return live((await byUserCode({ model: this.model, userCode }))[0]);
    }

    /**
     * Marks a code or token used, once. oidc-provider reads `consumed` before it calls this,
     * so two requests (in two processes, say) presenting the same code or refresh token at once
     * would both pass its check; only one of them changes the row here. The other is treated
     * as the reuse it is: the grant and its tokens are revoked and the request refused, as
     * oidc-provider does when it sees the reuse itself.
     */
    async consume(id: string): Promise<void> {
      const key = this.#key(id);
      const which = and(eq(oidcModels.model, this.model), eq(oidcModels.id, key));
      const consumed = await database.run((db) =>
        db
          .update(oidcModels)
          .set({ consumedAt: epoch() })
          .where(and(which, isNull(oidcModels.consumedAt)))
          .returning({ id: oidcModels.id }),
      );
      if (consumed.length === 1) return;

      const [row] = await database.run((db) => db.select({ grantId: oidcModels.grantId }).from(oidcModels).where(which));
      const grantId = row?.grantId;
      if (grantId != null) {
        await database.run((db) => db.delete(oidcModels).where(grantsAndTokens(database.t, [grantId], prefix)));
      }
      throw new errors.InvalidGrant(`${this.name === 'RefreshToken' ? 'refresh token' : 'grant'} already used`);
    }

    async destroy(id: string): Promise<void> {
      await database.run((db) =>
        db.delete(oidcModels).where(and(eq(oidcModels.model, this.model), eq(oidcModels.id, this.#key(id)))),
      );
    }

    async revokeByGrantId(grantId: string): Promise<void> {
      await database.run((db) =>
        db.delete(oidcModels).where(and(eq(oidcModels.model, this.model), eq(oidcModels.grantId, grantId))),
      );
    }
  };
}

/** Deletes expired rows; oidc-provider only ever reads live ones. */
export async function purgeExpiredModels(database: Database): Promise<void> {
  const { oidcModels } = database.t;
  await database.run((db) => db.delete(oidcModels).where(lte(oidcModels.expiresAt, epoch())));
}
