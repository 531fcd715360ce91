/**
 * Published metadata: the JWKS (SPEC 5.1) and Deputy's provider metadata document (SPEC 2.5).
 * The authorization server metadata is oidc-provider's discovery (oauth/provider.ts).
 */
import Router from '@koa/router';
import type { KeyStore } from './keystore.ts';


export const ID_JAG_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:id-jag';
export const ID_JAG_GRANT_PROFILE = 'urn:ietf:params:oauth:grant-profile:id-jag';
export const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const JWT_BEARER_GRANT = 'urn:ietf:params:oauth:grant-type:jwt-bearer';

export function providerMetadataUrl(issuer: string): string {
  return `${issuer}/agent-auth.json`;
}

export function jwksUrl(issuer: string): string {
  return `${issuer}/.well-known/jwks.json`;
}

/**
 * `jwksMaxAge` is how long services may cache the JWKS; a new key is published at least that
 * long before it signs (SPEC 5.3).
 */
export function metadataRoutes(issuer: string, keys: KeyStore, jwksMaxAge: number): Router {
  const router = new Router();

  router.get('/.well-known/jwks.json', function jwks(ctx) {
    ctx.set('Cache-Control', `public, max-age=${jwksMaxAge}`);
    ctx.set('Access-Control-Allow-Origin', '*');
    ctx.type = 'application/jwk-set+json';
    ctx.body = keys.jwks();
  });

  router.get('/agent-auth.json', function providerMetadata(ctx) {
    ctx.set('Cache-Control', 'public, max-age=300');
    ctx.set('Access-Control-Allow-Origin', '*');
    ctx.body = {
      client_id: providerMetadataUrl(issuer),
      client_name: 'Deputy',
      client_uri: issuer,
      jwks_uri: jwksUrl(issuer),
      token_endpoint_auth_method: 'private_key_jwt',
      grant_types: [TOKEN_EXCHANGE_GRANT, JWT_BEARER_GRANT],
      authorization_grant_profiles_supported: [ID_JAG_GRANT_PROFILE],
      scope: 'openid email profile',
    };
  });

  return router;
}
