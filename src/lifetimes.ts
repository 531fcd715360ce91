/**
 * How long the tokens Deputy signs live, and what follows for its keys: a retired key stays
 * published until every token it signed has expired and every cache of the JWKS has let it go
 * (SPEC 5.3).
 */
import type { Config } from './config.ts';

/** ID tokens Deputy issues to agents. */
export const ID_TOKEN_TTL_SECONDS = 3600;
/** Revocation event tokens: short, to limit replay (SPEC 6, OIDC Back-Channel Logout section 4). */
export const EVENT_TOKEN_LIFETIME_SECONDS = 120;
const CLOCK_SKEW_SECONDS = 60;

export function retentionFor(config: Config): number {
  return (
    Math.max(ID_TOKEN_TTL_SECONDS, config.idJagTtl, EVENT_TOKEN_LIFETIME_SECONDS) +
    config.keys.jwksMaxAge +
    CLOCK_SKEW_SECONDS
  );
}
