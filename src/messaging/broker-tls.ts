import { readFileSync } from 'node:fs';
import { createSecureContext, type SecureContextOptions } from 'node:tls';
import type { AgentConfig } from '../config/index.js';
import { ConfigError, messageOf } from '../errors/index.js';

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
    throw new ConfigError(`${key}: cannot read ${file}: ${messageOf(error)}`, { key, cause: error });
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
    options.ca = usablePem('broker.tls.caFile', tls.caFile, 'a PEM CA certificate', (ca) => ({ ca }));
  }
  if (Boolean(tls.certFile) !== Boolean(tls.keyFile)) {
    const key = tls.certFile ? 'broker.tls.keyFile' : 'broker.tls.certFile';
    throw new ConfigError(
      `${key}: a client certificate needs both broker.tls.certFile and broker.tls.keyFile`,
      { key },
    );
  }
  if (tls.certFile && tls.keyFile) {
    const cert = usablePem('broker.tls.certFile', tls.certFile, 'a PEM certificate', (pem) => ({
      cert: pem,
    }));
    options.cert = cert;
    options.key = usablePem(
      'broker.tls.keyFile',
      tls.keyFile,
      'the PEM private key of broker.tls.certFile',
      (pem) => ({ cert, key: pem }),
    );
  }
  return options;
}

/** Reads `file` (config `key`) and checks that TLS takes it as `what` in `context`. */
function usablePem(
  key: string,
  file: string,
  what: string,
  context: (pem: Buffer) => SecureContextOptions,
): Buffer {
  const pem = readPem(file, key);
  try {
    createSecureContext(context(pem));
  } catch (error) {
    throw new ConfigError(`${key}: ${file} is not ${what}: ${messageOf(error)}`, { key, cause: error });
  }
  return pem;
}
