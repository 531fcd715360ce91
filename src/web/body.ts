/**
 * The form parser of people's pages. A body Deputy cannot read is the sender's mistake: the
 * parser's own errors carry a 4xx status (too large, unsupported charset, malformed), but a
 * body that does not match its Content-Encoding fails in zlib without one, which would be
 * shown as a 500. Those become a 400 page too.
 */
import { bodyParser } from '@koa/bodyparser';
import type Koa from 'koa';
import { PageError } from './errors.ts';

export function formBody(): Koa.Middleware {
  return bodyParser({
    enableTypes: ['form'],
    onError: (error) => {
      const status = (error as { status?: unknown }).status;
      if (typeof status === 'number' && status >= 400 && status < 500) throw error;
      throw new PageError(400, 'Bad request', 'Deputy could not read this request.', { cause: error });
    },
  }) as Koa.Middleware;
}
