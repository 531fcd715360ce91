/**
 * Deputy as a relying party of the upstream OpenID provider (openid-client 6). A configured
 * upstream is discovered at start, so a wrong issuer stops the process; the development
 * provider is served by this same process and is discovered on first use.
 */
import * as oidc from 'openid-client';
import { ConfigError, type UpstreamConfig } from '../config.ts';

export const UPSTREAM_SCOPE = 'openid email profile phone';
const DISCOVERY_TIMEOUT_SECONDS = 10;

export class UpstreamClient {
  readonly issuer: string;
  readonly redirectUri: string;
  readonly #settings: UpstreamConfig;
  #configuration: Promise<oidc.Configuration> | undefined;

  constructor(settings: UpstreamConfig, redirectUri: string) {
    this.issuer = settings.issuer;
    this.redirectUri = redirectUri;
    this.#settings = settings;
  }

  /** The discovered configuration; a failed discovery is retried on the next call. */
  configuration(): Promise<oidc.Configuration> {
    this.#configuration ??= discover(this.#settings).catch((error: unknown) => {
      this.#configuration = undefined;
      throw error;
    });
    return this.#configuration;
  }
}

async function discover(settings: UpstreamConfig): Promise<oidc.Configuration> {
  try {
    return await oidc.discovery(
      new URL(settings.issuer),
      settings.clientId,
      { redirect_uris: [] },
      oidc.ClientSecretBasic(settings.clientSecret),
      {
        execute: settings.allowHttp ? [oidc.allowInsecureRequests] : [],
        timeout: DISCOVERY_TIMEOUT_SECONDS,
      },
    );
  } catch (error) {
    throw new ConfigError(
      `DEPUTY_UPSTREAM_ISSUER: discovery of '${settings.issuer}' failed: ${describe(error)}`,
    );
  }
}

/** A short, secret-free description of why a call to the upstream failed. */
export function describe(error: unknown): string {
  if (error instanceof oidc.ResponseBodyError) {
    return `${error.error}${error.error_description ? `: ${error.error_description}` : ''}`;
  }

  if (error instanceof oidc.AuthorizationResponseError) {
    return `${error.error}${error.error_description ? `: ${error.error_description}` : ''}`;
  }

  if (error instanceof Error) {
    const cause = error.cause instanceof Error ? ` (${error.cause.message})` : '';
    return `${error.message}${cause}`;
  }

  return String(error);
}
