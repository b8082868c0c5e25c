// The one shape every snapshot strategy has. A strategy is one file in this directory exporting one
// `Strategy` object, and one line in the table (index.ts); the planner, create's step list, the
// capability report, ping and snapctl all read the table.
import type { Capabilities } from '../../host/capabilities.js';
import type { ConcreteStrategy } from '../../protocol/index.js';
import type { SnapshotDeps } from '../deps.js';
import type { CreateJournal, CreatePlan } from '../plan.js';
import type { StepPlan } from '../steps.js';
import type { VmView } from '../vm.js';
import type { VolumeBackend } from '../volumes.js';

/** What a strategy's steps report while they run (create hooks the failpoints in here). */
export interface StrategyHooks {
  onExportProgress?: (percent: number) => void;
  /** Inside a step, at its critical moment (VM paused by lvm-cow, right after live-rotate's switch). */
  midStep?: (step: string) => void;
}

/** A strategy's own look at one volume before the planner chooses; null: nothing to ask there. */
export type VolumeProbe = { supported: boolean; reason: string | null } | null;

export interface VolumeProbeInput {
  deps: SnapshotDeps;
  vm: VmView | null;
  backend: VolumeBackend;
  virtualSize: number;
}

/** What the planner knows about the volume when it asks a strategy whether it fits. */
export interface VolumeFacts {
  /** A QEMU process holds the volume (running or paused VM). */
  vmRunning: boolean;
  poolKind: 'lvm' | 'file';
  /** This strategy's probe of the volume (null: not asked). */
  probe: VolumeProbe;
}

/** Whether a strategy can snapshot the volume now: why it fits, or why not. */
export type Fit = { fits: true; why: string } | { fits: false; whyNot: string };

/** Where a strategy can run on this host. */
export interface StrategySupport {
  /** True when it can run on at least one pool kind. */
  available: boolean;
  /** Volumes on LVM (CLVM_NG) pools. */
  lvmPools: boolean;
  /** File pool roots where it can run. */
  filePools: string[];
  /** What is missing, when something is. */
  reasons: string[];
}

/** The host's settings a strategy's availability depends on (config snapshot.*). */
export interface HostOptions {
  liveRotate: 'enabled' | 'disabled';
}

export interface Strategy {
  name: ConcreteStrategy;
  /** The VM state in which `auto` may choose it, and its rank there (lower is tried first). */
  auto: { vm: 'running' | 'stopped'; rank: number };
  /** Where this host can run it, from the capability probe (tool versions, QMP, reflink). */
  onHost(host: Capabilities, options: HostOptions): StrategySupport;
  /** What to ask about the volume before choosing (absent: the facts suffice). */
  probe?(input: VolumeProbeInput): Promise<VolumeProbe>;
  /** Whether it can snapshot the volume, and why (not). Pure. */
  fit(facts: VolumeFacts): Fit;
  /** What the volume's pool must have room for: a new overlay layer, or a copy-on-write clone. */
  space: 'overlay' | 'cow';
  /** It changes the active image's header, so it is refused where libvirt pins the chain. */
  rewritesActiveHeader: boolean;
  /** The step after which the volume's active layer is the plan's staging layer (absent: it stays). */
  movesActiveLayerAt?: string;
  /** The plan's names this strategy decides itself (live-rotate: the new layer, the layers it merges). */
  planLayers?(
    backend: VolumeBackend,
    activeChain: string[],
  ): Promise<Pick<CreatePlan, 'stagingName' | 'liveLayers'> | null>;
  /** The job's step list for a plan. Callable without the agent (lab suites, benches). */
  steps(
    plan: CreatePlan,
    backend: VolumeBackend,
    deps: SnapshotDeps,
    journal: CreateJournal,
    hooks?: StrategyHooks,
  ): StepPlan;
}

/** Availability of a strategy: `need(ok, reason)` records the reason when a requirement is missing. */
export function supportFrom(
  check: (
    need: (ok: boolean, reason: string) => boolean,
    reasons: string[],
  ) => {
    lvmPools: boolean;
    filePools: string[];
  },
): StrategySupport {
  const reasons: string[] = [];
  const need = (ok: boolean, reason: string) => {
    if (!ok) reasons.push(reason);
    return ok;
  };
  const { lvmPools, filePools } = check(need, reasons);
  return { available: lvmPools || filePools.length > 0, lvmPools, filePools, reasons };
}

/** The file pool roots the capability probe looked at. */
export function fileRoots(host: Capabilities): string[] {
  return host.reflink.map((r) => r.root);
}
