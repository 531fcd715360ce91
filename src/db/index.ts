/**
 * The SQLite connection: WAL, foreign keys, a busy timeout, and the migrations from drizzle/
 * applied before anything reads.
 */
import { closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { drizzle, type BetterSQLite3Database } from 'drizzle-orm/better-sqlite3';
import { migrate } from 'drizzle-orm/better-sqlite3/migrator';
import { ConfigError } from '../config.ts';
import * as schema from './schema.ts';

export type Db = BetterSQLite3Database<typeof schema>;
/** The database or a transaction on it: what a query helper inside a transaction takes. */
export type Executor = Db | Parameters<Parameters<Db['transaction']>[0]>[0];

export interface Connection {
  db: Db;
  sqlite: Database.Database;
  close(): void;
}

const MIGRATIONS = resolve(dirname(fileURLToPath(import.meta.url)), '../../drizzle');

export function openDatabase(path: string): Connection {
  if (path !== ':memory:') {
    mkdirSync(dirname(resolve(path)), { recursive: true });
    // A new database is the owner's alone (SQLite gives its -wal and -shm files the same mode).
    if (!existsSync(path)) closeSync(openSync(path, 'a', 0o600));
  }

  const sqlite = new Database(path);
  sqlite.pragma('journal_mode = WAL');
  sqlite.pragma('foreign_keys = ON');
  sqlite.pragma('busy_timeout = 5000');
  sqlite.pragma('synchronous = NORMAL');

  const db = drizzle(sqlite, { schema });
  return { db, sqlite, close: () => sqlite.close() };
}

/** Applies every migration in drizzle/ that this database has not seen. */
export function migrateDatabase(connection: Connection): void {
  migrate(connection.db, { migrationsFolder: MIGRATIONS });
}

/** Opens the database, turning a path that cannot be opened into a one-line ConfigError. */
export function openDatabaseOrExplain(path: string): Connection {
  try {
    return openDatabase(path);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new ConfigError(`DEPUTY_DB: cannot open the SQLite database '${path}': ${reason}`);
  }
}
