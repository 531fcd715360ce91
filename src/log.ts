/**
 * Structured JSON logs (pino) on standard error, or the same records made readable for a
 * terminal (pino-pretty) in development. Every line written while a request is served carries
 * its `req_id`. Fields never carry secrets, tokens, codes or whole JWTs; `redact` is a second
 * line of defence for the usual suspects.
 */
import { DrizzleQueryError } from 'drizzle-orm';
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';
import { requestContext } from './ops/context.ts';

/**
 * Errors as pino writes them, but a failed query without the values it was given: those may
 * be a sign-in's PKCE verifier, an oidc-provider payload or whatever a client sent. The query
 * text (placeholders only) and the database's own error stay, without the database's detail
 * line, which repeats the offending key.
 */
function errorWithoutValues(error: unknown): unknown {
  if (!(error instanceof DrizzleQueryError)) return pino.stdSerializers.err(error as Error);
  const message = `Failed query: ${error.query}`;
  const cause = error.cause instanceof Error ? error.cause : undefined;
  return {
    type: 'DrizzleQueryError',
    message,
    stack: error.stack?.replace(error.message, message),
    cause: cause && {
      type: cause.constructor.name,
      message: cause.message,
      code: (cause as { code?: unknown }).code,
    },
  };
}

/** `destination` replaces standard error (the tests read the lines). */
export function createLogger(
  level: string,
  format: 'json' | 'pretty' = 'json',
  destination?: pino.DestinationStream,
): Logger {
  const options: pino.LoggerOptions = {
    level,
    base: { service: 'deputy' },
    mixin() {
      const context = requestContext.getStore();
      return context === undefined ? {} : { req_id: context.id };
    },
    serializers: { err: errorWithoutValues },
    redact: {
      paths: [
        'client_secret',
        '*.client_secret',
        'password',
        '*.password',
        'authorization',
        '*.authorization',
        'headers.authorization',
        'headers.cookie',
      ],
      censor: '[redacted]',
    },
  };
  const stream =
    destination ??
    (format === 'pretty'
      ? pretty({ destination: 2, sync: true, ignore: 'pid,hostname,service', translateTime: 'SYS:HH:MM:ss.l' })
      : pino.destination(2));
  return pino(options, stream);
}
