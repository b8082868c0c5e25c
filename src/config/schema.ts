import { hostname } from 'node:os';
import convict from 'convict';

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
      doc: "The live-rotate strategy. 'enabled' (default): auto prefers it for running VMs on file pools. It rotates through libvirt, so libvirt's descriptions stay true, but the volume's active layer moves to a new file with every snapshot (the result's volumePath): 'disabled' for a management plane that cannot apply that path (auto then picks lvm-cow and an explicit live-rotate is refused).",
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
    signingKey: {
      doc: 'Shared HMAC-SHA256 key; when set every command must carry a valid x-signature header.',
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
