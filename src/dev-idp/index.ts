/**
 * The development upstream provider: an oidc-provider instance mounted at `/dev-idp` that signs
 * in any email address, verified. It exists so `npm start` works with no IdP configured; the
 * configuration refuses it when NODE_ENV=production.
 */
import Router from '@koa/router';
import { exportJWK, generateKeyPair } from 'jose';
import type Koa from 'koa';
import mount from 'koa-mount';
import { Provider } from 'oidc-provider';
import type { Database } from '../db/index.ts';
import { createModelAdapter } from '../db/oidc-adapter.ts';
import { formBody } from '../web/body.ts';
import type { Views } from '../web/views.ts';

export const DEV_IDP_PATH = '/dev-idp';
export const DEV_IDP_CLIENT_ID = 'deputy';

export interface DevIdp {
  issuer: string;
  /** Koa middleware serving the provider and its sign-in page. */
  middleware: Koa.Middleware[];
}

interface Options {
  deputyIssuer: string;
  /** Where its sign-ins are kept: Deputy's database, so every process on it shares them. */
  database: Database;
  clientSecret: string;
  cookieKeys: string[];
  views: Views;
  /** Largest form body in bytes (DEPUTY_BODY_LIMIT). */
  bodyLimit: number;
}

/** Emails are accepted as typed, but compared and used as the subject in lower case. */
const EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

export async function createDevIdp(options: Options): Promise<DevIdp> {
  const issuer = `${options.deputyIssuer}${DEV_IDP_PATH}`;
  const Adapter = createModelAdapter(options.database, 'dev-idp:');
  // The name typed at sign-in, by email, for the ID token's `name`.
  const names = new Adapter('Name');
  // Known limit: each process signs with a key of its own. Deputy, its one relying party, takes
  // ID tokens straight from the token endpoint and need not check their signature (OpenID
  // Connect Core 3.1.3.7); a key kept in the database would give every process one JWKS.
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });

  const provider = new Provider(issuer, {
    adapter: Adapter,
    clients: [
      {
        client_id: DEV_IDP_CLIENT_ID,
        client_secret: options.clientSecret,
        redirect_uris: [`${options.deputyIssuer}/login/callback`],
        grant_types: ['authorization_code'],
        response_types: ['code'],
        id_token_signed_response_alg: 'ES256',
      },
    ],
    jwks: { keys: [{ ...(await exportJWK(privateKey)), alg: 'ES256', use: 'sig' }] },
    claims: {
      // amr and acr are masked out of ID tokens unless a scope names them.
      openid: ['sub', 'acr', 'amr', 'auth_time'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    conformIdTokenClaims: false,
    cookies: {
      keys: options.cookieKeys,
      names: {
        session: 'dev_idp_session',
        interaction: 'dev_idp_interaction',
        resume: 'dev_idp_resume',
      },
    },
    features: { devInteractions: { enabled: false } },
    ttl: {
      AccessToken: 300,
      AuthorizationCode: 60,
      Grant: 8 * 3600,
      IdToken: 300,
      Interaction: 600,
      Session: 8 * 3600,
    },
    interactions: { url: (_ctx, interaction) => `${DEV_IDP_PATH}/interaction/${interaction.uid}` },
    findAccount: async (_ctx, id) => {
      const name = (await names.find(id))?.name;
      return {
        accountId: id,
        claims: () => ({
          sub: id,
          email: id,
          email_verified: true,
          name: typeof name === 'string' ? name : id.split('@')[0],
        }),
      };
    },
    // Deputy is the only client and first-party: consent is implied.
    loadExistingGrant: async (ctx) => {
      const accountId = ctx.oidc.session?.accountId;
      if (accountId === undefined || ctx.oidc.client === undefined) return undefined;
      const grant = new ctx.oidc.provider.Grant({ accountId, clientId: ctx.oidc.client.clientId });
      grant.addOIDCScope('openid email profile');
      await grant.save();
      return grant;
    },
    renderError: (ctx, out) => {
      ctx.type = 'html';
      ctx.body = options.views.render('error', {
        title: 'Development sign-in failed',
        message: `${out.error}: ${out.error_description ?? ''}`,
        devIdp: true,
      });
    },
  });

  const router = new Router({ prefix: `${DEV_IDP_PATH}/interaction` });

  router.get('/:uid', async (ctx) => {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (details.uid !== ctx.params.uid) ctx.throw(400, 'interaction mismatch');
    ctx.type = 'html';
    ctx.body = options.views.render('dev-idp-login', { uid: details.uid, devIdp: true, error: null });
  });

  router.post('/:uid', formBody(options.bodyLimit), async (ctx) => {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const body = ctx.request.body as Record<string, unknown>;
    const email = typeof body.email === 'string' ? body.email.trim().toLowerCase() : '';
    const name = typeof body.name === 'string' ? body.name.trim().slice(0, 200) : '';

    if (!EMAIL.test(email) || email.length > 254) {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = options.views.render('dev-idp-login', {
        uid: details.uid,
        devIdp: true,
        error: 'Enter an email address such as ada@example.com.',
      });
      return;
    }

    if (name !== '') await names.upsert(email, { name }, 0);
    await provider.interactionFinished(
      ctx.req,
      ctx.res,
      { login: { accountId: email, amr: ['pwd'] } },
      { mergeWithLastSubmission: false },
    );
    ctx.respond = false;
  });

  return {
    issuer,
    middleware: [
      router.routes() as Koa.Middleware,
      router.allowedMethods() as Koa.Middleware,
      mount(DEV_IDP_PATH, provider),
    ],
  };
}
