/**
 * The form parser of people's pages, held to DEPUTY_BODY_LIMIT as it reads (so a body sent
 * without a length is held to it too). A body Deputy cannot read is the sender's mistake: the
 * parser's own errors carry a 4xx status (too large, unsupported charset, malformed), but a
 * body that does not match its Content-Encoding fails in zlib without one, which would be
 * shown as a 500. Those become a 400 page too.
 */
import { bodyParser } from '@koa/bodyparser';
import type Koa from 'koa';
import { PageError } from './errors.ts';

export function formBody(limitBytes: number): Koa.Middleware {
  return bodyParser({
    enableTypes: ['form'],
    formLimit: `${limitBytes}b`,
    onError: (error) => {
      const status = (error as { status?: unknown }).status;
      if (typeof status === 'number' && status >= 400 && status < 500) throw error;
      throw new PageError(400, 'Bad request', 'Deputy could not read this request.', { cause: error });
    },
  }) as Koa.Middleware;
}
