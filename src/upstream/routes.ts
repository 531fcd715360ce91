/**
 * Sign-in through the upstream provider (DESIGN 2.1): authorization code with PKCE (S256),
 * `state` and `nonce`; the callback validates the response, upserts the user by (upstream
 * issuer, `sub`) and starts a session with a fresh id.
 */
import Router from '@koa/router';
import * as oidc from 'openid-client';
import type { Logger } from 'pino';
import { epoch, type Store, type UpstreamProfile } from '../db/store.ts';
import { formBody } from '../web/body.ts';
import { PageError } from '../web/errors.ts';
import type { Sessions, WebState } from '../web/session.ts';
import type { Views } from '../web/views.ts';
import { describe, UPSTREAM_SCOPE, type UpstreamClient } from './client.ts';

const LOGIN_COOKIE = 'deputy_login';
const LOGIN_TTL_SECONDS = 10 * 60;

interface Options {
  issuer: string;
  upstream: UpstreamClient;
  /** Ask the upstream to sign in afresh each time (the development provider: signing out of
   * Deputy must let someone else sign in at the same browser). */
  forceLogin: boolean;
  store: Store;
  sessions: Sessions;
  views: Views;
  log: Logger;
  /** Largest form body in bytes (DEPUTY_BODY_LIMIT). */
  bodyLimit: number;
}

/**
 * A `return_to` value Deputy will redirect to: a path on Deputy itself, never another origin
 * (including the protocol-relative `//host` and backslash forms browsers treat as one).
 */
export function safeReturnTo(value: unknown, issuer: string): string {
  if (typeof value !== 'string' || !value.startsWith('/') || value.length > 2000) return '/';
  if (value.startsWith('//') || value.includes('\\')) return '/';
  // Control characters can turn a path into something else after a browser strips them.
  if (/[\u0000-\u001f\u007f]/.test(value)) return '/';

  const base = new URL(issuer);
  const target = new URL(value, base);
  if (target.origin !== base.origin) return '/';
  // Resolving removes dot segments: `/.//evil.example` becomes the path `//evil.example`, which a
  // browser would read as another host. The path as resolved must be one too.
  const path = `${target.pathname}${target.search}`;
  if (path.startsWith('//') || path.startsWith('/\\')) return '/';
  return path;
}

export function loginRoutes(options: Options): Router {
  const { issuer, upstream, store, sessions, views, log } = options;
  const router = new Router();
  const cookieOptions = { ...sessions.cookieOptions(LOGIN_TTL_SECONDS), path: '/login' };

  router.get('/login', async function startLogin(ctx) {
    const configuration = await upstreamConfiguration(upstream);
    const state = oidc.randomState();
    const nonce = oidc.randomNonce();
    const codeVerifier = oidc.randomPKCECodeVerifier();
    const returnTo = safeReturnTo(ctx.query.return_to, issuer);

    await store.saveLoginAttempt(state, {
      nonce,
      codeVerifier,
      returnTo,
      expiresAt: epoch() + LOGIN_TTL_SECONDS,
    });
    ctx.cookies.set(LOGIN_COOKIE, state, cookieOptions);

    const url = oidc.buildAuthorizationUrl(configuration, {
      redirect_uri: upstream.redirectUri,
      scope: UPSTREAM_SCOPE,
      response_type: 'code',
      code_challenge: await oidc.calculatePKCECodeChallenge(codeVerifier),
      code_challenge_method: 'S256',
      state,
      nonce,
      ...(options.forceLogin ? { prompt: 'login' } : {}),
    });
    ctx.redirect(url.href);
  });

  router.get('/login/callback', async function finishLogin(ctx) {
    const state = typeof ctx.query.state === 'string' ? ctx.query.state : undefined;
    const cookieState = ctx.cookies.get(LOGIN_COOKIE, { signed: true });
    ctx.cookies.set(LOGIN_COOKIE, null, { ...cookieOptions, maxAge: undefined });

    if (state === undefined || cookieState === undefined || state !== cookieState) {
      throw new PageError(
        400,
        'Sign-in could not be completed',
        'This sign-in response does not belong to a sign-in started in this browser. Start again from the sign-in page.',
      );
    }

    const attempt = await store.takeLoginAttempt(state);
    if (attempt === undefined) {
      throw new PageError(
        400,
        'Sign-in could not be completed',
        'This sign-in response was already used or has expired. Start again from the sign-in page.',
      );
    }

    const configuration = await upstreamConfiguration(upstream);
    const currentUrl = new URL(ctx.originalUrl, issuer);
    let tokens: oidc.TokenEndpointResponse & oidc.TokenEndpointResponseHelpers;
    try {
      tokens = await oidc.authorizationCodeGrant(configuration, currentUrl, {
        pkceCodeVerifier: attempt.codeVerifier,
        expectedState: state,
        expectedNonce: attempt.nonce,
        idTokenExpected: true,
      });
    } catch (error) {
      throw callbackError(error);
    }

    const claims = tokens.claims();
    if (claims === undefined) {
      throw new PageError(400, 'Sign-in could not be completed', 'The sign-in provider sent no ID token.');
    }

    const userinfo = await fetchUserInfo(configuration, tokens.access_token, claims.sub, log);
    const user = await store.upsertUpstreamUser(claims.iss, claims.sub, profileFrom(claims, userinfo));
    await sessions.start(ctx, user.id);
    log.info({ event: 'sign_in', user: user.id, upstream: claims.iss }, 'signed in');
    ctx.redirect(attempt.returnTo);
  });

  router.get('/logout', function confirmLogout(ctx) {
    const state = ctx.state as WebState;
    if (state.user === null) return ctx.redirect('/');
    ctx.type = 'html';
    ctx.body = views.render('logout', { user: state.user, csrf: state.csrf });
    return undefined;
  });

  router.post('/logout', formBody(options.bodyLimit), async function logout(ctx) {
    const state = ctx.state as WebState;
    if (state.user !== null) {
      sessions.requireCsrf(ctx, (ctx.request.body as Record<string, unknown>).csrf);
      log.info({ event: 'sign_out', user: state.user.id }, 'signed out');
    }
    await sessions.end(ctx);
    ctx.redirect('/');
  });

  return router;
}

async function upstreamConfiguration(upstream: UpstreamClient): Promise<oidc.Configuration> {
  try {
    return await upstream.configuration();
  } catch (error) {
    throw new PageError(
      502,
      'Sign-in is unavailable',
      `Deputy cannot reach its sign-in provider right now (${describe(error)}). Try again in a moment.`,
      { cause: error },
    );
  }
}

/** Sorts a failed callback into the page a person sees: their request (400) or the upstream (502). */
function callbackError(error: unknown): PageError {
  const title = 'Sign-in could not be completed';
  if (error instanceof oidc.AuthorizationResponseError) {
    return new PageError(400, title, `The sign-in provider refused: ${describe(error)}.`, { cause: error });
  }

  if (error instanceof oidc.ResponseBodyError) {
    return new PageError(
      400,
      title,
      `The sign-in provider rejected the response: ${describe(error)}. Start again from the sign-in page.`,
      { cause: error },
    );
  }

  if (error instanceof oidc.ClientError) {
    return new PageError(400, title, `The sign-in response is not valid: ${error.message}.`, { cause: error });
  }

  return new PageError(
    502,
    'Sign-in is unavailable',
    'Deputy could not reach its sign-in provider to finish signing in. Try again in a moment.',
    { cause: error },
  );
}

/**
 * Providers differ in which claims they put in the ID token and which only in userinfo; Deputy
 * asks userinfo when the provider has one and lets its answer complete the ID token's claims.
 */
async function fetchUserInfo(
  configuration: oidc.Configuration,
  accessToken: string,
  sub: string,
  log: Logger,
): Promise<oidc.UserInfoResponse | undefined> {
  if (configuration.serverMetadata().userinfo_endpoint === undefined) return undefined;
  try {
    return await oidc.fetchUserInfo(configuration, accessToken, sub);
  } catch (error) {
    log.warn({ event: 'userinfo_failed', reason: describe(error) }, 'upstream userinfo failed');
    return undefined;
  }
}

function profileFrom(claims: oidc.IDToken, userinfo: oidc.UserInfoResponse | undefined): UpstreamProfile {
  // A verified flag counts only for the value it came with (SPEC 10): take each address and
  // its flag from the same document, userinfo first.
  const from = (name: string): Record<string, unknown> =>
    userinfo !== undefined && typeof userinfo[name] === 'string' ? userinfo : claims;
  const text = (source: Record<string, unknown>, name: string) =>
    typeof source[name] === 'string' ? (source[name] as string) : null;
  const emailSource = from('email');
  const phoneSource = from('phone_number');
  const amr = Array.isArray(claims.amr) ? claims.amr.filter((v): v is string => typeof v === 'string') : null;

  return {
    email: text(emailSource, 'email'),
    emailVerified: text(emailSource, 'email') !== null && emailSource.email_verified === true,
    name: text(from('name'), 'name'),
    phoneNumber: text(phoneSource, 'phone_number'),
    phoneNumberVerified:
      text(phoneSource, 'phone_number') !== null && phoneSource.phone_number_verified === true,
    amr,
    acr: typeof claims.acr === 'string' ? claims.acr : null,
    authTime: typeof claims.auth_time === 'number' ? claims.auth_time : null,
  };
}
