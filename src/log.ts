/**
 * Structured JSON logs (pino) on standard error, or the same records made readable for a
 * terminal (pino-pretty) in development. Every line written while a request is served carries
 * its `req_id`. Fields never carry secrets, tokens, codes or whole JWTs; `redact` is a second
 * line of defence for the usual suspects.
 */
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';
import { requestContext } from './ops/context.ts';

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
