import { z } from 'zod';
import { strategyName, volumeRef } from './commands.js';
import {
  FAILURE_CODE_LIST,
  QMP_CODE_PATTERN,
  REJECTION_CODE_LIST,
  type RejectionCode,
} from './error-codes.js';

/** Event kinds; the last word of the routing key and of the CloudEvents type. */
export const EVENT_KINDS = [
  'accepted',
  'rejected',
  'progress',
  'succeeded',
  'failed',
  'started',
  'stopping',
  'quarantined',
] as const;
export type EventKind = (typeof EVENT_KINDS)[number];
/** Kinds that end a job: exactly one of them is published per command id. */
export const TERMINAL_KINDS: ReadonlySet<EventKind> = new Set(['succeeded', 'failed', 'rejected']);

export const eventTypePrefix = 'io.clvm.snapshot-agent.';

export const rejectionCode = z.enum(REJECTION_CODE_LIST as [RejectionCode, ...RejectionCode[]]).meta({
  id: 'RejectionCode',
  description: 'Every code a `rejected` event can carry (see the catalogue table).',
});
/**
 * `failed` codes are open (an upper-snake word): the catalogue lists those of this version, and a
 * client treats an unknown one as a failure it has no special handling for (see `retryable`).
 */
export const failureCode = z
  .string()
  .regex(/^[A-Z][A-Z0-9_]*$/, 'an upper-snake-case code')
  .meta({
    id: 'FailureCode',
    description: `A \`failed\` event's code. The catalogue lists those of this version: ${FAILURE_CODE_LIST.join(', ')}, and ${QMP_CODE_PATTERN}. Treat an unknown code as a generic failure and use \`retryable\`.`,
  });

function errorInfo<C extends z.ZodType>(code: C, id: string) {
  return z
    .object({
      code,
      message: z.string(),
      retryable: z.boolean(),
      field: z.string().optional(),
      details: z.record(z.string(), z.unknown()).optional(),
    })
    .meta({ id });
}

export const acceptedData = z
  .object({ jobId: z.string(), commandType: z.string(), volume: volumeRef.nullable() })
  .meta({ id: 'AcceptedData' });

export const rejectedData = z
  .object({
    jobId: z.string().nullable().describe('the command id when it could be read'),
    commandType: z.string().nullable(),
    error: errorInfo(rejectionCode, 'RejectionError'),
  })
  .meta({ id: 'RejectedData' });

export const progressData = z
  .object({
    jobId: z.string(),
    step: z.string(),
    stepIndex: z.number().int().min(0),
    stepCount: z.number().int().min(1),
    percent: z.number().min(0).max(100).optional(),
    bytesDone: z.number().int().min(0).optional(),
    bytesTotal: z.number().int().min(0).optional(),
    bytesPerSecond: z.number().min(0).optional(),
  })
  .meta({ id: 'ProgressData' });

export const pingResult = z
  .object({
    agentVersion: z.string(),
    hostId: z.string(),
    tools: z.object({
      qemuImg: z.string().nullable(),
      qemu: z.string().nullable(),
      libvirt: z.string().nullable(),
      lvm2: z.string().nullable(),
    }),
    strategies: z.array(strategyName),
  })
  .meta({ id: 'PingResult' });

export const snapshotInfo = z
  .object({
    name: z.string(),
    path: z.string(),
    parent: z.string().nullable(),
    kind: z.enum(['full', 'delta']),
    fullReason: z.string().optional(),
    physicalSize: z.number().int().min(0),
    virtualSize: z.number().int().min(0),
    chainDepth: z.number().int().min(1),
  })
  .meta({ id: 'SnapshotInfo' });

export const snapshotCreateResult = z
  .object({
    snapshot: snapshotInfo,
    strategy: z.object({ name: strategyName.exclude(['auto']), reason: z.string() }),
    vmPauseMs: z.number().min(0),
    activePath: z.string(),
    volumePath: z
      .string()
      .optional()
      .describe(
        "Where the volume's active layer is after the job: the path to give libvirt for the volume from now on. live-rotate moves it to a new file with every snapshot (<volume>.lr-a, .lr-b...); absent or equal to activePath otherwise.",
      ),
    quiesced: z.enum(['yes', 'not-requested', 'unavailable']).optional(),
    steps: z.array(z.object({ name: z.string(), durationMs: z.number().min(0) })),
  })
  .meta({ id: 'SnapshotCreateResult' });
export type SnapshotCreateResult = z.infer<typeof snapshotCreateResult>;

export const snapshotDeleteResult = z
  .object({
    deleted: z.string().describe('name of the removed snapshot'),
    path: z.string(),
    mergedInto: z.string().describe('the image that took over its data (its child, or the active volume)'),
    childBacking: z
      .string()
      .nullable()
      .describe("the child's new backing file (null: it became a full image)"),
  })
  .meta({ id: 'SnapshotDeleteResult' });

export const snapshotRevertResult = z
  .object({
    activePath: z.string(),
    revertedTo: z.string(),
    mode: z.enum(['overlay', 'flatten']),
    backing: z.string().nullable().describe('overlay: the snapshot the volume now backs onto; flatten: null'),
  })
  .meta({ id: 'SnapshotRevertResult' });

export const chainVerifyResult = z
  .object({
    ok: z.literal(true),
    members: z.array(
      z.object({
        name: z.string(),
        path: z.string(),
        backing: z.string().nullable(),
        corruptions: z.number().int().min(0),
        leaks: z.number().int().min(0),
      }),
    ),
    active: z.object({ path: z.string(), backing: z.string().nullable() }).optional(),
    compare: z
      .object({ snapshot: z.string(), image: z.string(), identical: z.boolean(), message: z.string() })
      .optional(),
  })
  .meta({ id: 'ChainVerifyResult' });

export const volumeResizeResult = z
  .object({
    volumePath: z.string().describe("the volume's active layer (the path the VM's disk opens)"),
    previousVirtualSize: z.number().int().min(0),
    virtualSize: z.number().int().min(0),
    through: z
      .enum(['libvirt', 'qemu-img', 'unchanged'])
      .describe(
        'libvirt: virsh blockresize of the running disk; qemu-img: nothing held it; unchanged: it already had the size',
      ),
    lvs: z
      .array(z.object({ path: z.string(), sizeBytes: z.number().int().min(0) }))
      .describe("LVM: the volume's LVs in its chain and their sizes after lvextend; file pools: empty"),
  })
  .meta({ id: 'VolumeResizeResult' });
export type VolumeResizeResult = z.infer<typeof volumeResizeResult>;

export const jobCancelResult = z
  .object({
    cancelled: z.boolean(),
    state: z.enum(['unknown', 'queued', 'running', 'succeeded', 'failed']),
  })
  .meta({ id: 'JobCancelResult' });

/** The `result` of a `succeeded` event, per command type. */
export const COMMAND_RESULTS = {
  'agent.ping': pingResult,
  'snapshot.create': snapshotCreateResult,
  'snapshot.delete': snapshotDeleteResult,
  'snapshot.revert': snapshotRevertResult,
  'chain.verify': chainVerifyResult,
  'volume.resize': volumeResizeResult,
  'job.cancel': jobCancelResult,
} as const;

export const succeededData = z
  .object({
    jobId: z.string(),
    commandType: z.string(),
    durationMs: z.number().min(0),
    result: z
      .record(z.string(), z.unknown())
      .describe(
        'per commandType: agent.ping → PingResult, snapshot.create → SnapshotCreateResult, snapshot.delete → SnapshotDeleteResult, snapshot.revert → SnapshotRevertResult, chain.verify → ChainVerifyResult, volume.resize → VolumeResizeResult, job.cancel → JobCancelResult',
      ),
  })
  .meta({ id: 'SucceededData' });

export const failedData = z
  .object({
    jobId: z.string(),
    commandType: z.string(),
    durationMs: z.number().min(0),
    error: errorInfo(failureCode, 'FailureError'),
    rolledBack: z.boolean().describe('every step done was undone: the volume is as before'),
    retryable: z.boolean().describe('sending the same command again could succeed'),
    recovered: z.boolean().optional().describe('ended by start-up recovery after an agent crash'),
  })
  .meta({ id: 'FailedData' });

export const agentLifecycleData = z
  .object({ hostId: z.string(), agentVersion: z.string(), reason: z.string().optional() })
  .meta({ id: 'AgentLifecycleData' });

export const quarantinedData = z
  .object({
    jobId: z.string().describe('correlationid of the event that was set aside'),
    eventId: z.string().describe('id of the event that was set aside'),
    eventType: z.string(),
    reason: z.string().describe('why the broker can never accept it'),
  })
  .meta({
    id: 'QuarantinedData',
    description:
      'An event of this job could never be published (e.g. the broker refuses it for good). It was kept in the ' +
      "agent's outbox quarantine folder; this event takes its place, with the same correlationid and sequence.",
  });

export const EVENT_DATA = {
  accepted: acceptedData,
  rejected: rejectedData,
  progress: progressData,
  succeeded: succeededData,
  failed: failedData,
  started: agentLifecycleData,
  stopping: agentLifecycleData,
  quarantined: quarantinedData,
} as const satisfies Record<EventKind, z.ZodType>;

export type EventData<K extends EventKind> = z.infer<(typeof EVENT_DATA)[K]>;

/** CloudEvents 1.0 structured JSON, plus the `correlationid` and `sequence` extensions. */
function cloudEvent<K extends EventKind>(kind: K) {
  const id = `${kind[0]!.toUpperCase()}${kind.slice(1)}Event`;
  return z
    .object({
      specversion: z.literal('1.0'),
      id: z.string().min(1),
      source: z.string().min(1).describe('clvm-snapshot-agent/<hostId>'),
      type: z.literal(`${eventTypePrefix}${kind}`),
      subject: z.string().describe('the volume key (see routing keys) or "agent"'),
      time: z.iso.datetime({ offset: true }),
      datacontenttype: z.literal('application/json'),
      correlationid: z.string().describe('the command id (jobId) this event is about'),
      sequence: z
        .string()
        .regex(/^\d{10}$/, 'zero-padded to 10 digits')
        .describe('per correlationid, from 0000000001'),
      data: EVENT_DATA[kind],
    })
    .meta({ id });
}

export const eventSchemas = {
  accepted: cloudEvent('accepted'),
  rejected: cloudEvent('rejected'),
  progress: cloudEvent('progress'),
  succeeded: cloudEvent('succeeded'),
  failed: cloudEvent('failed'),
  started: cloudEvent('started'),
  stopping: cloudEvent('stopping'),
  quarantined: cloudEvent('quarantined'),
} as const;

export const eventSchema = z
  .discriminatedUnion('type', [
    eventSchemas.accepted,
    eventSchemas.rejected,
    eventSchemas.progress,
    eventSchemas.succeeded,
    eventSchemas.failed,
    eventSchemas.started,
    eventSchemas.stopping,
    eventSchemas.quarantined,
  ])
  .meta({ id: 'Event' });
export type AgentEvent = z.infer<typeof eventSchema>;
export type AgentEventOf<K extends EventKind> = z.infer<(typeof eventSchemas)[K]>;

export function eventKindOf(type: string): EventKind | undefined {
  const kind = type.startsWith(eventTypePrefix) ? type.slice(eventTypePrefix.length) : '';
  return (EVENT_KINDS as readonly string[]).includes(kind) ? (kind as EventKind) : undefined;
}
