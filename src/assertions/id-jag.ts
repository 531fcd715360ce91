/**
 * The ID-JAG: its claims (DESIGN 2.4 step 7, SPEC 1.6 and 2.3) and its signature. Only this
 * module decides what Deputy asserts about a person.
 */
import { SignJWT } from 'jose';
import type { User } from '../db/store.ts';
import type { ActiveKey } from '../keys/keystore.ts';
import { providerMetadataUrl } from '../keys/routes.ts';

export const ID_JAG_TYP = 'oauth-id-jag+jwt';

export interface IdJagInput {
  issuer: string;
  user: User;
  agent: { clientId: string; name: string };
  audience: string;
  /** The agent's client id at this service, when an administrator mapped one. */
  serviceClientId: string | undefined;
  resources: string[];
  scope: string;
  jti: string;
  issuedAt: number;
  expiresAt: number;
}

/**
 * `client_id` names who acts at the service: a mapped client id, else the agent's own id when
 * it is a URL (a client ID metadata document), else Deputy's provider metadata document, which
 * auth.md services resolve (SPEC 2.5, 2.9).
 */
export function assertedClientId(issuer: string, agentClientId: string, mapped: string | undefined): string {
  if (mapped !== undefined) return mapped;
  if (agentClientId.startsWith('https://')) return agentClientId;
  return providerMetadataUrl(issuer);
}

export function idJagClaims(input: IdJagInput): Record<string, unknown> {
  const { user, resources } = input;
  return {
    iss: input.issuer,
    sub: user.id,
    aud: input.audience,
    client_id: assertedClientId(input.issuer, input.agent.clientId, input.serviceClientId),
    jti: input.jti,
    iat: input.issuedAt,
    exp: input.expiresAt,
    ...(resources.length === 1 ? { resource: resources[0] } : {}),
    ...(resources.length > 1 ? { resource: resources } : {}),
    ...(input.scope !== '' ? { scope: input.scope } : {}),
    ...(user.authTime !== null ? { auth_time: user.authTime } : {}),
    ...(user.amr !== null && user.amr.length > 0 ? { amr: user.amr } : {}),
    ...(user.acr !== null ? { acr: user.acr } : {}),
    ...(user.email !== null ? { email: user.email, email_verified: user.emailVerified } : {}),
    ...(user.phoneNumber !== null
      ? { phone_number: user.phoneNumber, phone_number_verified: user.phoneNumberVerified }
      : {}),
    ...(user.name !== null ? { name: user.name } : {}),
    agent_platform: input.agent.name,
  };
}

export function signIdJag(claims: Record<string, unknown>, key: ActiveKey): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ alg: key.alg, kid: key.kid, typ: ID_JAG_TYP }).sign(key.key);
}
