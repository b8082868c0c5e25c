import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import convict from 'convict';
import { ConfigError, messageOf } from '../errors/index.js';
import { DEFAULT_RETENTION_MS } from '../jobs/journal.js';
import { brokerTlsOptions } from '../messaging/broker-tls.js';
import { configSchema } from './schema.js';

export interface AgentConfig {
  hostId: string;
  broker: {
    urls: string[];
    heartbeatSeconds: number;
    connectTimeoutMs: number;
    reconnectMinMs: number;
    reconnectMaxMs: number;
    confirmTimeoutMs: number;
    prefetch: number;
    /** Optional in the type: configs built by hand (tests) may leave it out. */
    tls?: { caFile: string; certFile: string; keyFile: string };
    outboxStallMs: number;
  };
  topology: {
    commandsExchange: string;
    eventsExchange: string;
    queuePrefix: string;
    deadLetterExchange: string;
    deadLetterQueue: string;
    deliveryLimit: number;
    declare?: boolean;
  };
  stateDir: string;
  store: { roots: string[] };
  pools: { fileRoots: string[]; volumeGroups: string[] };
  snapshot: { liveRotate: 'enabled' | 'disabled' };
  limits: {
    maxConcurrentJobs: number;
    maxMessageBytes: number;
    shutdownGraceMs: number;
    progressIntervalMs: number;
    exportBytesPerSecond: number;
  };
  timeouts: { toolMs: number; exportMs: number };
  libvirt: { uri: string };
  security: {
    publicKeys: Record<string, string>;
    acceptedKeyIds: string[];
    clockSkewMs: number;
    maxCommandLifetimeMs: number;
    signingKey: string;
  };
  http: { host: string; port: number };
  log: { level: string };
}

/** config/default.json, two levels up from src/config or dist/config. */
const DEFAULTS_FILE = fileURLToPath(new URL('../../config/default.json', import.meta.url));

export interface LoadConfigOptions {
  /** A JSON config file; defaults to $AGENT_CONFIG, else config/default.json values only. */
  file?: string;
  env?: NodeJS.ProcessEnv;
  /** Values that win over file and environment (tests, CLI flags). */
  overrides?: Record<string, unknown>;
}

/**
 * Loads defaults, then the config file, then the environment, then overrides, and validates
 * strictly: an unknown key or a bad value is a ConfigError naming the key.
 */
export function loadConfig(options: LoadConfigOptions = {}): { config: AgentConfig; redacted: string } {
  const env = options.env ?? process.env;
  const file = options.file ?? env.AGENT_CONFIG;
  try {
    const conf = convict(configSchema, { env, args: [] });
    // Precedence: schema defaults < config/default.json < config file < environment < overrides.
    if (existsSync(DEFAULTS_FILE)) conf.loadFile(DEFAULTS_FILE);
    if (file) {
      if (!existsSync(file))
        throw new ConfigError(`config file ${file} does not exist`, { key: 'AGENT_CONFIG' });
      conf.loadFile(file);
    }
    // set() wins over the environment, load() would not.
    for (const [key, value] of flatten(options.overrides ?? {})) conf.set(key as never, value as never);
    conf.validate({ allowed: 'strict' });
    const config = conf.getProperties() as unknown as AgentConfig;
    checkSecurity(config.security);
    // Unreadable or malformed TLS files are a configuration error naming the key (exit 78).
    brokerTlsOptions(config.broker.tls);
    // convict.toString() masks every value marked sensitive.
    return { config, redacted: conf.toString() };
  } catch (error) {
    if (error instanceof ConfigError) throw error;
    const message = messageOf(error);
    const key = /^([\w.]+):/.exec(message)?.[1];
    throw new ConfigError(`invalid configuration: ${message}`, { key, cause: error });
  }
}

/** Rules across the security keys (each key alone is checked by the schema). */
function checkSecurity(security: AgentConfig['security']): void {
  const keyIds = Object.keys(security.publicKeys);
  if (keyIds.length > 0 && security.signingKey) {
    throw new ConfigError(
      'security.signingKey: the legacy HMAC key and security.publicKeys are both set; choose one (publicKeys)',
      { key: 'security.signingKey' },
    );
  }
  const unknown = security.acceptedKeyIds.filter((id) => !keyIds.includes(id));
  if (unknown.length > 0) {
    throw new ConfigError(
      `security.acceptedKeyIds: ${unknown.join(', ')} not in security.publicKeys (${keyIds.join(', ') || 'none'})`,
      { key: 'security.acceptedKeyIds' },
    );
  }
  if (security.maxCommandLifetimeMs > DEFAULT_RETENTION_MS) {
    throw new ConfigError(
      `security.maxCommandLifetimeMs: ${security.maxCommandLifetimeMs} is longer than the journal keeps command ids (${DEFAULT_RETENTION_MS} ms)`,
      { key: 'security.maxCommandLifetimeMs' },
    );
  }
}

/** Name of the per-host command queue. */
export function commandQueueName(config: Pick<AgentConfig, 'hostId' | 'topology'>): string {
  return `${config.topology.queuePrefix}${config.hostId}`;
}

function flatten(obj: Record<string, unknown>, prefix = ''): Array<[string, unknown]> {
  return Object.entries(obj).flatMap(([k, v]) =>
    v !== null && typeof v === 'object' && !Array.isArray(v)
      ? flatten(v as Record<string, unknown>, `${prefix}${k}.`)
      : [[`${prefix}${k}`, v] as [string, unknown]],
  );
}
