import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Polls `fn` every 25 ms until it returns something other than undefined or false, and
 * resolves with that; rejects, naming `what`, once `timeoutMs` have passed without.
 */
export async function waitFor<T>(
  what: string,
  fn: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}
