/**
 * DEPUTY_SECRET and the keys derived from it. In development, when the variable is unset, a
 * random secret is generated once and kept beside the database (mode 0600), so a restart
 * decrypts the same signing keys and honours the same cookies.
 */
import { hkdfSync, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { ConfigError, type Config } from './config.ts';

export interface Secrets {
  /** 256-bit key that encrypts private signing keys at rest. */
  keyEncryptionKey: Uint8Array;
  /** Keys for signed cookies (koa's keygrip). */
  cookieKeys: string[];
  /** Client secret Deputy uses at its own development provider. */
  devIdpClientSecret: string;
}

export function secretFilePath(dbPath: string): string {
  return join(dirname(resolve(dbPath)), 'deputy.secret');
}

/** The configured secret, or the development one beside the database (created if missing). */
export function resolveSecret(config: Config): { secret: string; generated: boolean; file?: string } {
  if (config.secret !== undefined) return { secret: config.secret, generated: false };

  const file = secretFilePath(config.dbPath);
  if (existsSync(file)) {
    const secret = readFileSync(file, 'utf8').trim();
    if (secret.length < 32) {
      throw new ConfigError(`${file} holds a secret shorter than 32 characters; delete it or set DEPUTY_SECRET`);
    }
    return { secret, generated: false, file };
  }

  if (holdsSigningKeys(config.dbPath)) {
    throw new ConfigError(
      `${file} is missing but the database ${config.dbPath} exists, and its signing keys are encrypted under that secret: restore the file or set DEPUTY_SECRET`,
    );
  }

  mkdirSync(dirname(file), { recursive: true });
  const secret = randomBytes(32).toString('base64url');
  writeFileSync(file, `${secret}\n`, { mode: 0o600, flag: 'wx' });
  return { secret, generated: true, file };
}

/**
 * Whether the database exists and holds signing keys, encrypted under a secret that must not be
 * replaced. A database without keys (made by a command run before the first start) has nothing
 * a new secret would lose.
 */
function holdsSigningKeys(dbPath: string): boolean {
  if (dbPath === ':memory:' || !existsSync(resolve(dbPath))) return false;
  let db: Database.Database | undefined;
  try {
    db = new Database(dbPath, { readonly: true, fileMustExist: true });
    return db.prepare('select 1 from signing_keys limit 1').get() !== undefined;
  } catch {
    // No signing_keys table yet, or not SQLite at all (opening it for real will say so).
    return false;
  } finally {
    db?.close();
  }
}

export function deriveSecrets(secret: string): Secrets {
  const derive = (info: string) =>
    new Uint8Array(hkdfSync('sha256', secret, 'deputy', info, 32));

  return {
    keyEncryptionKey: derive('signing-key-encryption'),
    cookieKeys: [Buffer.from(derive('cookie-signing')).toString('base64url')],
    devIdpClientSecret: Buffer.from(derive('dev-idp-client-secret')).toString('base64url'),
  };
}
