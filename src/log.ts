/**
 * Structured JSON logs (pino) on standard error. Fields never carry secrets, tokens, codes or
 * whole JWTs; `redact` is a second line of defence for the usual suspects.
 */
import pino, { type Logger } from 'pino';

export function createLogger(level: string): Logger {
  return pino(
    {
      level,
      base: { service: 'deputy' },
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
    },
    pino.destination(2),
  );
}
