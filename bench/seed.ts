/**
 * The seeded rows of bench/mint.ts: users, agents and delegations inserted straight into the
 * database, the same rows on SQLite (prepared statements on a second connection to the file)
 * and on PostgreSQL (batched `insert … select from unnest(…)` on a plain pg client).
 *
 * `count` delegations are spread over count/4 users, up to 1,000 agents and 1,000 audiences,
 * each 'always', with service snapshots and use counts like real ones. Ids are derived from a
 * hash of the row number, so they look like Deputy's (prefix and 22 base64url characters) and
 * land at random places in the indexes, and no more than one batch is kept in memory.
 */
import { createHash } from 'node:crypto';
import type Database from 'better-sqlite3';
import type pg from 'pg';

/** Services the seeded delegations point at. */
export const SEEDED_AUDIENCES = 1000;
/** Seeded delegations per seeded person. */
const DELEGATIONS_PER_USER = 4;
/** Rows per seeding transaction on SQLite. */
const SEED_BATCH = 250_000;
/** Rows per statement on PostgreSQL. */
const PG_BATCH = 10_000;
const EVENTS_SUPPORTED = ['https://schemas.workos.com/events/agent/identity/assertion/revoked'];

export interface Seeded {
  users: number;
  agents: number;
  delegations: number;
}

type AgentRow = [clientId: string, name: string, logoUri: string, secretHash: string, createdAt: number];
type UserRow = [id: string, email: string, name: string, authTime: number, createdAt: number, updatedAt: number];
type DelegationRow = [
  id: string,
  userId: string,
  agentClientId: string,
  audience: string,
  resources: string,
  scope: string,
  serviceName: string,
  serviceLogoUri: string,
  serviceAgentAuth: string,
  uses: number,
  lastUsedAt: number | null,
  createdAt: number,
];

/** What to insert, row by row, computed from the row number alone. */
function plan(count: number) {
  const users = Math.ceil(count / DELEGATIONS_PER_USER);
  const agents = Math.min(1000, Math.max(10, Math.ceil(count / 1000)));
  const now = Math.floor(Date.now() / 1000);
  const year = 365 * 86400;
  const userCreated = (u: number) => now - ((u * 7919) % year);
  const id = (prefix: string, n: number) =>
    `${prefix}_${createHash('sha256').update(`${prefix}${n}`).digest('base64url').slice(0, 22)}`;
  const agentIds = Array.from({ length: agents }, (_, a) => id('agt', a));

  const agentRow = (a: number): AgentRow => [
    agentIds[a] as string,
    `Seeded Agent ${a}`,
    `https://agent-${a}.example/logo.png`,
    createHash('sha256').update(`secret${a}`).digest('hex'),
    now - year,
  ];
  const userRow = (u: number): UserRow => {
    const createdAt = userCreated(u);
    return [id('usr', u), `person-${u}@example.com`, `Person ${u}`, createdAt, createdAt, createdAt];
  };
  /** The user's k-th delegation, or undefined past `count`. */
  const delegationRow = (u: number, k: number): DelegationRow | undefined => {
    const i = u * DELEGATIONS_PER_USER + k;
    if (i >= count) return undefined;
    const userCreatedAt = userCreated(u);
    const s = ((u * 31 + k * 17) % SEEDED_AUDIENCES) + 1;
    const audience = `https://service-${s}.example`;
    const createdAt = userCreatedAt + ((i * 104729) % (now - userCreatedAt + 1));
    const uses = i % 50;
    return [
      id('dlg', i),
      id('usr', u),
      agentIds[(u * 7 + k * 13) % agents] as string,
      audience,
      JSON.stringify([`${audience}/api`]),
      k % 2 === 0 ? 'read' : 'read write',
      `Service ${s}`,
      `${audience}/logo.png`,
      JSON.stringify({ eventsEndpoint: `${audience}/agent/events`, eventsSupported: EVENTS_SUPPORTED }),
      uses,
      uses === 0 ? null : createdAt + ((i * 13) % (now - createdAt + 1)),
      createdAt,
    ];
  };
  return { users, agents, agentRow, userRow, delegationRow };
}

/** Seeds a SQLite database (migrated, foreign keys on), one prepared statement per table. */
export function seedSqlite(db: Database.Database, count: number): Seeded {
  const p = plan(count);
  const insertUser = db.prepare(
    `insert into users (id, email, email_verified, name, amr, auth_time, created_at, updated_at)
     values (?, ?, 1, ?, '["pwd"]', ?, ?, ?)`,
  );
  const insertAgent = db.prepare(
    `insert into agents (client_id, name, logo_uri, redirect_uris, token_endpoint_auth_method, secret_hash, created_at)
     values (?, ?, ?, '[]', 'client_secret_basic', ?, ?)`,
  );
  const insertDelegation = db.prepare(
    `insert into delegations (id, user_id, agent_client_id, audience, resources, scope, mode, expires_at,
       service_name, service_logo_uri, service_agent_auth, uses, last_used_at, created_at)
     values (?, ?, ?, ?, ?, ?, 'always', null, ?, ?, ?, ?, ?, ?)`,
  );

  db.transaction(() => {
    for (let a = 0; a < p.agents; a += 1) insertAgent.run(...p.agentRow(a));
  })();

  const userBatch = db.transaction((from: number, to: number) => {
    for (let u = from; u < to; u += 1) insertUser.run(...p.userRow(u));
  });
  for (let from = 0; from < p.users; from += SEED_BATCH) userBatch(from, Math.min(p.users, from + SEED_BATCH));

  const delegationBatch = db.transaction((from: number, to: number) => {
    for (let u = from; u < to; u += 1) {
      for (let k = 0; k < DELEGATIONS_PER_USER; k += 1) {
        const row = p.delegationRow(u, k);
        if (row === undefined) return;
        insertDelegation.run(...row);
      }
    }
  });
  const usersPerBatch = SEED_BATCH / DELEGATIONS_PER_USER;
  for (let from = 0; from < p.users; from += usersPerBatch) delegationBatch(from, Math.min(p.users, from + usersPerBatch));

  return { users: p.users, agents: p.agents, delegations: count };
}

/** Column arrays of a batch of rows, for `unnest`. */
function columns<R extends unknown[]>(rows: R[], width: number): unknown[][] {
  return Array.from({ length: width }, (_, c) => rows.map((row) => row[c]));
}

/**
 * Seeds a migrated PostgreSQL database with the same rows, one transaction, `PG_BATCH` rows per
 * statement, then ANALYZE so the planner knows the tables as it would a live database's.
 */
export async function seedPostgres(client: pg.Client, count: number): Promise<Seeded> {
  const p = plan(count);
  await client.query('begin');
  try {
    const agentRows = Array.from({ length: p.agents }, (_, a) => p.agentRow(a));
    await client.query(
      `insert into agents (client_id, name, logo_uri, redirect_uris, token_endpoint_auth_method, secret_hash, created_at)
       select client_id, name, logo_uri, '[]'::jsonb, 'client_secret_basic', secret_hash, created_at
       from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
         as r(client_id, name, logo_uri, secret_hash, created_at)`,
      columns(agentRows, 5),
    );

    for (let from = 0; from < p.users; from += PG_BATCH) {
      const rows: UserRow[] = [];
      for (let u = from; u < Math.min(p.users, from + PG_BATCH); u += 1) rows.push(p.userRow(u));
      await client.query(
        `insert into users (id, email, email_verified, name, amr, auth_time, created_at, updated_at)
         select id, email, true, name, '["pwd"]'::jsonb, auth_time, created_at, updated_at
         from unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[])
           as r(id, email, name, auth_time, created_at, updated_at)`,
        columns(rows, 6),
      );
    }

    const usersPerBatch = PG_BATCH / DELEGATIONS_PER_USER;
    for (let from = 0; from < p.users; from += usersPerBatch) {
      const rows: DelegationRow[] = [];
      for (let u = from; u < Math.min(p.users, from + usersPerBatch); u += 1) {
        for (let k = 0; k < DELEGATIONS_PER_USER; k += 1) {
          const row = p.delegationRow(u, k);
          if (row !== undefined) rows.push(row);
        }
      }
      await client.query(
        `insert into delegations (id, user_id, agent_client_id, audience, resources, scope, mode, expires_at,
           service_name, service_logo_uri, service_agent_auth, uses, last_used_at, created_at)
         select id, user_id, agent_client_id, audience, resources::jsonb, scope, 'always', null,
           service_name, service_logo_uri, service_agent_auth::jsonb, uses, last_used_at, created_at
         from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
             $8::text[], $9::text[], $10::bigint[], $11::bigint[], $12::bigint[])
           as r(id, user_id, agent_client_id, audience, resources, scope, service_name, service_logo_uri,
             service_agent_auth, uses, last_used_at, created_at)`,
        columns(rows, 12),
      );
    }
    await client.query('commit');
  } catch (error) {
    await client.query('rollback').catch(() => undefined);
    throw error;
  }
  await client.query('analyze users, agents, delegations');
  return { users: p.users, agents: p.agents, delegations: count };
}
