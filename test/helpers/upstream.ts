/**
 * A real OpenID provider (oidc-provider) in this process, standing in for a company IdP: it
 * signs in whoever the test names, with the claims the test gives, through a login form the
 * test posts like a browser would.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import Koa from 'koa';
import { exportJWK, generateKeyPair } from 'jose';
import { Provider, type AdapterPayload } from 'oidc-provider';

export interface UpstreamAccount {
  sub: string;
  email?: string;
  email_verified?: boolean;
  name?: string;
  phone_number?: string;
  phone_number_verified?: boolean;
}

export interface TestUpstream {
  issuer: string;
  clientId: string;
  clientSecret: string;
  /** Accounts by sub; tests add to it. */
  accounts: Map<string, UpstreamAccount>;
  /** The amr and acr the next logins report. */
  login: { amr: string[]; acr: string };
  close(): Promise<void>;
}

/**
 * Starts the provider on `localhost` (Deputy runs on 127.0.0.1 in tests, so the two keep
 * separate cookies as two sites would) and registers Deputy's callback.
 */
export async function startUpstream(redirectUri: string): Promise<TestUpstream> {
  const server: Server = createServer();
  server.listen(0, 'localhost');
  await once(server, 'listening');
  const issuer = `http://localhost:${(server.address() as AddressInfo).port}`;

  const accounts = new Map<string, UpstreamAccount>();
  const login = { amr: ['pwd', 'otp'], acr: 'urn:example:loa:2' };
  const clientId = 'deputy-test';
  const clientSecret = 'a-test-client-secret-that-is-long-enough';
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const storage = new Map<string, AdapterPayload>();

  const provider = new Provider(issuer, {
    adapter: class {
      model: string;
      constructor(model: string) {
        this.model = model;
      }
      async upsert(id: string, payload: AdapterPayload) {
        storage.set(`${this.model}:${id}`, payload);
        if (payload.uid) storage.set(`${this.model}:uid:${payload.uid}`, payload);
      }
      async find(id: string) {
        return storage.get(`${this.model}:${id}`);
      }
      async findByUid(uid: string) {
        return storage.get(`${this.model}:uid:${uid}`);
      }
      async findByUserCode() {
        return undefined;
      }
      async consume(id: string) {
        const payload = storage.get(`${this.model}:${id}`);
        if (payload) payload.consumed = Math.floor(Date.now() / 1000);
      }
      async destroy(id: string) {
        storage.delete(`${this.model}:${id}`);
      }
      async revokeByGrantId() {}
    },
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        redirect_uris: [redirectUri],
        grant_types: ['authorization_code'],
        response_types: ['code'],
      },
    ],
    jwks: { keys: [{ ...(await exportJWK(privateKey)), alg: 'RS256', use: 'sig' }] },
    claims: {
      // amr and acr are masked out of ID tokens unless a scope names them.
      openid: ['sub', 'acr', 'amr', 'auth_time'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      phone: ['phone_number', 'phone_number_verified'],
    },
    features: { devInteractions: { enabled: false } },
    ttl: { Grant: 3600, Session: 3600, AccessToken: 300, IdToken: 300, Interaction: 600, AuthorizationCode: 60 },
    interactions: { url: (_ctx, interaction) => `/login/${interaction.uid}` },
    findAccount: (_ctx, sub) => {
      const account = accounts.get(sub);
      if (account === undefined) return undefined;
      return { accountId: sub, claims: () => ({ ...account }) };
    },
    loadExistingGrant: async (ctx) => {
      const accountId = ctx.oidc.session?.accountId;
      if (accountId === undefined || ctx.oidc.client === undefined) return undefined;
      const grant = new ctx.oidc.provider.Grant({ accountId, clientId: ctx.oidc.client.clientId });
      grant.addOIDCScope('openid email profile phone');
      await grant.save();
      return grant;
    },
  });

  const app = new Koa();
  app.use(async (ctx, next) => {
    const match = /^\/login\/([^/]+)$/.exec(ctx.path);
    if (match === null) return next();
    const details = await provider.interactionDetails(ctx.req, ctx.res);

    if (ctx.method === 'GET') {
      ctx.type = 'html';
      ctx.body = `<form method="post" action="/login/${details.uid}"><input name="sub"><button>Sign in</button></form>`;
      return undefined;
    }

    const chunks: Buffer[] = [];
    for await (const chunk of ctx.req) chunks.push(chunk as Buffer);
    const sub = new URLSearchParams(Buffer.concat(chunks).toString()).get('sub') ?? '';
    const result = accounts.has(sub)
      ? { login: { accountId: sub, amr: login.amr, acr: login.acr } }
      : { error: 'access_denied', error_description: 'unknown user' };
    await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
    ctx.respond = false;
    return undefined;
  });
  app.use((ctx) => {
    // oidc-provider is a koa app itself; hand it the request untouched.
    ctx.respond = false;
    provider.callback()(ctx.req, ctx.res);
  });
  server.on('request', app.callback());

  return {
    issuer,
    clientId,
    clientSecret,
    accounts,
    login,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}
