// What the job layer must know about each command type, in one table typed over every CommandType:
// a new command type fails the build until its lock, its path confinement and its handler are stated.
import { join, resolve } from 'node:path';
import { ValidationError } from '../errors/index.js';
import { confineChild, confinePath } from '../host/paths.js';
import {
  type CommandOf,
  type CommandType,
  type StoreRef,
  type VolumeRef,
  volumeFamilyKey,
} from '../protocol/index.js';

/** The configured roots and volume groups a command's paths must stay inside (a slice of AgentConfig). */
export interface PathPolicy {
  storeRoots: readonly string[];
  fileRoots: readonly string[];
  /** Empty: any VG with a valid name. */
  volumeGroups: readonly string[];
}

export interface CommandSpec<T extends CommandType> {
  /** Jobs with the same key run one at a time (null: no lock). */
  lockKey(command: CommandOf<T>): string | null;
  /** Resolves the command's paths and refuses those outside the configured roots (ValidationError). */
  confine(command: CommandOf<T>, policy: PathPolicy): Promise<void>;
  /** Who answers it: the job layer itself, the agent (src/handlers), or the snapshot engine. */
  handler: 'job-layer' | 'agent' | 'engine';
  /** Its outcome sets the volume's last-success / last-failure signals (metrics). */
  volumeOutcome: boolean;
}

const noLock = () => null;
const nothingToConfine = async () => {};
// One lock for every name of a volume (live rotation's layer names too): two jobs on the same
// volume never run at once, whichever of its names each command uses.
const volumeLock = (command: { params: { volume: VolumeRef } }) =>
  `volume:${volumeFamilyKey(command.params.volume)}`;

async function confineVolumeAndStore(
  command: { params: { volume: VolumeRef; store: StoreRef } },
  policy: PathPolicy,
): Promise<void> {
  await confineVolume(command.params.volume, policy);
  await confineStore(command.params.store, policy);
}

export const COMMAND_TABLE = {
  'agent.ping': { lockKey: noLock, confine: nothingToConfine, handler: 'agent', volumeOutcome: false },
  'job.cancel': { lockKey: noLock, confine: nothingToConfine, handler: 'job-layer', volumeOutcome: false },
  'snapshot.create': {
    lockKey: volumeLock,
    confine: confineVolumeAndStore,
    handler: 'engine',
    volumeOutcome: true,
  },
  'snapshot.delete': {
    lockKey: volumeLock,
    confine: confineVolumeAndStore,
    handler: 'engine',
    volumeOutcome: false,
  },
  'snapshot.revert': {
    lockKey: volumeLock,
    confine: confineVolumeAndStore,
    handler: 'engine',
    volumeOutcome: false,
  },
  'chain.verify': {
    lockKey: ({ params }) =>
      params.volume
        ? volumeLock({ params: { volume: params.volume } })
        : `store:${params.store.root}/${params.store.dir}`,
    confine: async ({ params }, policy) => {
      await confineStore(params.store, policy);
      if (params.volume) await confineVolume(params.volume, policy);
      if (params.compare) {
        await confinePath(
          params.compare.image,
          [...policy.storeRoots, ...policy.fileRoots],
          'params.compare.image',
        );
      }
    },
    handler: 'engine',
    volumeOutcome: false,
  },
  'volume.resize': {
    lockKey: volumeLock,
    confine: ({ params }, policy) => confineVolume(params.volume, policy),
    handler: 'engine',
    volumeOutcome: false,
  },
} as const satisfies { [T in CommandType]: CommandSpec<T> };

/** The command types whose handler the given layer provides, as a type. */
export type CommandTypeHandledBy<H extends CommandSpec<CommandType>['handler']> = {
  [T in CommandType]: (typeof COMMAND_TABLE)[T]['handler'] extends H ? T : never;
}[CommandType];

/** The table's entry for a command type, as the common shape. */
export function commandSpec<T extends CommandType>(type: T): CommandSpec<T> {
  return COMMAND_TABLE[type] as unknown as CommandSpec<T>;
}

/** The command types whose handler the given layer provides. */
export function commandTypesHandledBy(handler: CommandSpec<CommandType>['handler']): CommandType[] {
  return (Object.keys(COMMAND_TABLE) as CommandType[]).filter((t) => COMMAND_TABLE[t].handler === handler);
}

async function confineStore(store: StoreRef, policy: PathPolicy): Promise<void> {
  const root = policy.storeRoots.find((r) => resolve(r) === store.root);
  if (root === undefined) {
    throw new ValidationError(
      'STORE_ROOT_NOT_CONFIGURED',
      `store root ${JSON.stringify(store.root)} is not a configured store root (${policy.storeRoots.join(', ')})`,
      { field: 'params.store.root' },
    );
  }
  await confinePath(join(store.root, store.dir), [root], 'params.store.dir');
}

async function confineVolume(volume: VolumeRef, policy: PathPolicy): Promise<void> {
  if (volume.kind === 'lvm') {
    if (policy.volumeGroups.length > 0 && !policy.volumeGroups.includes(volume.vg)) {
      throw new ValidationError(
        'VOLUME_GROUP_NOT_ALLOWED',
        `volume group ${JSON.stringify(volume.vg)} is not one this agent may touch (${policy.volumeGroups.join(', ')})`,
        { field: 'params.volume.vg' },
      );
    }
    return;
  }
  await confinePath(volume.pool, policy.fileRoots, 'params.volume.pool');
  await confineChild(volume.pool, volume.file, policy.fileRoots, 'params.volume.file');
}
