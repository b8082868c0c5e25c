import { hostname } from 'node:os';
import convict from 'convict';
import { ENVELOPE_FIELD_PATTERNS, parsePublicKey } from '../protocol/signing.js';

/** Paths must be absolute and normalised: config is where the confinement roots come from. */
function absolutePaths(value: unknown): void {
  if (!Array.isArray(value)) throw new Error('must be a list of absolute paths');
  for (const p of value) {
    if (typeof p !== 'string' || !p.startsWith('/') || p.split('/').includes('..')) {
      throw new Error(`"${String(p)}" is not an absolute path without ".."`);
    }
  }
}

function brokerUrls(value: unknown): void {
  if (!Array.isArray(value) || value.length === 0)
    throw new Error('must list at least one amqp:// or amqps:// URL');
  for (const url of value) {
    if (typeof url !== 'string' || !/^amqps?:\/\/[^\s]+$/.test(url))
      throw new Error('each URL must start with amqp:// or amqps://');
  }
}

const splitList = (v: unknown): unknown =>
  typeof v === 'string'
    ? v
        .split(',')
        .map((x) => x.trim())
        .filter(Boolean)
    : v;

// Lists come from the environment as comma-separated strings.
convict.addFormat({ name: 'absolute-paths', validate: absolutePaths, coerce: splitList });
convict.addFormat({ name: 'broker-urls', validate: brokerUrls, coerce: splitList });
convict.addFormat({
  name: 'string-list',
  validate: (v: unknown) => {
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string'))
      throw new Error('must be a list of strings');
  },
  coerce: splitList,
});

/** `{ keyId: publicKey }`; from the environment as `id=key,id=key` (a key's base64 may end in `=`). */
convict.addFormat({
  name: 'public-key-map',
  validate: (value: unknown) => {
    if (value === null || typeof value !== 'object' || Array.isArray(value))
      throw new Error('must be an object of key id → Ed25519 public key');
    for (const [id, key] of Object.entries(value)) {
      if (!ENVELOPE_FIELD_PATTERNS.keyId.test(id))
        throw new Error(`key id ${JSON.stringify(id)} must be 1-64 letters, digits or _.:-`);
      if (typeof key !== 'string') throw new Error(`key ${id} must be a string`);
      try {
        parsePublicKey(key);
      } catch (error) {
        throw new Error(`key ${id} ${(error as Error).message}`);
      }
    }
  },
  coerce: (v: unknown) => {
    if (typeof v !== 'string') return v;
    const entries = v
      .split(',')
      .map((x) => x.trim())
      .filter(Boolean)
      .map((pair) => {
        const at = pair.indexOf('=');
        return at > 0 ? [pair.slice(0, at), pair.slice(at + 1)] : [pair, ''];
      });
    return Object.fromEntries(entries);
  },
});

function positiveInt(value: unknown): void {
  if (!Number.isInteger(value) || (value as number) <= 0) throw new Error('must be a positive integer');
}

/** The convict schema: every setting, its default, its environment variable. */
export const configSchema = {
  hostId: {
    doc: 'Identity of this hypervisor: names its command queue and appears in every event. Defaults to the hostname.',
    format: (v: unknown) => {
      if (typeof v !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/.test(v)) {
        throw new Error(
          'must be 1-63 characters of letters, digits, "-" or "_" (no dots: it is a routing-key word)',
        );
      }
    },
    default: hostname().split('.')[0] ?? 'localhost',
    env: 'AGENT_HOST_ID',
  },
  broker: {
    urls: {
      doc: 'RabbitMQ URLs, tried in turn when reconnecting (comma-separated in the environment).',
      format: 'broker-urls',
      default: ['amqp://guest:guest@127.0.0.1:5672'],
      env: 'AGENT_BROKER_URLS',
      sensitive: true,
    },
    heartbeatSeconds: { doc: 'AMQP heartbeat.', format: 'nat', default: 15, env: 'AGENT_BROKER_HEARTBEAT' },
    connectTimeoutMs: { doc: 'Timeout of one connection attempt.', format: positiveInt, default: 5000 },
    reconnectMinMs: {
      doc: 'First reconnect delay (jittered, doubled up to the max).',
      format: positiveInt,
      default: 200,
    },
    reconnectMaxMs: { doc: 'Longest reconnect delay.', format: positiveInt, default: 10_000 },
    confirmTimeoutMs: {
      doc: 'How long to wait for a publisher confirm.',
      format: positiveInt,
      default: 10_000,
    },
    prefetch: { doc: 'Unacknowledged commands the consumer may hold.', format: positiveInt, default: 4 },
    tls: {
      caFile: {
        doc: "PEM CA certificate(s) that signed the broker's certificate, for amqps:// URLs (empty: the system's CAs). The broker's certificate is always verified.",
        format: String,
        default: '',
        env: 'AGENT_BROKER_CA_FILE',
      },
      certFile: {
        doc: 'PEM client certificate presented to the broker (optional; with broker.tls.keyFile).',
        format: String,
        default: '',
        env: 'AGENT_BROKER_CERT_FILE',
      },
      keyFile: {
        doc: 'PEM private key of broker.tls.certFile.',
        format: String,
        default: '',
        env: 'AGENT_BROKER_KEY_FILE',
      },
    },
    outboxStallMs: {
      doc: 'While the broker is connected, /readyz reports not ready when the oldest unsent event has not moved for this long.',
      format: positiveInt,
      default: 60_000,
      env: 'AGENT_OUTBOX_STALL_MS',
    },
  },
  topology: {
    commandsExchange: {
      doc: 'Direct exchange that routes commands by host id.',
      format: String,
      default: 'clvm.commands',
    },
    eventsExchange: { doc: 'Topic exchange for events.', format: String, default: 'clvm.events' },
    queuePrefix: {
      doc: 'Per-host command queue name = prefix + hostId.',
      format: String,
      default: 'clvm.agent.',
    },
    deadLetterExchange: { doc: 'Where refused commands go.', format: String, default: 'clvm.commands.dlx' },
    deadLetterQueue: {
      doc: 'Queue bound to the dead-letter exchange.',
      format: String,
      default: 'clvm.commands.dead',
    },
    deliveryLimit: {
      doc: 'Redeliveries before a command is dead-lettered.',
      format: positiveInt,
      default: 5,
    },
    declare: {
      doc: "Declare the exchanges, the dead-letter queue and this host's queue at start (true), or only check that they exist (false: for a broker user with only this host's rights, from 'snapctl broker provision-host', which declares them).",
      format: Boolean,
      default: true,
      env: 'AGENT_DECLARE_TOPOLOGY',
    },
  },
  stateDir: {
    doc: 'Local directory for the job journal and the event outbox (must survive restarts).',
    format: String,
    default: '/var/lib/clvm-snapshot-agent',
    env: 'AGENT_STATE_DIR',
  },
  store: {
    roots: {
      doc: 'Snapshot store roots (NFS mounts); every store path of a command must be under one.',
      format: 'absolute-paths',
      default: ['/mnt/snapstore'],
      env: 'AGENT_STORE_ROOTS',
    },
  },
  snapshot: {
    liveRotate: {
      doc: "The live-rotate strategy. 'enabled' (default): auto prefers it for running VMs (file pools and LVM). It rotates through libvirt, so libvirt's descriptions stay true, but the volume's active layer moves to a new file or LV with every snapshot (the result's volumePath): 'disabled' for a management plane that cannot apply that path (auto then picks lvm-cow and an explicit live-rotate is refused).",
      format: ['disabled', 'enabled'],
      default: 'enabled',
      env: 'AGENT_LIVE_ROTATE',
    },
  },
  pools: {
    fileRoots: {
      doc: 'Directories that hold file pools; file volumes must be under one.',
      format: 'absolute-paths',
      default: ['/var/lib/libvirt/images'],
      env: 'AGENT_POOL_ROOTS',
    },
    volumeGroups: {
      doc: 'LVM volume groups the agent may touch (empty: any VG whose name is valid).',
      format: 'string-list',
      default: [] as string[],
      env: 'AGENT_VOLUME_GROUPS',
    },
  },
  limits: {
    maxConcurrentJobs: {
      doc: 'Jobs running at once on this host.',
      format: positiveInt,
      default: 2,
      env: 'AGENT_MAX_JOBS',
    },
    maxMessageBytes: { doc: 'Larger command bodies are rejected.', format: positiveInt, default: 64 * 1024 },
    shutdownGraceMs: {
      doc: 'On SIGTERM, how long running jobs may take to finish.',
      format: 'nat',
      default: 120_000,
      env: 'AGENT_SHUTDOWN_GRACE_MS',
    },
    exportBytesPerSecond: {
      doc: "Bandwidth of this host's snapshot exports together, in bytes per second (qemu-img convert -r); 0: no limit. Concurrent exports take turns at this rate, so together they never exceed it; a command's options.bandwidthBytesPerSecond may only lower it.",
      format: 'nat',
      default: 0,
      env: 'AGENT_EXPORT_BYTES_PER_SECOND',
    },
    progressIntervalMs: {
      doc: 'At most one progress event per job per interval.',
      format: 'nat',
      default: 1000,
    },
  },
  timeouts: {
    toolMs: {
      doc: 'Timeout of a short host-tool call (info, lvs, virsh...).',
      format: positiveInt,
      default: 60_000,
    },
    exportMs: {
      doc: 'Timeout of an export or merge (qemu-img convert/commit).',
      format: positiveInt,
      default: 6 * 3600_000,
    },
  },
  libvirt: {
    uri: {
      doc: 'libvirt connection URI.',
      format: String,
      default: 'qemu:///system',
      env: 'AGENT_LIBVIRT_URI',
    },
  },
  security: {
    publicKeys: {
      doc: 'Ed25519 public keys that may sign commands, by key id: {"<keyId>": "<base64 of the raw 32-byte key, or a PEM block>"} (environment: id=key,id=key). When set, every command must carry a valid Ed25519 envelope (docs/asyncapi.yaml).',
      format: 'public-key-map',
      default: {} as Record<string, string>,
      env: 'AGENT_PUBLIC_KEYS',
    },
    acceptedKeyIds: {
      doc: 'Key ids of security.publicKeys that are accepted now (empty: all of them). A listed key that is left out here is retired: commands signed with it are refused SIGNING_KEY_RETIRED.',
      format: 'string-list',
      default: [] as string[],
      env: 'AGENT_ACCEPTED_KEY_IDS',
    },
    clockSkewMs: {
      doc: "How far in the future a command's issuedAt may lie (clock difference between the management plane and this host).",
      format: 'nat',
      default: 300_000,
      env: 'AGENT_CLOCK_SKEW_MS',
    },
    maxCommandLifetimeMs: {
      doc: 'Longest expiresAt - issuedAt a signed command may have. The journal keeps every command id at least until its expiresAt, so a signed command never runs twice.',
      format: positiveInt,
      default: 24 * 3600_000,
      env: 'AGENT_MAX_COMMAND_LIFETIME_MS',
    },
    signingKey: {
      doc: 'LEGACY, weaker: a shared HMAC-SHA256 key; when set (and no publicKeys) every command must carry a valid x-signature header over its body only. Every agent holding it can sign commands for every other host, and nothing stops a replay once the id has left the journal; use publicKeys.',
      format: String,
      default: '',
      env: 'AGENT_SIGNING_KEY',
      sensitive: true,
    },
  },
  http: {
    host: {
      doc: 'Address of the health and metrics server.',
      format: String,
      default: '0.0.0.0',
      env: 'AGENT_HTTP_HOST',
    },
    port: {
      doc: 'Port of the health and metrics server (0: any free port).',
      format: 'port',
      default: 9464,
      env: 'AGENT_HTTP_PORT',
    },
  },
  log: {
    level: {
      doc: 'pino log level.',
      format: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
      default: 'info',
      env: 'AGENT_LOG_LEVEL',
    },
  },
} satisfies convict.Schema<unknown>;
