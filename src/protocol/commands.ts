import { z } from 'zod';
import { absolutePath, fileName, lvmName, relativeDir, vmName } from './names.js';

/** Command ids: also file names of the journal and AMQP messageIds. */
export const COMMAND_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
export const commandId = z
  .string()
  .regex(COMMAND_ID_PATTERN, 'invalid command id: 1-128 characters of letters, digits and "_.:-"');

/** A volume on an LVM pool (QCOW2 inside an LV) or in a file pool (QCOW2 file). */
export const lvmVolumeRef = z
  .object({ kind: z.literal('lvm'), vg: lvmName, lv: lvmName })
  .strict()
  .meta({ id: 'LvmVolumeRef', description: 'QCOW2 image on the LV /dev/<vg>/<lv> (CLVM_NG).' });
export const fileVolumeRef = z
  .object({ kind: z.literal('file'), pool: absolutePath, file: fileName })
  .strict()
  .meta({
    id: 'FileVolumeRef',
    description: 'QCOW2 file <pool>/<file>; the pool must be under a configured pool root.',
  });
export const volumeRef = z
  .discriminatedUnion('kind', [lvmVolumeRef, fileVolumeRef])
  .meta({ id: 'VolumeRef' });
export type VolumeRef = z.infer<typeof volumeRef>;

/** Where snapshots go: <root>/<dir>/<snapshot file>. The root must be a configured store root. */
export const storeRef = z
  .object({ root: absolutePath, dir: relativeDir })
  .strict()
  .meta({ id: 'StoreRef', description: 'Snapshot directory <root>/<dir> on the snapshot store.' });
export type StoreRef = z.infer<typeof storeRef>;

/**
 * The snapshot strategies the engine runs. Each is one file in src/snapshot/strategies/ and one line
 * of its table, which is typed `satisfies Record<ConcreteStrategy, …>`: the two cannot drift.
 */
export const CONCRETE_STRATEGIES = ['offline', 'lvm-cow', 'live-rotate'] as const;
export type ConcreteStrategy = (typeof CONCRETE_STRATEGIES)[number];

/** A command's strategy: one of the engine's, or `auto` (the planner chooses). */
export const strategyName = z.enum(['auto', ...CONCRETE_STRATEGIES]);
export type StrategyName = z.infer<typeof strategyName>;

export const pingParams = z.object({}).strict().meta({ id: 'PingParams' });

export const snapshotCreateParams = z
  .object({
    volume: volumeRef,
    vm: vmName.nullable().default(null).describe('libvirt domain using the volume, or null when none'),
    store: storeRef,
    parents: z
      .array(fileName)
      .max(1000)
      .default([])
      .describe('the chain so far in the store dir, oldest first'),
    snapshot: fileName.describe('file name of the new snapshot in the store dir'),
    options: z
      .object({
        strategy: strategyName.default('auto'),
        quiesce: z.boolean().default(false),
        verify: z.enum(['none', 'metadata', 'full']).default('metadata'),
        compress: z.boolean().default(false),
        maxChainLength: z.number().int().min(1).max(1000).default(16),
        bandwidthBytesPerSecond: z
          .number()
          .int()
          .min(1024 * 1024)
          .max(Number.MAX_SAFE_INTEGER)
          .optional()
          .describe(
            "export bandwidth of this snapshot in bytes per second (at least 1 MiB/s); the host's limits.exportBytesPerSecond still caps it",
          ),
      })
      .strict()
      .prefault({}),
  })
  .strict()
  .meta({ id: 'SnapshotCreateParams' });

export const snapshotDeleteParams = z
  .object({
    volume: volumeRef,
    vm: vmName.nullable().default(null),
    store: storeRef,
    chain: z.array(fileName).min(1).max(1000).describe('the whole chain in the store dir, oldest first'),
    snapshot: fileName.describe('the member of the chain to remove'),
  })
  .strict()
  .meta({ id: 'SnapshotDeleteParams' });

export const snapshotRevertParams = z
  .object({
    volume: volumeRef,
    vm: vmName.nullable().default(null),
    store: storeRef,
    chain: z.array(fileName).min(1).max(1000),
    snapshot: fileName,
    mode: z.enum(['overlay', 'flatten']).default('overlay'),
  })
  .strict()
  .meta({ id: 'SnapshotRevertParams' });

export const chainVerifyParams = z
  .object({
    store: storeRef,
    chain: z.array(fileName).min(1).max(1000),
    volume: volumeRef.optional(),
    compare: z
      .object({ snapshot: fileName, image: absolutePath })
      .strict()
      .optional()
      .describe('full data compare of a snapshot (through its chain) against an image'),
  })
  .strict()
  .meta({ id: 'ChainVerifyParams' });

export const volumeResizeParams = z
  .object({
    volume: volumeRef.describe('the volume by any of its names (live rotation moves its active layer)'),
    vm: vmName.nullable().default(null).describe('libvirt domain using the volume, or null when none'),
    sizeBytes: z
      .number()
      .int()
      .positive()
      .multipleOf(512)
      .max(Number.MAX_SAFE_INTEGER)
      .describe('the new virtual size in bytes (a multiple of 512, not smaller than the current one)'),
  })
  .strict()
  .meta({ id: 'VolumeResizeParams' });

export const jobCancelParams = z
  .object({ jobId: commandId.describe('id of the job to cancel') })
  .strict()
  .meta({ id: 'JobCancelParams' });

function command<T extends string, P extends z.ZodType>(type: T, params: P, id: string) {
  return z
    .object({
      id: commandId.describe('command id; equals the AMQP messageId when that is set'),
      type: z.literal(type),
      params,
      createdAt: z.iso.datetime({ offset: true }).optional(),
    })
    .strict()
    .meta({ id });
}

export const pingCommand = command('agent.ping', pingParams.prefault({}), 'PingCommand');
export const snapshotCreateCommand = command(
  'snapshot.create',
  snapshotCreateParams,
  'SnapshotCreateCommand',
);
export const snapshotDeleteCommand = command(
  'snapshot.delete',
  snapshotDeleteParams,
  'SnapshotDeleteCommand',
);
export const snapshotRevertCommand = command(
  'snapshot.revert',
  snapshotRevertParams,
  'SnapshotRevertCommand',
);
export const chainVerifyCommand = command('chain.verify', chainVerifyParams, 'ChainVerifyCommand');
export const volumeResizeCommand = command('volume.resize', volumeResizeParams, 'VolumeResizeCommand');
export const jobCancelCommand = command('job.cancel', jobCancelParams, 'JobCancelCommand');

export const commandSchema = z
  .discriminatedUnion('type', [
    pingCommand,
    snapshotCreateCommand,
    snapshotDeleteCommand,
    snapshotRevertCommand,
    chainVerifyCommand,
    volumeResizeCommand,
    jobCancelCommand,
  ])
  .meta({ id: 'Command' });

export type Command = z.infer<typeof commandSchema>;
export type CommandType = Command['type'];
export type CommandOf<T extends CommandType> = Extract<Command, { type: T }>;
export const COMMAND_TYPES = commandSchema.options.map((o) => o.shape.type.value) as CommandType[];
