/**
 * Deputy's tables for PostgreSQL: a twin of src/db/schema.ts, the SQLite schema, which stays the
 * one the store is written and type-checked against. On PostgreSQL the store is handed these
 * tables instead, so they must mirror schema.ts exactly: the same exports, property names, SQL
 * table, column and index names, keys, foreign keys and defaults, and the same row types. Change
 * both files together (and run `npm run db:generate`); the check at the end of this file fails
 * the type check when the row types or the names drift apart.
 *
 * Mapping: SQLite integer times (Unix seconds, or milliseconds where the name says Ms) are
 * bigint in number mode, so they outlive 2038 and hold milliseconds; integer booleans are
 * boolean; JSON text is jsonb; text is text.
 */
import { sql } from 'drizzle-orm';
import { bigint, boolean, customType, index, pgTable, primaryKey, text, type PgTable } from 'drizzle-orm/pg-core';
import type { SQLiteTable } from 'drizzle-orm/sqlite-core';
import type * as pg from './schema-pg.ts';
import type * as sqlite from './schema.ts';
import type { DelegationMode, EventDialect, EventState, TokenEndpointAuthMethod } from './schema.ts';

/**
 * SQLite's `(unixepoch())`: whole seconds, truncated. `extract(epoch ...)` is numeric with a
 * fraction and a plain `::bigint` cast rounds it, which could stamp a row up to half a second
 * in the future, so floor it first.
 */
const now = sql`floor(extract(epoch from now()))::bigint`;

/**
 * jsonb, whose strings cannot hold U+0000 or a lone surrogate (PostgreSQL refuses the whole
 * value): such a character, which SQLite would keep, is stored as U+FFFD, as index.ts does for
 * text. Keys too: a service's metadata is anyone's JSON.
 */
const jsonb = customType<{ data: unknown; driverData: unknown }>({
  dataType: () => 'jsonb',
  toDriver: (value) => JSON.stringify(storable(value)),
});

function storable(value: unknown): unknown {
  if (typeof value === 'string') return value.toWellFormed().replaceAll('\u0000', '\uFFFD');
  if (Array.isArray(value)) return value.map(storable);
  if (value !== null && typeof value === 'object' && !(value instanceof Date)) {
    return Object.fromEntries(Object.entries(value).map(([key, member]) => [storable(key) as string, storable(member)]));
  }
  return value;
}

/** A person. `id` is the opaque, stable `sub` Deputy asserts to services. */
export const users = pgTable('users', {
  id: text('id').primaryKey(),
  email: text('email'),
  emailVerified: boolean('email_verified').notNull().default(false),
  name: text('name'),
  phoneNumber: text('phone_number'),
  phoneNumberVerified: boolean('phone_number_verified').notNull().default(false),
  /** JSON array of strings, as the upstream reported it at the last sign-in. */
  amr: jsonb('amr').$type<string[]>(),
  acr: text('acr'),
  authTime: bigint('auth_time', { mode: 'number' }),
  createdAt: bigint('created_at', { mode: 'number' }).notNull().default(now),
  updatedAt: bigint('updated_at', { mode: 'number' }).notNull().default(now),
  /** Set by `deputy users remove`: the row stays for the audit trail, nothing else uses it. */
  removedAt: bigint('removed_at', { mode: 'number' }),
});

/** Which upstream account a user signs in with; (issuer, subject) is the upstream identity. */
export const upstreamIdentities = pgTable(
  'upstream_identities',
  {
    issuer: text('issuer').notNull(),
    subject: text('subject').notNull(),
    userId: text('user_id')
      .notNull()
      .references(() => users.id, { onDelete: 'cascade' }),
    createdAt: bigint('created_at', { mode: 'number' }).notNull().default(now),
  },
  (t) => [primaryKey({ columns: [t.issuer, t.subject] }), index('upstream_identities_user').on(t.userId)],
);

/** Browser sessions. The cookie carries a random id; only its SHA-256 is stored. */
export const sessions = pgTable(
  'sessions',
  {
    idHash: text('id_hash').primaryKey(),
    userId: text('user_id')
      .notNull()
      .references(() => users.id, { onDelete: 'cascade' }),
    createdAt: bigint('created_at', { mode: 'number' }).notNull().default(now),
    expiresAt: bigint('expires_at', { mode: 'number' }).notNull(),
  },
  (t) => [index('sessions_user').on(t.userId), index('sessions_expiry').on(t.expiresAt)],
);

/** A sign-in in progress, keyed by the hash of `state`; the callback deletes it as it reads it. */
export const loginAttempts = pgTable(
  'login_attempts',
  {
    stateHash: text('state_hash').primaryKey(),
    nonce: text('nonce').notNull(),
    codeVerifier: text('code_verifier').notNull(),
    returnTo: text('return_to').notNull(),
    expiresAt: bigint('expires_at', { mode: 'number' }).notNull(),
  },
  (t) => [index('login_attempts_expiry').on(t.expiresAt)],
);

/** Registered agents: Deputy's OAuth clients. */
export const agents = pgTable('agents', {
  clientId: text('client_id').primaryKey(),
  name: text('name').notNull(),
  logoUri: text('logo_uri'),
  redirectUris: jsonb('redirect_uris').$type<string[]>().notNull(),
  tokenEndpointAuthMethod: text('token_endpoint_auth_method').$type<TokenEndpointAuthMethod>().notNull(),
  /** SHA-256 (hex) of the client secret; null for private_key_jwt agents. */
  secretHash: text('secret_hash'),
  /** A public JWK Set for private_key_jwt, or null. */
  jwks: jsonb('jwks').$type<{ keys: Record<string, unknown>[] }>(),
  jwksUri: text('jwks_uri'),
  /** Audiences this agent may ever get ID-JAGs for; null means any the user approves. */
  allowedAudiences: jsonb('allowed_audiences').$type<string[]>(),
  createdAt: bigint('created_at', { mode: 'number' }).notNull().default(now),
  /** Set by `deputy agents remove`: kept for the audit trail; the client id is never reused. */
  removedAt: bigint('removed_at', { mode: 'number' }),
});

/** The agent's client id at a given service, when an administrator mapped one. */
export const agentServiceClientIds = pgTable(
  'agent_service_client_ids',
  {
    agentClientId: text('agent_client_id')
      .notNull()
      .references(() => agents.clientId, { onDelete: 'cascade' }),
    audience: text('audience').notNull(),
    clientId: text('client_id').notNull(),
  },
  (t) => [primaryKey({ columns: [t.agentClientId, t.audience] })],
);

/** oidc-provider's stored models, one row per (model, id). */
export const oidcModels = pgTable(
  'oidc_models',
  {
    model: text('model').notNull(),
    id: text('id').notNull(),
    payload: jsonb('payload').$type<Record<string, unknown>>().notNull(),
    grantId: text('grant_id'),
    userCode: text('user_code'),
    uid: text('uid'),
    expiresAt: bigint('expires_at', { mode: 'number' }),
    consumedAt: bigint('consumed_at', { mode: 'number' }),
  },
  (t) => [
    primaryKey({ columns: [t.model, t.id] }),
    index('oidc_models_grant').on(t.grantId),
    index('oidc_models_user_code').on(t.model, t.userCode),
    index('oidc_models_uid').on(t.model, t.uid),
    index('oidc_models_expiry').on(t.expiresAt),
  ],
);

/** Client assertion `jti`s already used, kept until the assertion expires. */
export const clientAssertionJtis = pgTable(
  'client_assertion_jtis',
  {
    clientId: text('client_id').notNull(),
    jti: text('jti').notNull(),
    expiresAt: bigint('expires_at', { mode: 'number' }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.clientId, t.jti] }), index('client_assertion_jtis_expiry').on(t.expiresAt)],
);

/** "Agent A acts for user U": made when U approves A, ended by a disconnect. */
export const connections = pgTable(
  'connections',
  {
    id: text('id').primaryKey(),
    userId: text('user_id')
      .notNull()
      .references(() => users.id, { onDelete: 'cascade' }),
    agentClientId: text('agent_client_id')
      .notNull()
      .references(() => agents.clientId, { onDelete: 'cascade' }),
    /** The oidc-provider grant that holds the agent's tokens for this user. */
    grantId: text('grant_id'),
    scope: text('scope').notNull(),
    createdAt: bigint('created_at', { mode: 'number' }).notNull().default(now),
    lastConnectedAt: bigint('last_connected_at', { mode: 'number' }).notNull().default(now),
    disconnectedAt: bigint('disconnected_at', { mode: 'number' }),
  },
  (t) => [
    index('connections_user').on(t.userId),
    index('connections_user_agent').on(t.userId, t.agentClientId),
    index('connections_grant').on(t.grantId),
  ],
);

/** "Agent A may assert U's identity to service S". */
export const delegations = pgTable(
  'delegations',
  {
    id: text('id').primaryKey(),
    userId: text('user_id')
      .notNull()
      .references(() => users.id, { onDelete: 'cascade' }),
    agentClientId: text('agent_client_id')
      .notNull()
      .references(() => agents.clientId, { onDelete: 'cascade' }),
    audience: text('audience').notNull(),
    resources: jsonb('resources').$type<string[]>().notNull(),
    /** Space-separated scopes the person approved; empty for none. */
    scope: text('scope').notNull(),
    mode: text('mode').$type<DelegationMode>().notNull(),
    expiresAt: bigint('expires_at', { mode: 'number' }),
    serviceName: text('service_name'),
    serviceLogoUri: text('service_logo_uri'),
    /** The service's agent_auth block as discovered, for revocation delivery. */
    serviceAgentAuth: jsonb('service_agent_auth').$type<Record<string, unknown>>(),
    uses: bigint('uses', { mode: 'number' }).notNull().default(0),
    lastUsedAt: bigint('last_used_at', { mode: 'number' }),
    consumedAt: bigint('consumed_at', { mode: 'number' }),
    revokedAt: bigint('revoked_at', { mode: 'number' }),
    createdAt: bigint('created_at', { mode: 'number' }).notNull().default(now),
  },
  (t) => [
    // The mint's lookup: the newest delegation for (user, agent, audience), straight from the index.
    index('delegations_lookup').on(t.userId, t.agentClientId, t.audience, t.createdAt),
    index('delegations_user').on(t.userId, t.createdAt),
  ],
);

/** A mint that found no delegation, which only the user it names may approve, once. */
export const consentRequests = pgTable(
  'consent_requests',
  {
    id: text('id').primaryKey(),
    userId: text('user_id')
      .notNull()
      .references(() => users.id, { onDelete: 'cascade' }),
    agentClientId: text('agent_client_id')
      .notNull()
      .references(() => agents.clientId, { onDelete: 'cascade' }),
    audience: text('audience').notNull(),
    resources: jsonb('resources').$type<string[]>().notNull(),
    scope: text('scope').notNull(),
    createdAt: bigint('created_at', { mode: 'number' }).notNull().default(now),
    expiresAt: bigint('expires_at', { mode: 'number' }).notNull(),
    /** 'approved' or 'denied' once the person answered. */
    outcome: text('outcome'),
    delegationId: text('delegation_id'),
  },
  (t) => [
    index('consent_requests_expiry').on(t.expiresAt),
    index('consent_requests_open').on(t.userId, t.agentClientId, t.audience),
  ],
);

/** The audit trail: one row per minted ID-JAG. The JWT itself is never stored. */
export const assertions = pgTable(
  'assertions',
  {
    jti: text('jti').primaryKey(),
    delegationId: text('delegation_id')
      .notNull()
      .references(() => delegations.id, { onDelete: 'cascade' }),
    userId: text('user_id').notNull(),
    agentClientId: text('agent_client_id').notNull(),
    audience: text('audience').notNull(),
    resources: jsonb('resources').$type<string[]>().notNull(),
    scope: text('scope').notNull(),
    kid: text('kid').notNull(),
    issuedAt: bigint('issued_at', { mode: 'number' }).notNull(),
    expiresAt: bigint('expires_at', { mode: 'number' }).notNull(),
  },
  (t) => [index('assertions_delegation').on(t.delegationId, t.issuedAt)],
);

/** Signing keys; the private JWK is stored only as a JWE. */
export const signingKeys = pgTable(
  'signing_keys',
  {
    kid: text('kid').primaryKey(),
    alg: text('alg').notNull(),
    publicJwk: jsonb('public_jwk').$type<Record<string, unknown>>().notNull(),
    privateJwe: text('private_jwe').notNull(),
    createdAt: bigint('created_at', { mode: 'number' }).notNull(),
    activatesAt: bigint('activates_at', { mode: 'number' }).notNull(),
    retiredAt: bigint('retired_at', { mode: 'number' }),
    removeAfter: bigint('remove_after', { mode: 'number' }),
  },
  (t) => [index('signing_keys_activation').on(t.activatesAt)],
);

/** What each service published, as discovered, keyed by its audience. */
export const services = pgTable('services', {
  audience: text('audience').primaryKey(),
  metadata: jsonb('metadata').$type<Record<string, unknown>>().notNull(),
  fetchedAt: bigint('fetched_at', { mode: 'number' }).notNull(),
  expiresAt: bigint('expires_at', { mode: 'number' }).notNull(),
});

/** The revocation outbox: one row per service to tell, written with the revocation. */
export const revocationEvents = pgTable(
  'revocation_events',
  {
    id: text('id').primaryKey(),
    delegationId: text('delegation_id').notNull(),
    userId: text('user_id').notNull(),
    agentClientId: text('agent_client_id').notNull(),
    audience: text('audience').notNull(),
    dialect: text('dialect').$type<EventDialect>().notNull(),
    endpoint: text('endpoint').notNull(),
    eventUri: text('event_uri').notNull(),
    state: text('state').$type<EventState>().notNull(),
    attempts: bigint('attempts', { mode: 'number' }).notNull().default(0),
    /** Milliseconds since the epoch: retries can be sooner than a second apart. */
    nextAttemptMs: bigint('next_attempt_ms', { mode: 'number' }).notNull(),
    /** A worker that claimed the row holds it until then (ms). */
    leaseUntilMs: bigint('lease_until_ms', { mode: 'number' }),
    lastError: text('last_error'),
    createdAt: bigint('created_at', { mode: 'number' }).notNull(),
    deliveredAt: bigint('delivered_at', { mode: 'number' }),
  },
  (t) => [
    index('revocation_events_due').on(t.state, t.nextAttemptMs),
    index('revocation_events_delegation').on(t.delegationId),
    index('revocation_events_created').on(t.createdAt),
  ],
);

// ---------------------------------------------------------------------------------------------
// The mirror check, types only. For every table schema.ts exports, this file must export one
// under the same name, with the same SQL table name, the same column properties with the same
// SQL column names, and exactly the same $inferSelect and $inferInsert; and it must export no
// table schema.ts lacks. A difference fails `tsc` here, naming the table and what differs.

/** True only when A and B are the same type (not merely assignable one way). */
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;

type TablesOf<M, Base> = { [K in keyof M as M[K] extends Base ? K : never]: M[K] };
type SqliteTables = TablesOf<typeof sqlite, SQLiteTable>;
type PgTables = TablesOf<typeof pg, PgTable>;

/** Each column property's SQL name. */
type ColumnNames<T extends SQLiteTable | PgTable> = { [C in keyof T['_']['columns']]: T['_']['columns'][C]['_']['name'] };

type TableMismatch<S extends SQLiteTable, P extends PgTable, K extends string> =
  Equal<S['_']['name'], P['_']['name']> extends false
    ? `${K}: SQL table name differs`
    : Equal<ColumnNames<S>, ColumnNames<P>> extends false
      ? `${K}: column properties or SQL column names differ`
      : Equal<S['$inferSelect'], P['$inferSelect']> extends false
        ? `${K}: $inferSelect differs`
        : Equal<S['$inferInsert'], P['$inferInsert']> extends false
          ? `${K}: $inferInsert differs`
          : never;

type Mismatches =
  | {
      [K in keyof SqliteTables & string]: K extends keyof PgTables
        ? TableMismatch<SqliteTables[K], PgTables[K], K>
        : `${K}: missing from schema-pg.ts`;
    }[keyof SqliteTables & string]
  | Exclude<keyof PgTables & string, keyof SqliteTables>;

type Assert<T extends never> = T;
/** `never` when the two schemas agree; exported only so the check is not an unused local. */
export type SchemaMismatches = Assert<Mismatches>;
