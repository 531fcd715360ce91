/**
 * Signing keys and their lifecycle (DESIGN 2.6, SPEC 5.3). Keys are generated here and stored
 * with the private part encrypted (JWE, `dir` + A256GCM under a key derived from
 * DEPUTY_SECRET); `kid` is the RFC 7638 thumbprint.
 *
 * A key's state follows from its stored times alone, so every process on one database agrees:
 * - next: published, not signing yet (`activatesAt` in the future: the pre-publication delay,
 *   at least the JWKS max-age, so every cache has seen it before it signs anything);
 * - active: the newest key past `activatesAt` and not retired;
 * - retired: replaced at `retiredAt`, still published until `removeAfter` (every token it
 *   signed has expired, plus the JWKS cache time);
 * - removed: past `removeAfter`, no longer published.
 */
import { EventEmitter } from 'node:events';
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

export const SIGNING_ALGS = ['ES256', 'EdDSA', 'RS256'] as const;
export type SigningAlg = (typeof SIGNING_ALGS)[number];

export type KeyState = 'next' | 'active' | 'retired' | 'removed';

export interface ActiveKey {
  kid: string;
  alg: SigningAlg;
  key: CryptoKey;
  /** The private JWK, in memory only: oidc-provider signs ID tokens with it. */
  jwk: JWK;
}

export interface KeyPolicy {
  /** The algorithm new keys use (DEPUTY_SIGNING_ALG); a different one means a rotation. */
  alg: SigningAlg;
  /** Seconds between a key's publication and its first signature. */
  prepublishSeconds: number;
  /** Seconds a retired key stays published. */
  retentionSeconds: number;
  /** Rotate automatically when the active key is this many days old; 0 never. */
  rotationDays: number;
}

/** Public JWK members per key type: everything else (notably `d`, `p`, `q`) stays private. */
const PUBLIC_MEMBERS: Record<string, string[]> = {
  EC: ['kty', 'crv', 'x', 'y'],
  OKP: ['kty', 'crv', 'x'],
  RSA: ['kty', 'n', 'e'],
};

const RSA_MODULUS_BITS = 2048;

export function publicPart(jwk: JWK): JWK {
  const members = PUBLIC_MEMBERS[jwk.kty ?? ''];
  if (members === undefined) throw new TypeError(`unsupported key type ${jwk.kty}`);
  return Object.fromEntries(members.map((m) => [m, jwk[m as keyof JWK]])) as JWK;
}

export function keyState(row: SigningKeyRow, now = epoch()): KeyState {
  if (row.removeAfter !== null && row.removeAfter <= now) return 'removed';
  if (row.retiredAt !== null && row.retiredAt <= now) return 'retired';
  if (row.activatesAt > now) return 'next';
  return 'active';
}

/** The key that signs at `now`: the newest one past activation and not yet retired. */
function activeRow(rows: SigningKeyRow[], now: number): SigningKeyRow | undefined {
  return rows
    .filter((row) => keyState(row, now) === 'active')
    .sort((a, b) => b.activatesAt - a.activatesAt || b.createdAt - a.createdAt)[0];
}

export class KeyStore extends EventEmitter<{ change: [ActiveKey]; error: [unknown] }> {
  readonly #store: Store;
  readonly #encryptionKey: Uint8Array;
  readonly #policy: KeyPolicy;
  #rows: SigningKeyRow[] = [];
  /** Decrypted keys by kid: the active one and any next one, ready before they sign. */
  readonly #loaded = new Map<string, ActiveKey>();
  #active: ActiveKey | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(store: Store, encryptionKey: Uint8Array, policy: KeyPolicy) {
    super();
    this.#store = store;
    this.#encryptionKey = encryptionKey;
    this.#policy = policy;
  }

  /**
   * Loads the keys, creating the first one if the database has none (it signs at once:
   * nothing can have cached an empty JWKS), and schedules a rotation if the configured
   * algorithm differs from the active key's.
   */
  async init(): Promise<void> {
    if ((await this.#store.allSigningKeys()).length === 0) {
      const row = await this.#generate(this.#policy.alg, epoch());
      await this.#store.exclusive('keys:signing', async (tx) => {
        if ((await tx.allSigningKeys()).length === 0) await tx.insertSigningKey(row);
      });
    }

    await this.refresh();
    const next = this.#rows.find((row) => keyState(row) === 'next');
    if (this.active().alg !== this.#policy.alg && next?.alg !== this.#policy.alg) {
      await this.rotate(this.#policy.alg);
    }
  }

  /** Re-reads the keys (another process may have rotated) and prepares the next one. */
  async refresh(): Promise<void> {
    this.#rows = await this.#store.allSigningKeys();
    const now = epoch();
    for (const row of this.#rows) {
      const state = keyState(row, now);
      if ((state === 'active' || state === 'next') && !this.#loaded.has(row.kid)) {
        this.#loaded.set(row.kid, await this.#open(row));
      }
    }
    this.#select(now);
  }

  /** Refreshes on a timer so this process follows rotations made elsewhere. */
  start(intervalMs: number): void {
    this.stop();
    this.#timer = setInterval(() => {
      this.refresh()
        .then(() => this.rotateIfDue())
        .catch((error: unknown) => this.emit('error', error));
    }, intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** The key that signs now. Cheap: called for every signature. */
  active(): ActiveKey {
    const now = epoch();
    if (this.#active === undefined || this.#switchDue(now)) this.#select(now);
    if (this.#active === undefined) throw new Error('KeyStore has no active key; did init() run?');
    return this.#active;
  }

  /** When the key that signs now became active (epoch seconds). */
  activeSince(): number {
    const { kid } = this.active();
    return this.#rows.find((row) => row.kid === kid)?.activatesAt ?? epoch();
  }

  /** The JWK Set services verify against: public members, `kid`, `alg` and `use` only. */
  jwks(): { keys: JWK[] } {
    const now = epoch();
    return {
      keys: this.#rows
        .filter((row) => keyState(row, now) !== 'removed')
        .map((row) => ({ ...publicPart(row.publicJwk as JWK), kid: row.kid, alg: row.alg, use: 'sig' })),
    };
  }

  /** Algorithms of the published keys: what a token Deputy signed may carry. */
  publishedAlgs(): string[] {
    return [...new Set(this.jwks().keys.map((k) => k.alg as string))];
  }

  /**
   * Starts a rotation: a new key is published now and signs after the pre-publication delay;
   * the active key retires at that moment and stays published for the retention time.
   */
  async rotate(alg: SigningAlg = this.#policy.alg): Promise<SigningKeyRow> {
    const now = epoch();
    // Times are whole seconds; one more makes the delay at least prepublishSeconds in full.
    const row = await this.#generate(alg, now + this.#policy.prepublishSeconds + 1);
    const inserted = await this.#store.exclusive('keys:signing', async (tx) => {
      const rows = await tx.allSigningKeys();
      if (rows.some((r) => keyState(r, now) === 'next')) return undefined;
      const current = activeRow(rows, now);
      if (current === undefined) {
        // No key signs yet (a new database): nothing to publish ahead of, so it signs now.
        const first = { ...row, activatesAt: now };
        await tx.insertSigningKey(first);
        return first;
      }
      await tx.insertSigningKey(row);
      await tx.retireSigningKey(current.kid, row.activatesAt, row.activatesAt + this.#policy.retentionSeconds);
      return row;
    });
    if (inserted === undefined) throw new RotationPendingError();
    await this.refresh();
    return inserted;
  }

  /** The automatic schedule (DEPUTY_KEY_ROTATION_DAYS): rotates when the active key is old. */
  async rotateIfDue(): Promise<void> {
    if (this.#policy.rotationDays <= 0) return;
    const now = epoch();
    const current = activeRow(this.#rows, now);
    if (current === undefined || this.#rows.some((r) => keyState(r, now) === 'next')) return;
    if (current.activatesAt + this.#policy.rotationDays * 86400 > now) return;
    await this.rotate().catch((error: unknown) => {
      if (!(error instanceof RotationPendingError)) throw error;
    });
  }

  /** Every stored key with its state, for `deputy keys list`. */
  async describe(): Promise<(SigningKeyRow & { state: KeyState })[]> {
    const now = epoch();
    return (await this.#store.allSigningKeys()).map((row) => ({ ...row, state: keyState(row, now) }));
  }

  #switchDue(now: number): boolean {
    const current = this.#rows.find((row) => row.kid === this.#active?.kid);
    if (current === undefined) return true;
    if (current.retiredAt !== null && current.retiredAt <= now) return true;
    return this.#rows.some((row) => row.activatesAt <= now && row.activatesAt > current.activatesAt && keyState(row, now) === 'active');
  }

  #select(now: number): void {
    const row = activeRow(this.#rows, now);
    if (row === undefined) return;
    const key = this.#loaded.get(row.kid);
    if (key === undefined || key.kid === this.#active?.kid) return;
    this.#active = key;
    for (const kid of this.#loaded.keys()) {
      const stored = this.#rows.find((r) => r.kid === kid);
      if (stored === undefined || !['active', 'next'].includes(keyState(stored, now))) this.#loaded.delete(kid);
    }
    queueMicrotask(() => this.emit('change', key));
  }

  async #open(row: SigningKeyRow): Promise<ActiveKey> {
    const jwk = await decryptPrivateJwk(row, this.#encryptionKey);
    const key = (await importJWK(jwk, row.alg)) as CryptoKey;
    return { kid: row.kid, alg: row.alg as SigningAlg, key, jwk: { ...jwk, kid: row.kid, alg: row.alg, use: 'sig' } };
  }

  async #generate(alg: SigningAlg, activatesAt: number): Promise<SigningKeyRow> {
    const options = alg === 'RS256' ? { extractable: true, modulusLength: RSA_MODULUS_BITS } : { extractable: true };
    const { privateKey } = await generateKeyPair(alg, options);
    const privateJwk = await exportJWK(privateKey);
    const publicJwk = publicPart(privateJwk);
    const kid = await calculateJwkThumbprint(publicJwk, 'sha256');

    return {
      kid,
      alg,
      publicJwk: publicJwk as Record<string, unknown>,
      privateJwe: await encryptPrivateJwk(kid, privateJwk, this.#encryptionKey),
      createdAt: epoch(),
      activatesAt,
      retiredAt: null,
      removeAfter: null,
    };
  }
}

export async function encryptPrivateJwk(kid: string, jwk: JWK, key: Uint8Array): Promise<string> {
  return new CompactEncrypt(new TextEncoder().encode(JSON.stringify(jwk)))
    .setProtectedHeader({ alg: 'dir', enc: 'A256GCM', kid })
    .encrypt(key);
}

export async function decryptPrivateJwk(row: SigningKeyRow, key: Uint8Array): Promise<JWK> {
  let plaintext: Uint8Array;
  let kid: unknown;
  try {
    const result = await compactDecrypt(row.privateJwe, key, {
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

/**
 * Re-encrypts every stored private key from one DEPUTY_SECRET-derived key to another, in one
 * transaction; nothing changes if any key does not open with the old secret.
 */
export async function reencryptKeys(store: Store, from: Uint8Array, to: Uint8Array): Promise<number> {
  const rows = await store.allSigningKeys();
  const updated: { kid: string; privateJwe: string }[] = [];
  for (const row of rows) {
    const jwk = await decryptPrivateJwk(row, from).catch((error: unknown) => {
      if (error instanceof KeyDecryptionError) {
        throw new KeyDecryptionError(row.kid, 'DEPUTY_SECRET_OLD', 'set it to the secret the keys are encrypted under now');
      }
      throw error;
    });
    updated.push({ kid: row.kid, privateJwe: await encryptPrivateJwk(row.kid, jwk, to) });
  }
  await store.exclusive('keys:signing', async (tx) => {
    for (const { kid, privateJwe } of updated) await tx.updateSigningKeyCiphertext(kid, privateJwe);
  });
  return updated.length;
}

/** The stored private key does not open with this DEPUTY_SECRET. */
export class KeyDecryptionError extends Error {
  override name = 'KeyDecryptionError';

  constructor(
    kid: string,
    variable = 'DEPUTY_SECRET',
    advice = 'start with the secret the keys were created under, or re-encrypt them (deputy keys reencrypt)',
  ) {
    super(`signing key ${kid} cannot be decrypted with this ${variable}; ${advice}`);
  }
}

/** A rotation was asked for while another one is still waiting for its key to activate. */
export class RotationPendingError extends Error {
  override name = 'RotationPendingError';

  constructor() {
    super('a rotation is already scheduled: a next key is published and not active yet');
  }
}
