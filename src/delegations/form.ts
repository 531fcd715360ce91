/**
 * The choices a person makes when approving a delegation, read from a submitted form:
 * once (one assertion, within a day), always (until revoked) or until a date.
 */
import type { NewDelegation } from '../db/delegations.ts';
import { epoch } from '../db/store.ts';
import type { ServiceMetadata } from '../services/discovery.ts';
import { PageError } from '../web/errors.ts';

/** An unused `once` delegation lapses after this long. */
export const ONCE_LIFETIME_SECONDS = 24 * 3600;
const MAX_UNTIL_DAYS = 366;

export const MODE_CHOICES = [
  { value: 'once', label: 'Once: one assertion, within the next 24 hours' },
  { value: 'always', label: 'Always: until I revoke it' },
  { value: 'until', label: 'Until a date' },
];

export function delegationFromForm(
  body: Record<string, unknown>,
  target: {
    userId: string;
    agentClientId: string;
    service: ServiceMetadata;
    resources: string[];
    scope: string;
  },
): NewDelegation {
  const now = epoch();
  let mode: 'once' | 'always';
  let expiresAt: number | null;

  switch (body.mode) {
    case 'once':
      mode = 'once';
      expiresAt = now + ONCE_LIFETIME_SECONDS;
      break;
    case 'always':
      mode = 'always';
      expiresAt = null;
      break;
    case 'until':
      mode = 'always';
      expiresAt = untilDate(body.until, now);
      break;
    default:
      throw new PageError(400, 'Choose how long', 'Choose once, always, or until a date.');
  }

  const { service } = target;
  return {
    userId: target.userId,
    agentClientId: target.agentClientId,
    audience: service.audience,
    resources: target.resources,
    scope: target.scope,
    mode,
    expiresAt,
    serviceName: service.name,
    serviceLogoUri: service.logoUri,
    serviceAgentAuth: service.agentAuth as Record<string, unknown> | null,
  };
}

/**
 * The last second of the chosen day (UTC), shown as 23:59; it must be in the future and within
 * MAX_UNTIL_DAYS.
 */
function untilDate(value: unknown, now: number): number {
  const refuse = () => {
    throw new PageError(400, 'Choose a date', `Give a date from today to ${MAX_UNTIL_DAYS} days ahead.`);
  };
  if (typeof value !== 'string' || !/^\d{4}-\d{2}-\d{2}$/.test(value)) return refuse();
  const start = Date.parse(`${value}T00:00:00Z`);
  // Date.parse rolls 2027-02-30 over to March; only a date that reads back the same is real.
  if (Number.isNaN(start) || new Date(start).toISOString().slice(0, 10) !== value) return refuse();
  const end = Math.floor(start / 1000) + 86400 - 1;
  if (end <= now || end > now + MAX_UNTIL_DAYS * 86400) return refuse();
  return end;
}
