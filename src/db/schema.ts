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

export type TokenEndpointAuthMethod = 'client_secret_basic' | 'client_secret_post' | 'private_key_jwt';

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
  createdAt: integer('created_at').notNull().default(now),
});

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
