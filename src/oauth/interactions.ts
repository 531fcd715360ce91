/**
 * The pages oidc-provider sends people to while an agent connects (authorization code or
 * device flow): sign-in goes through the upstream sign-in (DESIGN 2.1), then the consent page
 * names the agent and what it asks for. Approving records the connection and, when the agent
 * named an `audience`, can approve the first delegation in the same screen (DESIGN 2.2).
 */
import Router from '@koa/router';
import type Koa from 'koa';
import type { Logger } from 'pino';
import { errors, type InteractionResults, type Provider } from 'oidc-provider';
import type { DelegationStore } from '../db/delegations.ts';
import type { Store } from '../db/store.ts';
import { delegationFromForm, MODE_CHOICES } from '../delegations/form.ts';
import type { ServiceMetadata } from '../services/discovery.ts';
import { isDiscoveryFailure, type ServiceDirectory } from '../services/directory.ts';
import { formBody } from '../web/body.ts';
import { PageError } from '../web/errors.ts';
import type { Sessions, WebState } from '../web/session.ts';
import type { Views } from '../web/views.ts';
import { SCOPES } from './provider.ts';

interface Options {
  /** The current provider: a key rotation replaces it. */
  provider: () => Provider;
  store: Store;
  delegations: DelegationStore;
  directory: ServiceDirectory;
  sessions: Sessions;
  views: Views;
  log: Logger;
  /** Largest form body in bytes (DEPUTY_BODY_LIMIT). */
  bodyLimit: number;
}

const SCOPE_TEXT: Record<string, string> = {
  openid: 'Know who you are on Deputy',
  email: 'See your email address',
  profile: 'See your name',
  offline_access: 'Stay connected when you are away (until you disconnect it)',
};

export function interactionRoutes(options: Options): Router {
  const { provider, store, delegations, directory, sessions, views, log } = options;
  const router = new Router({ prefix: '/interaction' });
  const form = formBody(options.bodyLimit);

  async function details(ctx: Koa.Context) {
    try {
      const interaction = await provider().interactionDetails(ctx.req, ctx.res);
      if (interaction.uid !== ctx.params.uid) throw new errors.SessionNotFound('interaction mismatch');
      return interaction;
    } catch (error) {
      throw new PageError(
        400,
        'This connection request has expired',
        'Start connecting the agent again from the agent itself.',
        { cause: error },
      );
    }
  }

  async function finish(ctx: Koa.Context, result: InteractionResults, merge: boolean): Promise<void> {
    await provider().interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: merge });
    ctx.respond = false;
  }

  router.get('/:uid', async function showInteraction(ctx) {
    const interaction = await details(ctx);
    const state = ctx.state as WebState;

    if (state.user === null) {
      ctx.redirect(`/login?return_to=${encodeURIComponent(`/interaction/${interaction.uid}`)}`);
      return;
    }

    // The provider's session must be the person signed in to Deputy now; a sign-in step (or a
    // different person at the same browser) hands it over before anything is approved.
    if (interaction.prompt.name === 'login' || interaction.session?.accountId !== state.user.id) {
      const user = state.user;
      await finish(
        ctx,
        {
          login: {
            accountId: user.id,
            ...(user.amr ? { amr: user.amr } : {}),
            ...(user.acr ? { acr: user.acr } : {}),
            ...(user.authTime ? { ts: user.authTime } : {}),
          },
        },
        false,
      );
      return;
    }

    const agent = await store.findAgent(String(interaction.params.client_id));
    if (agent === undefined) throw new PageError(400, 'Unknown agent', 'This agent is not registered with Deputy.');

    const scopes = String(interaction.params.scope ?? '')
      .split(' ')
      .filter((s) => SCOPES.includes(s));
    const audience = typeof interaction.params.audience === 'string' ? interaction.params.audience : null;
    let service: ServiceMetadata | null = null;
    let serviceError: string | null = null;
    if (audience !== null) {
      try {
        service = await directory.forAudience(audience, []);
      } catch (error) {
        if (!isDiscoveryFailure(error)) throw error;
        serviceError = error.message;
      }
    }

    const alreadyAllowed =
      service !== null && await delegations.activeDelegation(state.user.id, agent.clientId, service.audience) !== undefined;

    ctx.type = 'html';
    ctx.body = views.render('connect', {
      alreadyAllowed,
      user: state.user,
      csrf: state.csrf,
      uid: interaction.uid,
      agent,
      scopes: scopes.map((s) => SCOPE_TEXT[s] ?? s),
      audience,
      service,
      serviceError,
      modes: MODE_CHOICES,
    });
  });

  router.post('/:uid/confirm', form, async function confirmConnection(ctx) {
    const interaction = await details(ctx);
    const state = ctx.state as WebState;
    const body = ctx.request.body as Record<string, unknown>;
    sessions.requireCsrf(ctx, body.csrf);
    if (state.user === null || interaction.session?.accountId !== state.user.id) {
      throw new PageError(403, 'Sign in again', 'Your session changed while connecting. Start again from the agent.');
    }

    const clientId = String(interaction.params.client_id);
    const { Grant } = provider();
    const grant = interaction.grantId
      ? ((await Grant.find(interaction.grantId)) ?? new Grant({ accountId: state.user.id, clientId }))
      : new Grant({ accountId: state.user.id, clientId });
    const missing = interaction.prompt.details as {
      missingOIDCScope?: string[];
      missingOIDCClaims?: string[];
    };
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    const grantId = await grant.save();

    const scope = String(interaction.params.scope ?? '')
      .split(' ')
      .filter((s) => SCOPES.includes(s))
      .join(' ');
    await delegations.recordConnection(state.user.id, clientId, grantId, scope);
    log.info({ event: 'connect', user: state.user.id, client: clientId }, 'agent connected');

    const audience = typeof interaction.params.audience === 'string' ? interaction.params.audience : null;
    if (audience !== null && body.delegate === 'yes') {
      const service = await directory.forAudience(audience, []).catch((error: unknown) => {
        if (!isDiscoveryFailure(error)) throw error;
        throw new PageError(400, 'The service could not be checked', error.message, { cause: error });
      });
      const delegation = await delegations.createDelegation(
        delegationFromForm(body, {
          userId: state.user.id,
          agentClientId: clientId,
          service,
          resources: service.resources,
          scope: chosenScopes(body.scope, service.scopesSupported),
        }),
      );
      // One already active for this service stands (the page said so); the connection goes on.
      if (delegation !== undefined) {
        log.info(
          { event: 'delegation_granted', user: state.user.id, client: clientId, audience, delegation: delegation.id },
          'delegation granted',
        );
      }
    }

    await finish(ctx, { consent: { grantId } }, true);
  });

  router.post('/:uid/abort', form, async function abortConnection(ctx) {
    await details(ctx);
    sessions.requireCsrf(ctx, (ctx.request.body as Record<string, unknown>).csrf);
    await finish(ctx, { error: 'access_denied', error_description: 'the person declined the connection' }, false);
  });

  return router;
}

/** A scope token: RFC 6749 section 3.3 (printable ASCII except space, quote and backslash). */
const SCOPE_TOKEN = /^[\x21\x23-\x5b\x5d-\x7e]+$/;

/**
 * The service scopes the person ticked. Each must be one the service publishes and a valid
 * scope token; anything else is refused rather than dropped, so nothing is granted unseen.
 */
export function chosenScopes(value: unknown, supported: string[]): string {
  const chosen = (Array.isArray(value) ? value : [value]).filter((s) => s !== undefined && s !== '');
  for (const scope of chosen) {
    if (typeof scope !== 'string' || !SCOPE_TOKEN.test(scope) || !supported.includes(scope)) {
      throw new PageError(400, 'Unknown scope', 'Choose only scopes the service publishes.');
    }
  }
  return [...new Set(chosen as string[])].join(' ');
}
