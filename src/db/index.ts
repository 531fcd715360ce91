/**
 * The database: SQLite (a file, the default) or PostgreSQL (`DEPUTY_DB=postgres://…`, for
 * several processes), behind one interface. The store modules write each query once, with
 * drizzle's query builder, and only ever await it, which both drivers answer alike.
 *
 * Queries are typed against the SQLite tables (schema.ts). On PostgreSQL the same code is handed
 * the tables of schema-pg.ts, whose row types schema-pg.ts checks, at compile time, to be the
 * SQLite ones; so the one cast below changes no type a query returns.
 */
import { closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import SqliteDriver from 'better-sqlite3';
import { sql, type SQL } from 'drizzle-orm';
import { drizzle as drizzleSqlite, type BetterSQLite3Database } from 'drizzle-orm/better-sqlite3';
import { migrate as migrateSqlite } from 'drizzle-orm/better-sqlite3/migrator';
import { drizzle as drizzlePg, type NodePgDatabase } from 'drizzle-orm/node-postgres';
import { migrate as migratePg } from 'drizzle-orm/node-postgres/migrator';
import pg from 'pg';
import { ConfigError, isPostgresUrl } from '../config.ts';
import * as sqliteSchema from './schema.ts';
import * as pgSchema from './schema-pg.ts';

export type Tables = typeof sqliteSchema;
/** What queries are built on: the database, or a transaction on it. */
export type Db = BetterSQLite3Database<Tables>;
export type Dialect = 'sqlite' | 'postgres';

export interface TransactionOptions {
  exclusive?: ExclusiveScope;
}

/** `'all'`, or a kind and an id: `user:usr_…`, `upstream:<issuer> <subject>`, `keys:signing`. */
export type ExclusiveScope = 'all' | `${'user' | 'upstream' | 'keys'}:${string}`;

/** A select built once and run many times with placeholder values (see Database.prepared). */
export interface Preparable<T> {
  prepare(): { all(values?: Record<string, unknown>): T[] };
}

export interface Database {
  readonly dialect: Dialect;
  /** The tables, as this dialect declares them. */
  readonly t: Tables;
  /**
   * Runs queries outside any transaction. On SQLite (one connection) it waits for an open
   * transaction to end, so its statements never run inside someone else's.
   */
  run<T>(fn: (db: Db) => Promise<T>): Promise<T>;
  /**
   * A select prepared once, for the queries every token request makes: building a drizzle
   * query costs more than running it (bench/mint.ts --profile). Outside transactions only: on
   * PostgreSQL it would run beside the transaction, on SQLite wait for it to end. `name`
   * names the statement on PostgreSQL.
   */
  prepared<T>(name: string, build: (db: Db, t: Tables) => Preparable<T>): (values: Record<string, unknown>) => Promise<T[]>;
  /**
   * A statement for inside a transaction, run on the handle `transaction` gave: on SQLite,
   * whose one connection is the transaction's, prepared once; on PostgreSQL built on that
   * handle at each call. For the mint's writes, which run at every token request.
   */
  statement<T>(
    name: string,
    build: (db: Db, t: Tables) => Preparable<T>,
  ): (tx: Db, values: Record<string, unknown>) => Promise<T[]>;
  /** Runs one statement written with drizzle's `sql` template, outside any transaction. */
  execute<T>(query: SQL): Promise<T[]>;
  /**
   * Runs `fn` in a transaction. An `exclusive` one also runs alone among those of its scope,
   * across every process on the database, for read-then-write decisions: `'all'` excludes every
   * exclusive transaction, a scope such as `user:ID` those of the same scope (and `'all'`).
   * SQLite's write lock (BEGIN IMMEDIATE) makes every transaction run alone; on PostgreSQL
   * advisory locks held until commit do it.
   */
  transaction<T>(fn: (tx: Db) => Promise<T>, options?: TransactionOptions): Promise<T>;
  /** Applies every migration this database has not seen. */
  migrate(): Promise<void>;
  /** A trivial query, for /readyz. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** The table rate-limiter-flexible keeps its PostgreSQL counters in (ops/http.ts). */
export const RATE_LIMIT_TABLE = 'rate_limits';

const MIGRATIONS = resolve(dirname(fileURLToPath(import.meta.url)), '../../drizzle');

export { isPostgresUrl };

/** Opens the database DEPUTY_DB names, turning a failure into a one-line ConfigError. */
export async function openDatabaseOrExplain(location: string, options: { pool?: number } = {}): Promise<Database> {
  if (isPostgresUrl(location)) {
    const database = new PostgresDatabase(location, options.pool);
    try {
      await database.ping();
      return database;
    } catch (error) {
      await database.close();
      const why = /password must be a string/.test(reason(error))
        ? 'the server asks for a password and the URL holds none'
        : reason(error);
      throw new ConfigError(`DEPUTY_DB: cannot connect to PostgreSQL at ${redactUrl(location)}: ${why}`);
    }
  }
  try {
    return new SqliteDatabase(location);
  } catch (error) {
    throw new ConfigError(`DEPUTY_DB: cannot open the SQLite database '${location}': ${reason(error)}`);
  }
}

/** The URL without its password, for messages. */
export function redactUrl(location: string): string {
  try {
    const url = new URL(location);
    if (url.password !== '') url.password = '***';
    for (const key of [...url.searchParams.keys()]) {
      if (/pass|secret|key/i.test(key)) url.searchParams.set(key, '***');
    }
    return url.toString();
  } catch {
    return 'the configured URL';
  }
}

function reason(error: unknown): string {
  if (error instanceof AggregateError && error.errors.length > 0) return reason(error.errors[0]);
  return error instanceof Error ? error.message || error.constructor.name : String(error);
}

/**
 * One better-sqlite3 connection. Its calls are synchronous, but a transaction written with
 * awaits lets other requests run between its statements, and on one connection they would run
 * inside it. So while a transaction is queued or open everything else waits its turn behind
 * it, and a transaction begins only once the queries already under way have finished. Without
 * a transaction, queries run at once (the common case: the mint's reads).
 *
 * Code inside a transaction must use the handle it was given: the database itself would wait
 * for that same transaction to end.
 */
export class SqliteDatabase implements Database {
  readonly dialect = 'sqlite' as const;
  readonly t = sqliteSchema;
  readonly driver: SqliteDriver.Database;
  readonly #db: Db;
  readonly #begin: SqliteDriver.Statement;
  readonly #commit: SqliteDriver.Statement;
  readonly #rollback: SqliteDriver.Statement;
  /** Exclusive work (transactions, migrations) queued or running. */
  #exclusive = 0;
  /** Work behind the exclusive work, in order. */
  #tail: Promise<unknown> = Promise.resolve();
  /** Queries started at once and not yet finished, and who waits for them to finish. */
  #inFlight = 0;
  #drained: (() => void) | undefined;
  #inTransaction = false;

  constructor(path: string) {
    if (path !== ':memory:') {
      mkdirSync(dirname(resolve(path)), { recursive: true });
      // A new database is the owner's alone (SQLite gives its -wal and -shm files the same mode).
      if (!existsSync(path)) closeSync(openSync(path, 'a', 0o600));
    }
    this.driver = new SqliteDriver(path);
    this.driver.pragma('journal_mode = WAL');
    this.driver.pragma('foreign_keys = ON');
    this.driver.pragma('busy_timeout = 5000');
    this.driver.pragma('synchronous = NORMAL');
    this.#db = drizzleSqlite(this.driver, { schema: sqliteSchema });
    this.#begin = this.driver.prepare('BEGIN IMMEDIATE');
    this.#commit = this.driver.prepare('COMMIT');
    this.#rollback = this.driver.prepare('ROLLBACK');
  }

  run<T>(fn: (db: Db) => Promise<T>): Promise<T> {
    if (this.#exclusive > 0) return this.#behind(() => fn(this.#db));
    return this.#now(() => fn(this.#db));
  }

  prepared<T>(_name: string, build: (db: Db, t: Tables) => Preparable<T>): (values: Record<string, unknown>) => Promise<T[]> {
    const statement = build(this.#db, this.t).prepare();
    return (values) => {
      if (this.#exclusive > 0) return this.#behind(async () => statement.all(values));
      // One synchronous statement: it is over before anything else can start.
      try {
        return Promise.resolve(statement.all(values));
      } catch (error) {
        return Promise.reject(error);
      }
    };
  }

  statement<T>(
    _name: string,
    build: (db: Db, t: Tables) => Preparable<T>,
  ): (tx: Db, values: Record<string, unknown>) => Promise<T[]> {
    const statement = build(this.#db, this.t).prepare();
    return async (tx, values) => {
      if (tx !== this.#db || !this.#inTransaction) throw new Error('a transaction statement run outside a transaction');
      return statement.all(values);
    };
  }

  execute<T>(query: SQL): Promise<T[]> {
    return this.run(async (db) => db.all<T>(query));
  }

  transaction<T>(fn: (tx: Db) => Promise<T>): Promise<T> {
    return this.#alone(async () => {
      // IMMEDIATE takes the write lock at once, so another process's transaction cannot slip
      // between this one's reads and writes.
      this.#begin.run();
      this.#inTransaction = true;
      try {
        const result = await fn(this.#db);
        this.#commit.run();
        return result;
      } catch (error) {
        if (this.driver.inTransaction) this.#rollback.run();
        throw error;
      } finally {
        this.#inTransaction = false;
      }
    });
  }

  async migrate(): Promise<void> {
    await this.#alone(async () => migrateSqlite(this.#db, { migrationsFolder: `${MIGRATIONS}/sqlite` }));
  }

  async ping(): Promise<void> {
    await this.run(async () => this.driver.prepare('select 1').get());
  }

  async close(): Promise<void> {
    await this.#alone(async () => undefined).catch(() => undefined);
    this.driver.close();
  }

  /** Runs `fn` now, counted, so that a transaction waits for it. */
  async #now<T>(fn: () => Promise<T>): Promise<T> {
    this.#inFlight += 1;
    try {
      return await fn();
    } finally {
      this.#inFlight -= 1;
      if (this.#inFlight === 0) this.#drained?.();
    }
  }

  /** Runs `fn` after the exclusive work queued before it. */
  #behind<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(fn);
    this.#tail = result.catch(() => undefined);
    return result;
  }

  /** Runs `fn` alone: after the work queued before it and the queries under way. */
  #alone<T>(fn: () => Promise<T>): Promise<T> {
    this.#exclusive += 1;
    return this.#behind(async () => {
      if (this.#inFlight > 0) await new Promise<void>((resolve) => (this.#drained = resolve));
      this.#drained = undefined;
      return fn();
    }).finally(() => {
      this.#exclusive -= 1;
    });
  }
}

interface PgPreparable<T> {
  prepare(name: string): { execute(values?: Record<string, unknown>): Promise<T[]> };
}

/**
 * Deputy's advisory locks, in the two-key space: (EVERYTHING, 0) is taken exclusively by an
 * `'all'` transaction and shared by every scoped one, which also takes (SCOPES, hash of its
 * scope) exclusively. Always in that order, and one scope per transaction, so they cannot
 * deadlock; two scopes whose hashes collide merely take turns.
 */
const EVERYTHING = 0x64707479; // "dpty"
const SCOPES = 0x64707480;
/** Held by the process applying migrations, so that processes starting at once take turns. */
const MIGRATION_LOCK = 0x64707481;

/**
 * PostgreSQL text cannot hold U+0000, and a statement with one in a parameter fails as a whole;
 * SQLite keeps it. Input can carry one (an id in a URL, a form field), so every string
 * parameter has it replaced by U+FFFD: a lookup then finds nothing, as no stored value holds
 * U+0000, and a stored value keeps a visible mark where it was. (JSON: schema-pg.ts.)
 */
class TextSafeClient extends pg.Client {
  override query(...args: unknown[]): never {
    const [config, values] = args;
    if (Array.isArray(values)) args[1] = values.map(textSafe);
    else if (typeof config === 'object' && config !== null && Array.isArray((config as pg.QueryConfig).values)) {
      args[0] = { ...config, values: (config as pg.QueryConfig).values?.map(textSafe) };
    }
    return (super.query as (...a: unknown[]) => never)(...args);
  }
}

function textSafe(value: unknown): unknown {
  return typeof value === 'string' && value.includes('\u0000') ? value.replaceAll('\u0000', '\uFFFD') : value;
}

export class PostgresDatabase implements Database {
  readonly dialect = 'postgres' as const;
  readonly t = pgSchema as unknown as Tables;
  readonly pool: pg.Pool;
  readonly #db: NodePgDatabase<typeof pgSchema>;

  constructor(url: string, poolSize = 10) {
    this.pool = new pg.Pool({ connectionString: url, max: poolSize, connectionTimeoutMillis: 10_000, Client: TextSafeClient });
    // An idle client losing its connection must not crash the process; the next query reconnects.
    this.pool.on('error', () => undefined);
    this.#db = drizzlePg(this.pool, { schema: pgSchema });
  }

  run<T>(fn: (db: Db) => Promise<T>): Promise<T> {
    return fn(this.#db as unknown as Db);
  }

  prepared<T>(name: string, build: (db: Db, t: Tables) => Preparable<T>): (values: Record<string, unknown>) => Promise<T[]> {
    // The builder is PostgreSQL's at run time, whose prepare takes the statement's name.
    const builder = build(this.#db as unknown as Db, this.t) as unknown as PgPreparable<T>;
    const statement = builder.prepare(`deputy_${name}`);
    return (values) => statement.execute(values);
  }

  statement<T>(
    name: string,
    build: (db: Db, t: Tables) => Preparable<T>,
  ): (tx: Db, values: Record<string, unknown>) => Promise<T[]> {
    return (tx, values) => (build(tx, this.t) as unknown as PgPreparable<T>).prepare(`deputy_${name}`).execute(values);
  }

  async execute<T>(query: SQL): Promise<T[]> {
    return (await this.#db.execute(query)).rows as T[];
  }

  transaction<T>(fn: (tx: Db) => Promise<T>, options: TransactionOptions = {}): Promise<T> {
    const scope = options.exclusive;
    // Known limit: a transaction waiting here for its scope's lock holds one of the pool's
    // connections meanwhile (DEPUTY_DB_POOL); try-locks with a retry outside would free it.
    return this.#db.transaction(async (tx) => {
      if (scope === 'all') {
        await tx.execute(sql`select pg_advisory_xact_lock(${EVERYTHING}, 0)`);
      } else if (scope !== undefined) {
        await tx.execute(
          sql`select pg_advisory_xact_lock_shared(${EVERYTHING}, 0), pg_advisory_xact_lock(${SCOPES}, hashtext(${scope}))`,
        );
      }
      return fn(tx as unknown as Db);
    });
  }

  async migrate(): Promise<void> {
    const client = await this.pool.connect();
    try {
      await client.query('select pg_advisory_lock($1)', [MIGRATION_LOCK]);
      try {
        await migratePg(drizzlePg(client), { migrationsFolder: `${MIGRATIONS}/pg` });
        // rate-limiter-flexible's counters, in the layout that library reads and writes; made
        // here, under the lock, because two processes creating it at once can collide.
        await client.query(
          `create table if not exists ${RATE_LIMIT_TABLE} (key varchar(255) primary key, points integer not null default 0, expire bigint)`,
        );
      } finally {
        await client.query('select pg_advisory_unlock($1)', [MIGRATION_LOCK]);
      }
    } finally {
      client.release();
    }
  }

  async ping(): Promise<void> {
    await this.pool.query('select 1');
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
