import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import type { AgentConfig } from '../config/index.js';
import { ConfigError } from '../errors/index.js';

/** What amqplib hands to tls.connect for `amqps://` URLs (ignored by plain `amqp://`). */
export interface BrokerTlsOptions {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

type TlsConfig = AgentConfig['broker']['tls'];

function readPem(file: string, key: string): Buffer {
  try {
    return readFileSync(file);
  } catch (error) {
    throw new ConfigError(`${key}: cannot read ${file}: ${(error as Error).message}`, { key, cause: error });
  }
}

/**
 * Reads the CA and the optional client certificate and key named by `broker.tls` and checks they
 * are usable PEM (a wrong file fails here, at start, naming the key — not at the first connect).
 * The server's certificate is always verified (Node's default; nothing here turns it off): with
 * `caFile` against that CA, else against the system's CAs.
 * @throws ConfigError naming broker.tls.caFile | certFile | keyFile
 */
export function brokerTlsOptions(tls: TlsConfig | undefined): BrokerTlsOptions {
  if (!tls) return {};
  const options: BrokerTlsOptions = {};
  if (tls.caFile) {
    options.ca = readPem(tls.caFile, 'broker.tls.caFile');
    check(
      () => createSecureContext({ ca: options.ca }),
      'broker.tls.caFile',
      tls.caFile,
      'a PEM CA certificate',
    );
  }
  if (Boolean(tls.certFile) !== Boolean(tls.keyFile)) {
    const key = tls.certFile ? 'broker.tls.keyFile' : 'broker.tls.certFile';
    throw new ConfigError(
      `${key}: a client certificate needs both broker.tls.certFile and broker.tls.keyFile`,
      {
        key,
      },
    );
  }
  if (tls.certFile && tls.keyFile) {
    options.cert = readPem(tls.certFile, 'broker.tls.certFile');
    options.key = readPem(tls.keyFile, 'broker.tls.keyFile');
    check(
      () => createSecureContext({ cert: options.cert }),
      'broker.tls.certFile',
      tls.certFile,
      'a PEM certificate',
    );
    check(
      () => createSecureContext({ cert: options.cert, key: options.key }),
      'broker.tls.keyFile',
      tls.keyFile,
      'the PEM private key of broker.tls.certFile',
    );
  }
  return options;
}

function check(build: () => unknown, key: string, file: string, what: string): void {
  try {
    build();
  } catch (error) {
    throw new ConfigError(`${key}: ${file} is not ${what}: ${(error as Error).message}`, {
      key,
      cause: error,
    });
  }
}
