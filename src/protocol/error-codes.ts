/**
 * The error-code catalogue: every `error.code` the agent can put in a `rejected` or `failed`
 * event, what it means, whether sending the same command again can help, and for which command
 * types. docs/asyncapi.yaml carries it as a schema enum and a table; test/unit/protocol tests fail
 * when the source can raise a code that is not listed here.
 */
export type Retryable = 'yes' | 'no' | 'depends';

export interface ErrorCodeInfo {
  code: string;
  /** Which terminal event carries it. */
  event: 'rejected' | 'failed';
  retryable: Retryable;
  /** Command types that can get it ('*' = any). */
  commands: readonly string[];
  meaning: string;
}

const ANY = ['*'] as const;
const VOLUME_COMMANDS = [
  'snapshot.create',
  'snapshot.delete',
  'snapshot.revert',
  'chain.verify',
  'volume.resize',
] as const;
const MUTATING = ['snapshot.create', 'snapshot.delete', 'snapshot.revert', 'volume.resize'] as const;

/** Codes of `rejected` events: the command was refused at intake, nothing ran. */
export const REJECTION_CODES = [
  {
    code: 'MESSAGE_TOO_LARGE',
    retryable: 'no',
    commands: ANY,
    meaning: 'The body is larger than limits.maxMessageBytes.',
  },
  {
    code: 'SIGNATURE_MISSING',
    retryable: 'no',
    commands: ANY,
    meaning: 'Signing is on and the signature header is missing.',
  },
  {
    code: 'SIGNATURE_INVALID',
    retryable: 'no',
    commands: ANY,
    meaning:
      'The signature does not match: legacy HMAC over the body, or Ed25519 over the envelope and body by the named key.',
  },
  {
    code: 'SIGNATURE_ENVELOPE_INVALID',
    retryable: 'no',
    commands: ANY,
    meaning:
      'Ed25519 mode: an x-clvm-* envelope header is missing or malformed, or expiresAt is not after issuedAt.',
  },
  {
    code: 'SIGNING_KEY_UNKNOWN',
    retryable: 'no',
    commands: ANY,
    meaning: 'Ed25519 mode: x-clvm-key-id is not in security.publicKeys.',
  },
  {
    code: 'SIGNING_KEY_RETIRED',
    retryable: 'no',
    commands: ANY,
    meaning: 'Ed25519 mode: the key is configured but not in security.acceptedKeyIds (rotated out).',
  },
  {
    code: 'WRONG_HOST',
    retryable: 'no',
    commands: ANY,
    meaning: 'Ed25519 mode: the command is signed for another host (x-clvm-host-id).',
  },
  {
    code: 'COMMAND_LIFETIME_TOO_LONG',
    retryable: 'no',
    commands: ANY,
    meaning: 'Ed25519 mode: expiresAt - issuedAt is more than security.maxCommandLifetimeMs.',
  },
  {
    code: 'COMMAND_NOT_YET_VALID',
    retryable: 'no',
    commands: ANY,
    meaning: 'Ed25519 mode: issuedAt is further in the future than security.clockSkewMs.',
  },
  {
    code: 'COMMAND_EXPIRED',
    retryable: 'no',
    commands: ANY,
    meaning: 'Ed25519 mode: expiresAt has passed; sign the command again (with a new id).',
  },
  {
    code: 'COMMAND_REPLAYED',
    retryable: 'no',
    commands: ANY,
    meaning:
      'Ed25519 mode: this command id was already received (a signed command runs once; the first job is unaffected).',
  },
  {
    code: 'UNSUPPORTED_CONTENT_TYPE',
    retryable: 'no',
    commands: ANY,
    meaning: 'The AMQP content-type is neither absent nor application/json (charset utf-8 allowed).',
  },
  {
    code: 'UNSUPPORTED_CONTENT_ENCODING',
    retryable: 'no',
    commands: ANY,
    meaning: 'The AMQP content-encoding is neither absent nor identity (bodies are never compressed).',
  },
  {
    code: 'INVALID_UTF8',
    retryable: 'no',
    commands: ANY,
    meaning: 'The body is not valid UTF-8 (bad bytes, overlong sequences, encoded surrogates).',
  },
  { code: 'INVALID_JSON', retryable: 'no', commands: ANY, meaning: 'The body is not JSON.' },
  {
    code: 'INVALID_UNICODE',
    retryable: 'no',
    commands: ANY,
    meaning: 'A string (key or value) holds a lone UTF-16 surrogate (\\uD800-\\uDFFF escape) or a NUL.',
  },
  {
    code: 'UNKNOWN_COMMAND_TYPE',
    retryable: 'no',
    commands: ANY,
    meaning: '`type` is a string but not a known command type.',
  },
  {
    code: 'SCHEMA_INVALID',
    retryable: 'no',
    commands: ANY,
    meaning: 'The command does not match its JSON Schema (missing, extra or mistyped field, bound).',
  },
  {
    code: 'INVALID_ID',
    retryable: 'no',
    commands: ANY,
    meaning: 'The command id does not match the id pattern.',
  },
  {
    code: 'INVALID_NAME',
    retryable: 'no',
    commands: ANY,
    meaning: 'A VG/LV, VM or file name does not match its pattern.',
  },
  {
    code: 'INVALID_PATH',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning:
      'A path is not absolute and normalised or a directory is not relative segments; or a symlink on it dangles.',
  },
  {
    code: 'MESSAGE_ID_MISMATCH',
    retryable: 'no',
    commands: ANY,
    meaning: 'The AMQP messageId is set and differs from the command id.',
  },
  {
    code: 'STORE_ROOT_NOT_CONFIGURED',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'params.store.root is not exactly one of the configured store roots (config.store.roots).',
  },
  {
    code: 'PATH_OUTSIDE_ROOTS',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'A path is not under a configured root, or a symlink on it points out of the roots.',
  },
  {
    code: 'VOLUME_GROUP_NOT_ALLOWED',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'The VG is not in config.pools.volumeGroups (when that list is set).',
  },
  {
    code: 'ID_CONFLICT',
    retryable: 'no',
    commands: ANY,
    meaning: 'The command id is already used by a command with a different body; this one does not run.',
  },
  {
    code: 'INTAKE_FAILED',
    retryable: 'yes',
    commands: ANY,
    meaning: 'Intake itself failed (e.g. a root could not be read); not the command’s fault.',
  },
  {
    code: 'JOURNAL_UNAVAILABLE',
    retryable: 'yes',
    commands: ANY,
    meaning: 'The job could not be journaled (disk full, read-only state dir).',
  },
] as const satisfies ReadonlyArray<Omit<ErrorCodeInfo, 'event'>>;

/** Codes of `failed` events: the job ran (or started) and ended in error. `QMP_<CLASS>` codes too. */
export const FAILURE_CODES = [
  {
    code: 'NOT_IMPLEMENTED',
    retryable: 'no',
    commands: ANY,
    meaning: 'This agent has no handler for the command type.',
  },
  {
    code: 'INTERNAL',
    retryable: 'no',
    commands: ANY,
    meaning: 'An unexpected error (a bug); details in the agent log.',
  },
  {
    code: 'JOB_CANCELLED',
    retryable: 'depends',
    commands: ANY,
    meaning: 'Cancelled by job.cancel (no), or aborted by an agent shutdown (yes).',
  },
  {
    code: 'JOB_INTERRUPTED',
    retryable: 'yes',
    commands: MUTATING,
    meaning: 'The agent died mid-job; recovery rolled it back.',
  },
  {
    code: 'INVALID_NAME',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'A name found on the host (not in the command) is not a valid name.',
  },
  {
    code: 'INVALID_PATH',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'A path found on the host (a backing file) is not acceptable.',
  },
  {
    code: 'PATH_OUTSIDE_ROOTS',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'A path found on the host lies outside the configured roots.',
  },
  {
    code: 'PATH_ESCAPES_ROOTS',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning:
      'A path under a root resolved, right before qemu-img was to use it, to a place outside the roots (a symlink swapped in after intake).',
  },
  {
    code: 'INVALID_SIZE',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'A size reported by a tool is not usable.',
  },
  {
    code: 'INVALID_ARGUMENT',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'An argument built for a host tool was refused before the call.',
  },
  {
    code: 'INVALID_TAG',
    retryable: 'no',
    commands: MUTATING,
    meaning: 'A temporary-volume tag is not valid.',
  },
  {
    code: 'INVALID_DISK_TARGET',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'The VM disk target name is not valid.',
  },
  {
    code: 'INVALID_ACTIVATION_MODE',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'An LVM activation mode is not valid.',
  },
  {
    code: 'INVALID_DOMAIN_NAME',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'The libvirt domain name is not valid.',
  },
  {
    code: 'BACKING_OUTSIDE_STORE',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'A backing file points outside the snapshot store.',
  },
  {
    code: 'POOL_NOT_FOUND',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'The file pool directory does not exist.',
  },
  {
    code: 'SNAPSHOT_NOT_IN_CHAIN',
    retryable: 'no',
    commands: ['snapshot.delete', 'snapshot.revert'],
    meaning: '`snapshot` is not a member of `chain`.',
  },
  {
    code: 'SNAPSHOT_NOT_FOUND',
    retryable: 'no',
    commands: ['snapshot.delete', 'snapshot.revert', 'chain.verify'],
    meaning: 'A snapshot file of the chain is missing.',
  },
  {
    code: 'SNAPSHOT_IN_USE',
    retryable: 'depends',
    commands: ['snapshot.delete'],
    meaning: 'The snapshot backs a disk in use.',
  },
  {
    code: 'VOLUME_NOT_FOUND',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'The volume does not exist.',
  },
  {
    code: 'VOLUME_STATE_UNEXPECTED',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'The volume is not in the state the command assumes (e.g. not QCOW2).',
  },
  {
    code: 'LAYER_MERGE_NOT_DURABLE',
    retryable: 'no',
    commands: ['snapshot.create'],
    meaning:
      "live-rotate merged a layer into the volume's base, but the base's flush failed (a write error at writeback, or no answer): the base may lack writes only that layer still holds (details.keptLayers). The layer is kept and marked, and snapshot.create refuses the volume until an operator repairs it (docs/strategies.md, live-rotate).",
  },
  {
    code: 'VOLUME_SHRINK_REFUSED',
    retryable: 'no',
    commands: ['volume.resize'],
    meaning: 'volume.resize asked for a size smaller than the volume: shrinking would cut off guest data.',
  },
  {
    code: 'VOLUME_NOT_ATTACHED',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'The volume is not a disk of the named VM.',
  },
  {
    code: 'VM_NOT_FOUND',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'The libvirt domain does not exist.',
  },
  {
    code: 'VM_STATE_INVALID',
    retryable: 'yes',
    commands: VOLUME_COMMANDS,
    meaning: 'The VM is in a state the operation cannot work in.',
  },
  {
    code: 'DISK_TARGET_NOT_FOUND',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'libvirt does not show the disk of the volume.',
  },
  {
    code: 'NODE_HAS_NO_FILE_CHILD',
    retryable: 'no',
    commands: ['snapshot.create'],
    meaning: 'QEMU block node has no file child (live rotation).',
  },
  {
    code: 'STRATEGY_UNAVAILABLE',
    retryable: 'no',
    commands: ['snapshot.create'],
    meaning: 'The requested strategy cannot run here (disabled, tool or VM state missing).',
  },
  {
    code: 'REFLINK_UNSUPPORTED',
    retryable: 'no',
    commands: ['snapshot.create'],
    meaning: 'The file system cannot reflink.',
  },
  {
    code: 'CHAIN_INVALID',
    retryable: 'no',
    commands: ['chain.verify', 'snapshot.create', 'snapshot.delete', 'snapshot.revert'],
    meaning: 'The chain is broken; details.problems lists why.',
  },
  {
    code: 'COW_OVERFLOW',
    retryable: 'yes',
    commands: ['snapshot.create'],
    meaning: 'The LVM COW snapshot filled up during the export.',
  },
  {
    code: 'STORE_FULL',
    retryable: 'yes',
    commands: MUTATING,
    meaning: 'Not enough space in the snapshot store.',
  },
  { code: 'POOL_FULL', retryable: 'yes', commands: MUTATING, meaning: 'Not enough space in the pool / VG.' },
  { code: 'PATH_EXISTS', retryable: 'no', commands: MUTATING, meaning: 'The target file already exists.' },
  {
    code: 'LVM_VOLUME_NOT_FOUND',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'The LV does not exist.',
  },
  {
    code: 'LVM_VOLUME_IN_USE',
    retryable: 'yes',
    commands: VOLUME_COMMANDS,
    meaning: 'The LV is open elsewhere.',
  },
  {
    code: 'LVM_REPORT_INVALID',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'LVM printed a report the agent cannot read.',
  },
  {
    code: 'QEMU_IMG_OUTPUT_INVALID',
    retryable: 'no',
    commands: VOLUME_COMMANDS,
    meaning: 'qemu-img printed output the agent cannot read.',
  },
  { code: 'HOST_TOOL_MISSING', retryable: 'no', commands: ANY, meaning: 'A host tool is not installed.' },
  {
    code: 'HOST_NOT_FOUND',
    retryable: 'no',
    commands: ANY,
    meaning: 'A host tool reported a missing object.',
  },
  {
    code: 'HOST_BUSY',
    retryable: 'yes',
    commands: ANY,
    meaning: 'A host tool reported a busy resource, or the store refused a call as busy (EBUSY).',
  },
  {
    code: 'HOST_NO_SPACE',
    retryable: 'no',
    commands: ANY,
    meaning:
      'A host tool or a system call ran out of space (ENOSPC, EDQUOT); free space before sending it again.',
  },
  {
    code: 'HOST_IO_ERROR',
    retryable: 'yes',
    commands: ANY,
    meaning:
      'A disk or the store returned an I/O error (EIO, ESTALE, EROFS); the job rolled back where it could.',
  },
  {
    code: 'HOST_INVALID_ARGUMENT',
    retryable: 'no',
    commands: ANY,
    meaning: 'A host tool refused its arguments.',
  },
  {
    code: 'HOST_TRANSIENT',
    retryable: 'yes',
    commands: ANY,
    meaning: 'A host tool failed in a way that may pass.',
  },
  {
    code: 'HOST_TIMEOUT',
    retryable: 'yes',
    commands: ANY,
    meaning: 'A host tool did not finish within its timeout.',
  },
  {
    code: 'HOST_ABORTED',
    retryable: 'yes',
    commands: ANY,
    meaning: 'A host tool was stopped (cancel or shutdown).',
  },
  {
    code: 'HOST_COMMAND_FAILED',
    retryable: 'no',
    commands: ANY,
    meaning: 'A host tool failed otherwise; details carry its stderr.',
  },
  {
    code: 'BROKER_UNAVAILABLE',
    retryable: 'yes',
    commands: ANY,
    meaning: 'The broker could not be reached.',
  },
  {
    code: 'BROKER_UNREACHABLE',
    retryable: 'yes',
    commands: ANY,
    meaning: 'The broker could not be reached (client side).',
  },
  {
    code: 'NOT_ROUTED',
    retryable: 'no',
    commands: ANY,
    meaning:
      'The exchange or queue a command or a subscription needs does not exist on the broker: no agent declared it (client side).',
  },
  {
    code: 'TIMEOUT',
    retryable: 'yes',
    commands: ANY,
    meaning: 'No terminal event arrived within the wait; the job may still be running (client side).',
  },
  {
    code: 'OUTBOX_UNAVAILABLE',
    retryable: 'yes',
    commands: ANY,
    meaning: 'The event outbox could not be written.',
  },
  {
    code: 'JOURNAL_UNAVAILABLE',
    retryable: 'yes',
    commands: ANY,
    meaning: 'The job journal could not be written.',
  },
  { code: 'PUBLISH_NACKED', retryable: 'yes', commands: ANY, meaning: 'The broker refused a publish.' },
  {
    code: 'PUBLISH_TIMEOUT',
    retryable: 'yes',
    commands: ANY,
    meaning: 'A publisher confirm did not come in time.',
  },
  {
    code: 'PUBLISHER_NOT_RUNNING',
    retryable: 'yes',
    commands: ANY,
    meaning: 'The event publisher was stopped.',
  },
  {
    code: 'EVENT_UNPUBLISHABLE',
    retryable: 'no',
    commands: ANY,
    meaning: 'An event the broker can never accept (quarantined).',
  },
] as const satisfies ReadonlyArray<Omit<ErrorCodeInfo, 'event'>>;

/** Codes of failures from QEMU's QMP: QMP_ + QEMU's error class in upper snake case. */
export const QMP_CODE_PATTERN = '^QMP_[A-Z][A-Z0-9_]*$';

export type RejectionCode = (typeof REJECTION_CODES)[number]['code'];

export const ERROR_CATALOGUE: readonly ErrorCodeInfo[] = [
  ...REJECTION_CODES.map((c) => ({ ...c, event: 'rejected' as const })),
  ...FAILURE_CODES.map((c) => ({ ...c, event: 'failed' as const })),
];

export const REJECTION_CODE_LIST: readonly RejectionCode[] = REJECTION_CODES.map((c) => c.code);
export const FAILURE_CODE_LIST: readonly string[] = FAILURE_CODES.map((c) => c.code);
