/**
 * Deputy's tables. Times are Unix seconds. Secrets are stored only as hashes (session ids,
 * login states, agent secrets) or encrypted (private keys).
 */
import { sql } from 'drizzle-orm';
import { index, integer, primaryKey, sqliteTable, text } from 'drizzle-orm/sqlite-core';

const now = sql`(unixepoch())`;

/** A person. `id` is the opaque, stable `sub` Deputy asserts to services. */
export const users = sqliteTable('users', {
  id: text('id').primaryKey(),
  email: text('email'),
  emailVerified: integer('email_verified', { mode: 'boolean' }).notNull().default(false),
  name: text('name'),
  phoneNumber: text('phone_number'),
  phoneNumberVerified: integer('phone_number_verified', { mode: 'boolean' }).notNull().default(false),
  /** JSON array of strings, as the upstream reported it at the last sign-in. */
  amr: text('amr', { mode: 'json' }).$type<string[]>(),
  acr: text('acr'),
  authTime: integer('auth_time'),
  createdAt: integer('created_at').notNull().default(now),
  updatedAt: integer('updated_at').notNull().default(now),
  /** Set by `deputy users remove`: the row stays for the audit trail, nothing else uses it. */
  removedAt: integer('removed_at'),
});

/** Which upstream account a user signs in with; (issuer, subject) is the upstream identity. */
export const upstreamIdentities = sqliteTable(
  'upstream_identities',
  {
    issuer: text('issuer').notNull(),
    subject: text('subject').notNull(),
    userId: text('user_id')
      .notNull()
      .references(() => users.id, { onDelete: 'cascade' }),
    createdAt: integer('created_at').notNull().default(now),
  },
  (t) => [primaryKey({ columns: [t.issuer, t.subject] }), index('upstream_identities_user').on(t.userId)],
);

/** Browser sessions. The cookie carries a random id; only its SHA-256 is stored. */
export const sessions = sqliteTable(
  'sessions',
  {
    idHash: text('id_hash').primaryKey(),
    userId: text('user_id')
      .notNull()
      .references(() => users.id, { onDelete: 'cascade' }),
    createdAt: integer('created_at').notNull().default(now),
    expiresAt: integer('expires_at').notNull(),
  },
  (t) => [index('sessions_user').on(t.userId), index('sessions_expiry').on(t.expiresAt)],
);

/**
 * A sign-in in progress: what the callback needs to finish it. Keyed by the hash of `state`;
 * the callback deletes the row as it reads it, so a replayed callback finds nothing.
 */
export const loginAttempts = sqliteTable(
  'login_attempts',
  {
    stateHash: text('state_hash').primaryKey(),
    nonce: text('nonce').notNull(),
    codeVerifier: text('code_verifier').notNull(),
    returnTo: text('return_to').notNull(),
    expiresAt: integer('expires_at').notNull(),
  },
  (t) => [index('login_attempts_expiry').on(t.expiresAt)],
);

export type TokenEndpointAuthMethod =
  | 'client_secret_basic'
  | 'client_secret_post'
  | 'private_key_jwt'
  | 'none';

/** Registered agents: Deputy's OAuth clients. */
export const agents = sqliteTable('agents', {
  clientId: text('client_id').primaryKey(),
  name: text('name').notNull(),
  logoUri: text('logo_uri'),
  redirectUris: text('redirect_uris', { mode: 'json' }).$type<string[]>().notNull(),
  tokenEndpointAuthMethod: text('token_endpoint_auth_method').$type<TokenEndpointAuthMethod>().notNull(),
  /** SHA-256 (hex) of the client secret; null for private_key_jwt agents. */
  secretHash: text('secret_hash'),
  /** A public JWK Set (JSON) for private_key_jwt, or null. */
  jwks: text('jwks', { mode: 'json' }).$type<{ keys: Record<string, unknown>[] }>(),
  jwksUri: text('jwks_uri'),
  /** Audiences this agent may ever get ID-JAGs for; null means any the user approves. */
  allowedAudiences: text('allowed_audiences', { mode: 'json' }).$type<string[]>(),
  createdAt: integer('created_at').notNull().default(now),
  /** Set by `deputy agents remove`: kept for the audit trail; the client id is never reused. */
  removedAt: integer('removed_at'),
});

/**
 * The agent's client id at a given service, when an administrator mapped one: the ID-JAG's
 * `client_id` then names it (DESIGN 2.4 step 7, SPEC 1.3).
 */
export const agentServiceClientIds = sqliteTable(
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

/**
 * oidc-provider's stored models (sessions, grants, codes, tokens, interactions, device codes),
 * one row per (model, id), as the adapter interface wants them.
 */
export const oidcModels = sqliteTable(
  'oidc_models',
  {
    model: text('model').notNull(),
    id: text('id').notNull(),
    payload: text('payload', { mode: 'json' }).$type<Record<string, unknown>>().notNull(),
    grantId: text('grant_id'),
    userCode: text('user_code'),
    uid: text('uid'),
    expiresAt: integer('expires_at'),
    consumedAt: integer('consumed_at'),
  },
  (t) => [
    primaryKey({ columns: [t.model, t.id] }),
    index('oidc_models_grant').on(t.grantId),
    index('oidc_models_user_code').on(t.model, t.userCode),
    index('oidc_models_uid').on(t.model, t.uid),
    index('oidc_models_expiry').on(t.expiresAt),
  ],
);

/** Client assertion `jti`s already used, kept until the assertion expires (SPEC 4.1). */
export const clientAssertionJtis = sqliteTable(
  'client_assertion_jtis',
  {
    clientId: text('client_id').notNull(),
    jti: text('jti').notNull(),
    expiresAt: integer('expires_at').notNull(),
  },
  (t) => [primaryKey({ columns: [t.clientId, t.jti] }), index('client_assertion_jtis_expiry').on(t.expiresAt)],
);

/** "Agent A acts for user U": made when U approves A, ended by a disconnect. */
export const connections = sqliteTable(
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
    createdAt: integer('created_at').notNull().default(now),
    lastConnectedAt: integer('last_connected_at').notNull().default(now),
    disconnectedAt: integer('disconnected_at'),
  },
  (t) => [
    index('connections_user').on(t.userId),
    index('connections_user_agent').on(t.userId, t.agentClientId),
    index('connections_grant').on(t.grantId),
  ],
);

export type DelegationMode = 'once' | 'always';

/**
 * "Agent A may assert U's identity to service S". `audience` is the service's authorization
 * server issuer, compared as a string. The service fields are a snapshot of what the service
 * published when the person approved.
 */
export const delegations = sqliteTable(
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
    resources: text('resources', { mode: 'json' }).$type<string[]>().notNull(),
    /** Space-separated scopes the person approved; empty for none. */
    scope: text('scope').notNull(),
    mode: text('mode').$type<DelegationMode>().notNull(),
    expiresAt: integer('expires_at'),
    serviceName: text('service_name'),
    serviceLogoUri: text('service_logo_uri'),
    /** The service's agent_auth block as discovered, for revocation delivery. */
    serviceAgentAuth: text('service_agent_auth', { mode: 'json' }).$type<Record<string, unknown>>(),
    uses: integer('uses').notNull().default(0),
    lastUsedAt: integer('last_used_at'),
    consumedAt: integer('consumed_at'),
    revokedAt: integer('revoked_at'),
    createdAt: integer('created_at').notNull().default(now),
  },
  (t) => [
    // The mint's lookup: the newest delegation for (user, agent, audience), straight from the index.
    index('delegations_lookup').on(t.userId, t.agentClientId, t.audience, t.createdAt),
    index('delegations_user').on(t.userId, t.createdAt),
  ],
);

/**
 * A mint that found no delegation: the `consent_uri` of its `consent_required` answer points
 * here. Only the user it names may approve it, once, before it expires.
 */
export const consentRequests = sqliteTable(
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
    resources: text('resources', { mode: 'json' }).$type<string[]>().notNull(),
    scope: text('scope').notNull(),
    createdAt: integer('created_at').notNull().default(now),
    expiresAt: integer('expires_at').notNull(),
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
export const assertions = sqliteTable(
  'assertions',
  {
    jti: text('jti').primaryKey(),
    delegationId: text('delegation_id')
      .notNull()
      .references(() => delegations.id, { onDelete: 'cascade' }),
    userId: text('user_id').notNull(),
    agentClientId: text('agent_client_id').notNull(),
    audience: text('audience').notNull(),
    resources: text('resources', { mode: 'json' }).$type<string[]>().notNull(),
    scope: text('scope').notNull(),
    kid: text('kid').notNull(),
    issuedAt: integer('issued_at').notNull(),
    expiresAt: integer('expires_at').notNull(),
  },
  (t) => [
    index('assertions_delegation').on(t.delegationId, t.issuedAt),
  ],
);

/**
 * Signing keys. The private JWK is stored only as a JWE encrypted under a key derived from
 * DEPUTY_SECRET. `activatesAt` is when the key may start signing (it is published from
 * `createdAt`); `retiredAt` is when it stopped; `removeAfter` is when it leaves the JWKS.
 */
export const signingKeys = sqliteTable(
  'signing_keys',
  {
    kid: text('kid').primaryKey(),
    alg: text('alg').notNull(),
    publicJwk: text('public_jwk', { mode: 'json' }).$type<Record<string, unknown>>().notNull(),
    privateJwe: text('private_jwe').notNull(),
    createdAt: integer('created_at').notNull(),
    activatesAt: integer('activates_at').notNull(),
    retiredAt: integer('retired_at'),
    removeAfter: integer('remove_after'),
  },
  (t) => [index('signing_keys_activation').on(t.activatesAt)],
);

/**
 * What each service published, as discovered (DESIGN 2.3), keyed by its audience: shown to
 * people before they approve, and reused until `expiresAt` (from the service's cache headers,
 * clamped).
 */
export const services = sqliteTable('services', {
  audience: text('audience').primaryKey(),
  metadata: text('metadata', { mode: 'json' }).$type<Record<string, unknown>>().notNull(),
  fetchedAt: integer('fetched_at').notNull(),
  expiresAt: integer('expires_at').notNull(),
});

export type EventDialect = 'secevent' | 'logout';
export type EventState = 'pending' | 'delivered' | 'failed';

/**
 * The revocation outbox (DESIGN 2.5): one row per service to tell, written in the same
 * transaction as the revocation. Everything delivery needs is copied here, so the row stands on
 * its own whatever happens to the delegation, agent or user afterwards.
 */
export const revocationEvents = sqliteTable(
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
    attempts: integer('attempts').notNull().default(0),
    /** Milliseconds since the epoch: retries can be sooner than a second apart. */
    nextAttemptMs: integer('next_attempt_ms').notNull(),
    /** A worker that claimed the row holds it until then (ms); an expired lease is up for grabs. */
    leaseUntilMs: integer('lease_until_ms'),
    lastError: text('last_error'),
    createdAt: integer('created_at').notNull(),
    deliveredAt: integer('delivered_at'),
  },
  (t) => [
    index('revocation_events_due').on(t.state, t.nextAttemptMs),
    index('revocation_events_delegation').on(t.delegationId),
    index('revocation_events_created').on(t.createdAt),
  ],
);
