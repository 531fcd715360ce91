/**
 * An agent, as a test drives one: registered in Deputy's registry, connecting with the device
 * or authorization code grant (the person's side played by a Browser), and minting over raw
 * HTTP so every status and body can be asserted.
 */
import assert from 'node:assert/strict';
import * as oidc from 'openid-client';
import { registerAgent } from '../../src/agents/registry.ts';
import type { Browser, Page } from './browser.ts';
import type { RunningDeputy } from './deputy.ts';

export const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const ID_JAG = 'urn:ietf:params:oauth:token-type:id-jag';
export const ID_TOKEN = 'urn:ietf:params:oauth:token-type:id_token';
export const REFRESH_TOKEN = 'urn:ietf:params:oauth:token-type:refresh_token';

export interface TestAgent {
  clientId: string;
  clientSecret: string;
  name: string;
}

export async function addAgent(
  deputy: RunningDeputy,
  name = 'Research Bot',
  redirectUris: string[] = ['http://127.0.0.1:9/callback'],
): Promise<TestAgent> {
  const { agent, clientSecret } = await registerAgent(deputy.deputy.store, { name, redirectUris });
  return { clientId: agent.clientId, clientSecret: clientSecret as string, name };
}

export function basic(agent: { clientId: string; clientSecret: string }): string {
  const encode = (v: string) => encodeURIComponent(v);
  return `Basic ${Buffer.from(`${encode(agent.clientId)}:${encode(agent.clientSecret)}`).toString('base64')}`;
}

export interface Answer {
  status: number;
  headers: Headers;
  body: Record<string, unknown>;
}

/** POSTs a form to one of Deputy's endpoints and returns status, headers and JSON body. */
export async function post(
  url: string,
  fields: Record<string, string | string[]>,
  headers: Record<string, string> = {},
): Promise<Answer> {
  const form = new URLSearchParams();
  for (const [key, value] of Object.entries(fields)) {
    for (const v of Array.isArray(value) ? value : [value]) form.append(key, v);
  }
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: form.toString(),
  });
  const text = await response.text();
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    body = { raw: text };
  }
  return { status: response.status, headers: response.headers, body };
}

/** A token-exchange request for an ID-JAG, authenticated with Basic unless told otherwise. */
export function mint(
  deputy: RunningDeputy,
  agent: TestAgent,
  fields: Record<string, string | string[]>,
  headers?: Record<string, string>,
): Promise<Answer> {
  return post(
    `${deputy.url}/token`,
    { grant_type: TOKEN_EXCHANGE, requested_token_type: ID_JAG, ...fields },
    headers ?? { authorization: basic(agent) },
  );
}

/** The inputs of the form with this id, or of the first form (oidc-provider's device forms). */
export function formFields(page: Page, formId?: string): { action: string; fields: Record<string, string> } {
  const opening = formId === undefined ? '<form[^>]*>' : `<form[^>]*id="${formId.replace('.', '\\.')}"[^>]*>`;
  const form = new RegExp(`${opening}([\\s\\S]*?)</form>`).exec(page.body);
  assert.ok(form, `form ${formId} on ${page.url}: ${page.body}`);
  const action = /action="([^"]+)"/.exec(form[0])?.[1] ?? page.url;
  const fields: Record<string, string> = {};
  for (const input of (form[1] ?? '').matchAll(/<input[^>]*>/g)) {
    const name = /name="([^"]+)"/.exec(input[0])?.[1];
    const value = /value="([^"]*)"/.exec(input[0])?.[1] ?? '';
    if (name) fields[name] = value;
  }
  return { action: new URL(action, page.url).href, fields };
}

/** Answers Deputy's connect page: approve (optionally the delegation too) or cancel. */
export async function answerConnect(
  browser: Browser,
  page: Page,
  choice: 'approve' | 'cancel',
  extra: Record<string, string> = {},
): Promise<Page> {
  assert.match(page.url, /\/interaction\//, `connect page expected, got ${page.url}: ${page.body.slice(0, 300)}`);
  const csrf = /name="csrf" value="([^"]+)"/.exec(page.body)?.[1] as string;
  const uid = /\/interaction\/([^/?#]+)/.exec(page.url)?.[1] as string;
  const base = new URL(page.url).origin;
  const path = choice === 'approve' ? 'confirm' : 'abort';
  return browser.submit(`${base}/interaction/${uid}/${path}`, { csrf, ...extra });
}

export interface DeviceTokens {
  access_token: string;
  id_token: string;
  refresh_token: string;
  scope: string;
}

/**
 * Connects the agent for the person signed in to `browser` with the device grant: the agent
 * asks for a code, the person confirms and approves it, the agent polls once.
 */
export async function connectByDevice(
  deputy: RunningDeputy,
  agent: TestAgent,
  browser: Browser,
  options: {
    scope?: string;
    audience?: string;
    approve?: Record<string, string>;
    /** Inspects the connect page before it is answered. */
    onConnectPage?: (page: Page) => void;
  } = {},
): Promise<DeviceTokens> {
  const device = await post(
    `${deputy.url}/device_authorization`,
    {
      scope: options.scope ?? 'openid offline_access email profile',
      ...(options.audience ? { audience: options.audience } : {}),
    },
    { authorization: basic(agent) },
  );
  assert.equal(device.status, 200, JSON.stringify(device.body));

  let confirm = await browser.go(device.body.verification_uri_complete as string);
  assert.equal(confirm.status, 200, confirm.body.slice(0, 400));
  if (!confirm.body.includes('op.deviceConfirmForm')) {
    // With the code in the link, oidc-provider first posts it back by itself (a script does).
    const posted = formFields(confirm);
    confirm = await browser.submit(posted.action, posted.fields);
  }
  const { action, fields } = formFields(confirm, 'op.deviceConfirmForm');
  const connect = await browser.submit(action, fields);
  options.onConnectPage?.(connect);
  const done = await answerConnect(browser, connect, 'approve', options.approve);
  assert.equal(done.status, 200, done.body.slice(0, 400));
  assert.match(done.body, /go back to the agent/);

  const tokens = await post(
    `${deputy.url}/token`,
    { grant_type: 'urn:ietf:params:oauth:grant-type:device_code', device_code: device.body.device_code as string },
    { authorization: basic(agent) },
  );
  assert.equal(tokens.status, 200, JSON.stringify(tokens.body));
  return tokens.body as unknown as DeviceTokens;
}

/** Connects with the authorization code grant and PKCE, as a web agent would (openid-client). */
export async function connectByCode(
  deputy: RunningDeputy,
  agent: TestAgent,
  browser: Browser,
  redirectUri = 'http://127.0.0.1:9/callback',
): Promise<oidc.TokenEndpointResponse> {
  const config = await oidc.discovery(
    new URL(deputy.url),
    agent.clientId,
    {},
    oidc.ClientSecretBasic(agent.clientSecret),
    { execute: [oidc.allowInsecureRequests] },
  );
  const verifier = oidc.randomPKCECodeVerifier();
  const state = oidc.randomState();
  const url = oidc.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri,
    scope: 'openid offline_access email',
    prompt: 'consent',
    code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
  });

  const connect = await browser.go(url.href);
  // The approval redirects to the agent's callback, which nothing serves: stop there.
  const csrf = /name="csrf" value="([^"]+)"/.exec(connect.body)?.[1] as string;
  const uid = /\/interaction\/([^/?#]+)/.exec(connect.url)?.[1] as string;
  assert.ok(uid, `connect page expected, got ${connect.url}`);
  let response = await browser.request(`${deputy.url}/interaction/${uid}/confirm`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ csrf }).toString(),
  });
  let location = new URL(response.headers.get('location') as string, deputy.url);
  while (!location.href.startsWith(redirectUri)) {
    response = await browser.request(location.href);
    location = new URL(response.headers.get('location') as string, location);
  }

  return oidc.authorizationCodeGrant(config, location, { pkceCodeVerifier: verifier, expectedState: state });
}
