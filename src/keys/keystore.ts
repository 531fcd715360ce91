/**
 * Signing keys: generated here, stored with the private part encrypted (JWE, `dir` +
 * A256GCM under a key derived from DEPUTY_SECRET), imported once and reused for every
 * signature. `kid` is the RFC 7638 thumbprint (SPEC 5.2).
 */
import {
  calculateJwkThumbprint,
  CompactEncrypt,
  compactDecrypt,
  exportJWK,
  generateKeyPair,
  importJWK,
  type CryptoKey,
  type JWK,
} from 'jose';
import { epoch, type SigningKeyRow, type Store } from '../db/store.ts';

export type SigningAlg = 'ES256';

export interface ActiveKey {
  kid: string;
  alg: SigningAlg;
  key: CryptoKey;
  /** The private JWK, in memory only: oidc-provider signs ID tokens with it. */
  jwk: JWK;
}

/** Public JWK members per key type: everything else (notably `d`, `p`, `q`) stays private. */
const PUBLIC_MEMBERS: Record<string, string[]> = {
  EC: ['kty', 'crv', 'x', 'y'],
  OKP: ['kty', 'crv', 'x'],
  RSA: ['kty', 'n', 'e'],
};

export function publicPart(jwk: JWK): JWK {
  const members = PUBLIC_MEMBERS[jwk.kty ?? ''];
  if (members === undefined) throw new TypeError(`unsupported key type ${jwk.kty}`);
  return Object.fromEntries(members.map((m) => [m, jwk[m as keyof JWK]])) as JWK;
}

export class KeyStore {
  readonly #store: Store;
  readonly #encryptionKey: Uint8Array;
  #active: ActiveKey | undefined;

  constructor(store: Store, encryptionKey: Uint8Array) {
    this.#store = store;
    this.#encryptionKey = encryptionKey;
  }

  /**
   * Loads the active key, creating the first one if the database has none. Safe when several
   * processes start on one database at once: the insert happens under a write lock after a
   * second look.
   */
  async init(alg: SigningAlg = 'ES256'): Promise<void> {
    if (this.#store.publishedSigningKeys().length === 0) {
      const row = await this.#generate(alg);
      this.#store.exclusive((tx) => {
        if (tx.publishedSigningKeys().length === 0) tx.insertSigningKey(row);
      });
    }

    await this.#loadActive();
  }

  /** The key that signs now. */
  active(): ActiveKey {
    if (this.#active === undefined) throw new Error('KeyStore.init() has not run');
    return this.#active;
  }

  /** The JWK Set services verify against: public members, `kid`, `alg` and `use` only. */
  jwks(): { keys: JWK[] } {
    return {
      keys: this.#store.publishedSigningKeys().map((row) => ({
        ...publicPart(row.publicJwk as JWK),
        kid: row.kid,
        alg: row.alg,
        use: 'sig',
      })),
    };
  }

  async #loadActive(): Promise<void> {
    const now = epoch();
    const candidates = this.#store
      .publishedSigningKeys(now)
      .filter((row) => row.activatesAt <= now && row.retiredAt === null);
    const row = candidates.at(-1);
    if (row === undefined) throw new Error('no active signing key in the database');

    if (this.#active?.kid === row.kid) return;
    const jwk = await this.#decrypt(row);
    const key = (await importJWK(jwk, row.alg)) as CryptoKey;
    this.#active = { kid: row.kid, alg: row.alg as SigningAlg, key, jwk: { ...jwk, kid: row.kid, alg: row.alg, use: 'sig' } };
  }

  async #generate(alg: SigningAlg): Promise<SigningKeyRow> {
    const { privateKey } = await generateKeyPair(alg, { extractable: true });
    const privateJwk = await exportJWK(privateKey);
    const publicJwk = publicPart(privateJwk);
    const kid = await calculateJwkThumbprint(publicJwk, 'sha256');
    const now = epoch();

    return {
      kid,
      alg,
      publicJwk: publicJwk as Record<string, unknown>,
      privateJwe: await this.#encrypt(kid, privateJwk),
      createdAt: now,
      activatesAt: now,
      retiredAt: null,
      removeAfter: null,
    };
  }

  async #encrypt(kid: string, jwk: JWK): Promise<string> {
    return new CompactEncrypt(new TextEncoder().encode(JSON.stringify(jwk)))
      .setProtectedHeader({ alg: 'dir', enc: 'A256GCM', kid })
      .encrypt(this.#encryptionKey);
  }

  async #decrypt(row: SigningKeyRow): Promise<JWK> {
    let plaintext: Uint8Array;
    let kid: unknown;
    try {
      const result = await compactDecrypt(row.privateJwe, this.#encryptionKey, {
        keyManagementAlgorithms: ['dir'],
        contentEncryptionAlgorithms: ['A256GCM'],
      });
      plaintext = result.plaintext;
      kid = result.protectedHeader.kid;
    } catch {
      throw new KeyDecryptionError(row.kid);
    }

    if (kid !== row.kid) throw new KeyDecryptionError(row.kid);
    return JSON.parse(new TextDecoder().decode(plaintext)) as JWK;
  }
}

/** The stored private key does not open with this DEPUTY_SECRET. */
export class KeyDecryptionError extends Error {
  override name = 'KeyDecryptionError';

  constructor(kid: string) {
    super(
      `signing key ${kid} cannot be decrypted with this DEPUTY_SECRET; ` +
        'start with the secret the keys were created under',
    );
  }
}
