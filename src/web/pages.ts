/**
 * The signed-in person's pages: connected agents and delegations on `/`, adding a delegation
 * for a service, approving a consent request an agent's mint produced, revoking, disconnecting
 * and the audit trail of one delegation. Every form that changes state carries the session's
 * CSRF token.
 */
import Router from '@koa/router';
import type Koa from 'koa';
import type { Logger } from 'pino';
import type { Delegation, DelegationStore } from '../db/delegations.ts';
import type { OutboxStore, RevocationEvent } from '../db/outbox.ts';
import { epoch, type Store, type User } from '../db/store.ts';
import { delegationFromForm, MODE_CHOICES } from '../delegations/form.ts';
import type { ServiceMetadata } from '../services/discovery.ts';
import { isDiscoveryFailure, type ServiceDirectory } from '../services/directory.ts';
import { chosenScopes } from '../oauth/interactions.ts';
import { formBody } from './body.ts';
import { PageError, withWayBack } from './errors.ts';
import type { Sessions, WebState } from './session.ts';
import type { Views } from './views.ts';

interface Options {
  store: Store;
  delegations: DelegationStore;
  outbox: OutboxStore;
  /** Called after a revocation has queued its events, to deliver them now. */
  revoked: () => void;
  directory: ServiceDirectory;
  sessions: Sessions;
  views: Views;
  log: Logger;
  upstreamIssuer: string;
  /** Largest form body in bytes (DEPUTY_BODY_LIMIT). */
  bodyLimit: number;
}

const AUDIT_PAGE_SIZE = 20;

export type DelegationStatus = 'active' | 'used' | 'expired' | 'revoked';

export function delegationStatus(delegation: Delegation, now = epoch()): DelegationStatus {
  if (delegation.revokedAt !== null) return 'revoked';
  if (delegation.consumedAt !== null) return 'used';
  if (delegation.expiresAt !== null && delegation.expiresAt <= now) return 'expired';
  return 'active';
}

/** What the person sees of a revocation event's delivery. */
export function deliveryOf(event: RevocationEvent): Record<string, unknown> {
  const at = (seconds: number) => `${new Date(seconds * 1000).toISOString().slice(0, 16).replace('T', ' ')} UTC`;
  if (event.state === 'delivered') {
    return { state: 'delivered', text: `Service told ${event.deliveredAt ? at(event.deliveredAt) : ''}` };
  }
  if (event.state === 'failed') {
    return { state: 'failed', text: `Service could not be told: ${event.lastError ?? 'unknown reason'}` };
  }
  const next = at(Math.ceil(event.nextAttemptMs / 1000));
  const why = event.lastError ? ` (last attempt: ${event.lastError})` : '';
  return {
    state: 'retrying',
    // An attempt under way has been counted but has not failed yet.
    text: event.lastError === null ? 'Telling the service…' : `Retrying; next attempt ${next}${why}`,
  };
}

export function pageRoutes(options: Options): Router {
  const { store, delegations, outbox, directory, sessions, views, log } = options;
  const router = new Router();
  const form = formBody(options.bodyLimit);

  function signedIn(ctx: Koa.Context): User {
    const state = ctx.state as WebState;
    if (state.user === null) {
      throw new PageError(401, 'Sign in first', 'Sign in to Deputy to manage your agents and delegations.');
    }
    return state.user;
  }

  function render(ctx: Koa.Context, view: string, data: Record<string, unknown>, status = 200): void {
    const state = ctx.state as WebState;
    ctx.status = status;
    ctx.type = 'html';
    ctx.set('Cache-Control', 'no-store');
    ctx.body = views.render(view, { user: state.user, csrf: state.csrf, ...data });
  }

  router.get('/', async function home(ctx) {
    const state = ctx.state as WebState;
    if (state.user === null) return render(ctx, 'home', { upstreamIssuer: options.upstreamIssuer });

    const now = epoch();
    const list = await delegations.delegationsOf(state.user.id);
    const events = new Map<string, RevocationEvent>();
    for (const event of await outbox.forDelegations(list.filter((d) => d.revokedAt !== null).map((d) => d.id))) {
      if (!events.has(event.delegationId)) events.set(event.delegationId, event);
    }
    render(ctx, 'home', {
      upstreamIssuer: options.upstreamIssuer,
      agents: (await delegations.connectedAgents(state.user.id)).map((a) => ({ ...a, allows: connectionSummary(a.scope) })),
      delegations: list.map((d) => {
        const event = events.get(d.id);
        return { ...d, status: delegationStatus(d, now), delivery: event ? deliveryOf(event) : null };
      }),
      modes: MODE_CHOICES,
    });
    return undefined;
  });

  router.post('/delegations/preview', form, async function previewDelegation(ctx) {
    const user = signedIn(ctx);
    const body = ctx.request.body as Record<string, unknown>;
    sessions.requireCsrf(ctx, body.csrf);
    const agentClientId = String(body.agent ?? '');
    const agent = await connectedAgent(user, agentClientId);
    const url = String(body.service ?? '').trim();
    if (url === '') throw new PageError(400, 'Enter a service', 'Enter the address of the service.');

    const service = await discover(() => directory.lookup(url));
    render(ctx, 'delegation-new', { agent, service, typed: url, modes: MODE_CHOICES });
  });

  router.post('/delegations', form, async function createDelegation(ctx) {
    const user = signedIn(ctx);
    const body = ctx.request.body as Record<string, unknown>;
    sessions.requireCsrf(ctx, body.csrf);
    const agent = await connectedAgent(user, String(body.agent ?? ''));
    // Discovered again from what this person typed, never from a shared cache.
    const service = await discover(() => directory.lookup(String(body.service ?? '')));
    const scope = chosenScopes(body.scope, service.scopesSupported);
    const delegation = await delegations.createDelegation(
      delegationFromForm(body, {
        userId: user.id,
        agentClientId: agent.clientId,
        service,
        resources: service.resources,
        scope,
      }),
    );
    if (delegation === undefined) throw alreadyAllowed(agent.name);
    log.info(
      { event: 'delegation_granted', user: user.id, client: agent.clientId, audience: service.audience, delegation: delegation.id },
      'delegation granted',
    );
    ctx.redirect('/');
  });

  router.post('/delegations/:id/revoke', form, async function revokeDelegation(ctx) {
    const user = signedIn(ctx);
    sessions.requireCsrf(ctx, (ctx.request.body as Record<string, unknown>).csrf);
    if (!(await delegations.revokeDelegation(user.id, ctx.params.id as string))) {
      throw new PageError(404, 'Not found', 'There is no active delegation of yours with this id.');
    }
    log.info({ event: 'delegation_revoked', user: user.id, delegation: ctx.params.id }, 'delegation revoked');
    options.revoked();
    ctx.redirect('/');
  });

  router.post('/agents/:clientId/disconnect', form, async function disconnectAgent(ctx) {
    const user = signedIn(ctx);
    sessions.requireCsrf(ctx, (ctx.request.body as Record<string, unknown>).csrf);
    const clientId = ctx.params.clientId as string;
    if (!(await delegations.isConnected(user.id, clientId))) {
      throw new PageError(404, 'Not found', 'This agent is not connected to your account.');
    }
    const { revokedDelegations } = await delegations.disconnect(user.id, clientId);
    log.info({ event: 'disconnect', user: user.id, client: clientId, revokedDelegations }, 'agent disconnected');
    options.revoked();
    ctx.redirect('/');
  });

  router.get('/delegations/:id', async function delegationAudit(ctx) {
    const user = signedIn(ctx);
    const delegation = await delegations.findDelegation(ctx.params.id as string);
    if (delegation === undefined || delegation.userId !== user.id) {
      throw new PageError(404, 'Not found', 'There is no delegation of yours with this id.');
    }
    const page = Math.max(1, Math.min(10_000, Number.parseInt(String(ctx.query.page ?? '1'), 10) || 1));
    const rows = await delegations.assertionsOf(delegation.id, AUDIT_PAGE_SIZE + 1, (page - 1) * AUDIT_PAGE_SIZE);
    render(ctx, 'delegation', {
      delegation: { ...delegation, status: delegationStatus(delegation) },
      deliveries: (await outbox.forDelegations([delegation.id])).map((e) => ({ ...deliveryOf(e), audience: e.audience })),
      agentName: (await store.findAgent(delegation.agentClientId))?.name ?? delegation.agentClientId,
      assertions: rows.slice(0, AUDIT_PAGE_SIZE),
      page,
      hasNext: rows.length > AUDIT_PAGE_SIZE,
    });
  });

  router.get('/consent/:id', async function showConsent(ctx) {
    const { request, user } = await openConsent(ctx);
    const agent = await store.findAgent(request.agentClientId);
    let service: ServiceMetadata | null = null;
    let serviceError: string | null = null;
    try {
      service = await directory.forAudience(request.audience, request.resources);
    } catch (error) {
      if (!isDiscoveryFailure(error)) throw error;
      serviceError = error.message;
    }
    const scopes = service === null ? null : publishedScopes(request.scope, service.scopesSupported);
    render(ctx, 'consent', { request, agent, service, serviceError, scopes, modes: MODE_CHOICES, user });
  });

  router.post('/consent/:id', form, async function answerConsent(ctx) {
    const { request, user } = await openConsent(ctx);
    const body = ctx.request.body as Record<string, unknown>;
    sessions.requireCsrf(ctx, body.csrf);

    if (body.decision === 'deny') {
      await delegations.answerConsentRequest(user.id, request.id, 'denied', null);
      log.info({ event: 'consent_denied', user: user.id, client: request.agentClientId }, 'consent denied');
      // Named as the consent page named it; a service that cannot be read now is named by its
      // audience, the denial stands either way.
      const service = await directory.forAudience(request.audience, request.resources).catch((error: unknown) => {
        if (isDiscoveryFailure(error)) return null;
        throw error;
      });
      return render(ctx, 'consent-done', { approved: false, request, service });
    }

    if (body.decision !== 'approve') throw new PageError(400, 'Choose', 'Approve or deny the request.');
    const service = await discover(() => directory.forAudience(request.audience, request.resources));
    const chosen = withWayBack(`/consent/${request.id}`, 'Back to the request', () =>
      delegationFromForm(body, {
        userId: user.id,
        agentClientId: request.agentClientId,
        service: { ...service, audience: request.audience },
        resources: request.resources.length > 0 ? request.resources : service.resources,
        // The person's choice among what the service publishes (the page ticks what the agent
        // asked for): the agent does not decide what is granted.
        scope: chosenScopes(body.scope, service.scopesSupported),
      }),
    );
    const answered = await delegations.answerConsentRequest(user.id, request.id, 'approved', chosen);
    if (answered === 'not-connected') throw notConnected();
    if (answered === 'already-delegated') {
      throw alreadyAllowed((await store.findAgent(request.agentClientId))?.name ?? request.agentClientId);
    }
    if (answered === undefined) {
      throw new PageError(400, 'Already answered', 'This request was already answered or has expired.');
    }
    log.info(
      {
        event: 'delegation_granted',
        user: user.id,
        client: request.agentClientId,
        audience: request.audience,
        delegation: answered.delegation?.id,
      },
      'delegation granted',
    );
    return render(ctx, 'consent-done', { approved: true, request, service });
  });

  /** A consent request the signed-in person may answer now, or the page that says why not. */
  async function openConsent(ctx: Koa.Context) {
    const state = ctx.state as WebState;
    const request = await delegations.findConsentRequest(ctx.params.id as string);
    if (request === undefined) {
      throw new PageError(404, 'Not found', 'There is no consent request at this address.');
    }

    if (state.user === null) {
      ctx.redirect(`/login?return_to=${encodeURIComponent(`/consent/${request.id}`)}`);
      throw new RedirectDone();
    }

    if (request.userId !== state.user.id) {
      throw new PageError(
        403,
        'This request is for someone else',
        'The agent asked on behalf of a different Deputy account. Only that person can answer it; sign out and sign in as them.',
      );
    }

    if (request.outcome !== null || request.expiresAt <= epoch()) {
      throw new PageError(400, 'This request is closed', 'It was already answered or has expired. Ask the agent to try again.');
    }

    // Disconnected since it asked: approving would hand a delegation to an agent that does not
    // act for this person, ready for the day it connects again.
    if (!(await delegations.isConnected(state.user.id, request.agentClientId))) throw notConnected();

    return { request, user: state.user };
  }

  async function connectedAgent(user: User, clientId: string) {
    const agent = (await delegations.connectedAgents(user.id)).find((a) => a.clientId === clientId);
    if (agent === undefined) {
      throw new PageError(400, 'Choose an agent', 'Choose one of the agents connected to your account.');
    }
    return agent;
  }

  return router;
}

/** What a connection's scopes let the agent do, in words: "sees your email and name · stays connected". */
function connectionSummary(scope: string): string {
  const scopes = new Set(scope.split(' '));
  const sees = [scopes.has('email') ? 'email' : null, scopes.has('profile') ? 'name' : null].filter((s) => s !== null);
  return [
    sees.length > 0 ? `sees your ${sees.join(' and ')}` : null,
    scopes.has('offline_access') ? 'stays connected' : null,
  ]
    .filter((s) => s !== null)
    .join(' · ');
}

function notConnected(): PageError {
  return new PageError(
    400,
    'This agent is not connected',
    'The agent that asked is no longer connected to your account. Connect it again first; then it can ask again.',
  );
}

function alreadyAllowed(agentName: string): PageError {
  return new PageError(
    409,
    'Already allowed',
    `${agentName} may already speak for you to this service. Revoke that delegation first to change it.`,
  );
}

/** The requested scopes split into those the service publishes (grantable) and the rest. */
function publishedScopes(requested: string, supported: string[]): { granted: string[]; unpublished: string[] } {
  const asked = [...new Set(requested.split(' ').filter((s) => s !== ''))];
  return {
    granted: asked.filter((s) => supported.includes(s)),
    unpublished: asked.filter((s) => !supported.includes(s)),
  };
}

/** Thrown after a redirect has been set, to stop the handler without an error page. */
export class RedirectDone extends Error {
  override name = 'RedirectDone';
}

async function discover(fn: () => Promise<ServiceMetadata>): Promise<ServiceMetadata> {
  try {
    return await fn();
  } catch (error) {
    if (!isDiscoveryFailure(error)) throw error;
    throw new PageError(400, 'The service could not be checked', error.message, { cause: error });
  }
}
