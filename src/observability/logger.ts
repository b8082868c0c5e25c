import { pino } from 'pino';

export type Logger = pino.Logger;

/** Paths of fields that may carry secrets; pino replaces their values. */
const REDACT = [
  'signingKey',
  '*.signingKey',
  'password',
  '*.password',
  'url',
  'urls',
  '*.url',
  '*.urls',
  'config.broker.urls',
  'config.security.signingKey',
];

/** JSON logs on stdout (or the given destination), secrets redacted. */
export function createLogger(
  options: { level?: string; name?: string; destination?: pino.DestinationStream } = {},
): Logger {
  const opts: pino.LoggerOptions = {
    level: options.level ?? 'info',
    name: options.name ?? 'clvm-snapshot-agent',
    redact: { paths: REDACT, censor: '[redacted]' },
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return options.destination ? pino(opts, options.destination) : pino(opts);
}

/** A logger that writes nothing, for tests and tools that do not log. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
