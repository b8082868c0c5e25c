import type { ConcreteStrategy } from '../protocol/index.js';
import type { EngineJournal, GuestFacts } from './journal.js';

/** Everything a snapshot.create job decided before its first step; journaled, so recovery rebuilds the same steps. */
export interface CreatePlan {
  strategy: ConcreteStrategy;
  strategyReason: string;
  kind: 'full' | 'delta';
  fullReason: string | null;
  activePath: string;
  vm: string | null;
  vmRunning: boolean;
  /** Disk target of the volume in the running VM (vda...). */
  target: string | null;
  storeDir: string;
  snapshotName: string;
  snapshotPath: string;
  partPath: string;
  parentName: string | null;
  parentPath: string | null;
  /** Backing name written into the new snapshot: relative to the store dir (seed defect 4). */
  parentBacking: string | null;
  chainDepth: number;
  virtualSize: number;
  /** Bytes the export copies, as measured when planning (absent in plans journaled by older versions). */
  exportBytes?: number;
  /** live-rotate: the new active layer's name. Other strategies: the staging volume's name. */
  stagingName: string;
  /**
   * live-rotate: the volume's local layers from the active one down to its base (paths, top first);
   * the commit merges all but the base into the base.
   */
  liveLayers?: string[];
  retiredName: string;
  cloneName: string;
  /** Short id of the job (temporary names, QEMU node names). */
  tag: string;
  verify: 'none' | 'metadata' | 'full';
  compress: boolean;
  quiesce: boolean;
  /** The command's export bandwidth, bytes/s (absent: the host's limit alone). */
  bandwidthBytesPerSecond?: number;
}

/** What a snapshot.create job's steps record besides their states. */
export interface CreateFacts extends GuestFacts {
  /** live-rotate: how long libvirt's switch to the new layer took (ms, for the benchmark). */
  switchMs?: number;
  /** live-rotate: this job started the block commit (it goes on in libvirtd if the agent dies). */
  commitStarted?: boolean;
  /**
   * live-rotate: `<image>: <error>` of the fsync after the commit that failed (the base's or the
   * overlay's; journaled at once, before the layers are marked): a resumed job must not fsync again,
   * which would say 0 and let the layers go.
   */
  mergeNotDurable?: string;
}

/** The journal of a snapshot.create job. */
export type CreateJournal = EngineJournal<CreatePlan, CreateFacts>;
