/**
 * The development upstream provider: an oidc-provider instance mounted at `/dev-idp` that signs
 * in any email address, verified. It exists so `npm start` works with no IdP configured; the
 * configuration refuses it when NODE_ENV=production.
 */
import Router from '@koa/router';
import { exportJWK, generateKeyPair } from 'jose';
import type Koa from 'koa';
import mount from 'koa-mount';
import { Provider, type Adapter, type AdapterPayload } from 'oidc-provider';
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
  const names = new Map<string, string>();
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });

  const provider = new Provider(issuer, {
    adapter: MemoryAdapter,
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
    findAccount: (_ctx, id) => ({
      accountId: id,
      claims: () => ({
        sub: id,
        email: id,
        email_verified: true,
        name: names.get(id) ?? id.split('@')[0],
      }),
    }),
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

    if (name !== '') names.set(email, name);
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

/**
 * oidc-provider storage for the development provider: process memory, expiring entries. Its
 * sign-in sessions end with the process, which is all a development provider needs.
 */
class MemoryAdapter implements Adapter {
  static readonly #store = new Map<string, { payload: AdapterPayload; expiresAt: number }>();
  readonly #model: string;

  constructor(model: string) {
    this.#model = model;
  }

  #key(id: string): string {
    return `${this.#model}:${id}`;
  }

  async upsert(id: string, payload: AdapterPayload, expiresIn: number): Promise<void> {
    MemoryAdapter.#store.set(this.#key(id), {
      payload,
      expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : Number.POSITIVE_INFINITY,
    });
    if (payload.uid) MemoryAdapter.#store.set(`${this.#model}:uid:${payload.uid}`, {
      payload,
      expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : Number.POSITIVE_INFINITY,
    });
  }

  async find(id: string): Promise<AdapterPayload | undefined> {
    return this.#get(this.#key(id));
  }

  async findByUid(uid: string): Promise<AdapterPayload | undefined> {
    return this.#get(`${this.#model}:uid:${uid}`);
  }

  async findByUserCode(): Promise<AdapterPayload | undefined> {
    return undefined;
  }

  async consume(id: string): Promise<void> {
    const entry = MemoryAdapter.#store.get(this.#key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id: string): Promise<void> {
    MemoryAdapter.#store.delete(this.#key(id));
  }

  async revokeByGrantId(grantId: string): Promise<void> {
    for (const [key, entry] of MemoryAdapter.#store) {
      if (entry.payload.grantId === grantId) MemoryAdapter.#store.delete(key);
    }
  }

  #get(key: string): AdapterPayload | undefined {
    const entry = MemoryAdapter.#store.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAt <= Date.now()) {
      MemoryAdapter.#store.delete(key);
      return undefined;
    }
    return entry.payload;
  }
}
