/**
 * Browser sessions: a random id in a signed, HttpOnly, SameSite=Lax cookie (Secure when the
 * issuer is https), looked up by its hash. Forms that change state carry a token bound to the
 * session (an HMAC of its id), checked by `requireCsrf`.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type Koa from 'koa';
import type { Store, User } from '../db/store.ts';
import { PageError } from './errors.ts';

export const SESSION_COOKIE = 'deputy_session';
export const SESSION_TTL_SECONDS = 12 * 60 * 60;

export interface WebState {
  user: User | null;
  sessionId: string | null;
  csrf: string | null;
}

export interface SessionOptions {
  store: Store;
  secure: boolean;
  csrfKey: string;
}

export class Sessions {
  readonly #options: SessionOptions;

  constructor(options: SessionOptions) {
    this.#options = options;
  }

  cookieOptions(maxAgeSeconds: number) {
    return {
      httpOnly: true,
      sameSite: 'lax' as const,
      secure: this.#options.secure,
      signed: true,
      path: '/',
      maxAge: maxAgeSeconds * 1000,
      overwrite: true,
    };
  }

  /** Loads the signed-in user, if any, into ctx.state. */
  middleware(): Koa.Middleware {
    return async (ctx, next) => {
      const state = ctx.state as WebState;
      state.user = null;
      state.sessionId = null;
      state.csrf = null;

      const id = ctx.cookies.get(SESSION_COOKIE, { signed: true });
      if (id !== undefined && id.length <= 128) {
        const user = await this.#options.store.findSessionUser(id);
        if (user !== undefined) {
          state.user = user;
          state.sessionId = id;
          state.csrf = this.#csrfFor(id);
        }
      }

      await next();
    };
  }

  /** Starts a session with a new id, ending the one the browser had. */
  async start(ctx: Koa.Context, userId: string): Promise<void> {
    const previous = ctx.cookies.get(SESSION_COOKIE, { signed: true });
    if (previous !== undefined) await this.#options.store.deleteSession(previous);

    const id = await this.#options.store.createSession(userId, SESSION_TTL_SECONDS);
    ctx.cookies.set(SESSION_COOKIE, id, this.cookieOptions(SESSION_TTL_SECONDS));
  }

  async end(ctx: Koa.Context): Promise<void> {
    const id = ctx.cookies.get(SESSION_COOKIE, { signed: true });
    if (id !== undefined) await this.#options.store.deleteSession(id);
    ctx.cookies.set(SESSION_COOKIE, null, { ...this.cookieOptions(0), maxAge: undefined });
  }

  /** Refuses a state-changing form without the token of the current session. */
  requireCsrf(ctx: Koa.Context, token: unknown): void {
    const state = ctx.state as WebState;
    const expected = state.csrf === null ? null : Buffer.from(state.csrf);
    // Compared as bytes: a token of the right length in characters may not be in bytes.
    const presented = typeof token === 'string' ? Buffer.from(token) : null;
    const ok =
      expected !== null &&
      presented !== null &&
      presented.length === expected.length &&
      timingSafeEqual(presented, expected);

    if (!ok) {
      throw new PageError(
        403,
        'Request refused',
        'This form was not sent from a current Deputy page. Go back, reload the page and try again.',
      );
    }
  }

  #csrfFor(sessionId: string): string {
    return createHmac('sha256', this.#options.csrfKey).update(`csrf:${sessionId}`).digest('base64url');
  }
}
