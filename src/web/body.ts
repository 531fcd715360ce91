/**
 * The form parser of people's pages. A body Deputy cannot read is the sender's mistake: the
 * parser's own errors carry a 4xx status (too large, unsupported charset, malformed), but a
 * body that does not match its Content-Encoding fails in zlib without one, which would be
 * shown as a 500. Those become a 400 page too.
 */
import { bodyParser } from '@koa/bodyparser';
import type Koa from 'koa';
import { PageError } from './errors.ts';

/** What a form may weigh when no limit was set on the request (the parser's own default). */
const DEFAULT_LIMIT_BYTES = 56 * 1024;

/** One parser per limit in use (in practice one: DEPUTY_BODY_LIMIT). */
const parsers = new Map<number, Koa.Middleware>();

function parserFor(limitBytes: number): Koa.Middleware {
  let parser = parsers.get(limitBytes);
  if (parser === undefined) {
    parser = bodyParser({
      enableTypes: ['form'],
      // Held to as the body is read, so a body sent without a length is held to it too.
      formLimit: `${limitBytes}b`,
      onError: (error) => {
        const status = (error as { status?: unknown }).status;
        if (typeof status === 'number' && status >= 400 && status < 500) throw error;
        throw new PageError(400, 'Bad request', 'Deputy could not read this request.', { cause: error });
      },
    }) as Koa.Middleware;
    parsers.set(limitBytes, parser);
  }
  return parser;
}

/** The form parser, held to the body limit the request carries (ops/http.ts bodyLimit). */
export function formBody(): Koa.Middleware {
  return function parseForm(ctx, next) {
    const limit = (ctx.state as { bodyLimit?: number }).bodyLimit ?? DEFAULT_LIMIT_BYTES;
    return parserFor(limit)(ctx, next);
  };
}
