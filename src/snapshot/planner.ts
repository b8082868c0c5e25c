import { StrategyUnavailableError } from '../errors/index.js';
import type { StrategyName } from '../protocol/index.js';

/** Strategies this engine runs. */
export type ConcreteStrategy = 'offline' | 'lvm-cow' | 'live-rotate';

export interface StrategyChoice {
  name: ConcreteStrategy;
  reason: string;
}

export interface StrategyInput {
  requested: StrategyName;
  /** A QEMU process holds the volume (running or paused VM). */
  vmRunning: boolean;
  poolKind: 'lvm' | 'file';
  /** File pools: whether the pool's filesystem makes reflink clones. */
  reflink: { supported: boolean; reason: string | null } | null;
  /** Running VM: whether its QEMU and the pool can rotate live (null: not asked). */
  liveRotate: { supported: boolean; reason: string } | null;
}

/**
 * Picks the strategy (pure). `auto`: stopped VM → offline (no copy-on-write, smallest deltas);
 * running VM → live-rotate when its QEMU and the pool allow it (no pause, minimal deltas), else
 * lvm-cow (LVM snapshot, or reflink clone in file pools). An explicit request that cannot run
 * here is refused with the reason, never silently replaced.
 * @throws StrategyUnavailableError
 */
export function chooseStrategy(input: StrategyInput): StrategyChoice {
  const cowReason =
    input.poolKind === 'lvm'
      ? 'LVM copy-on-write snapshot'
      : input.reflink?.supported
        ? 'reflink clone in the file pool'
        : null;
  const noCow = `the file pool cannot make reflink clones (${input.reflink?.reason ?? 'unknown'})`;
  const live = input.liveRotate;
  switch (input.requested) {
    case 'live-rotate':
      if (!input.vmRunning)
        throw new StrategyUnavailableError(
          'live-rotate',
          'the VM is not running; offline snapshots a stopped VM',
        );
      if (!live?.supported) throw new StrategyUnavailableError('live-rotate', live?.reason ?? 'not probed');
      return { name: 'live-rotate', reason: `requested (${live.reason})` };
    case 'offline':
      if (input.vmRunning)
        throw new StrategyUnavailableError('offline', 'the VM is running; offline needs it stopped');
      return { name: 'offline', reason: 'requested' };
    case 'lvm-cow':
      if (cowReason === null) throw new StrategyUnavailableError('lvm-cow', noCow);
      return {
        name: 'lvm-cow',
        reason: input.vmRunning
          ? `requested (${cowReason})`
          : `requested (${cowReason}; VM stopped: backing pointer set with qemu-img rebase -u)`,
      };
    case 'auto': {
      if (!input.vmRunning) {
        return {
          name: 'offline',
          reason: 'auto: no running VM holds the volume, so offline (no copy-on-write)',
        };
      }
      if (live?.supported)
        return { name: 'live-rotate', reason: `auto: the VM is running and ${live.reason}` };
      const notLive = `live-rotate is unavailable (${live?.reason ?? 'not probed'})`;
      if (cowReason === null)
        throw new StrategyUnavailableError('auto', `the VM is running, ${notLive} and ${noCow}`);
      return { name: 'lvm-cow', reason: `auto: the VM is running and ${notLive}, so lvm-cow (${cowReason})` };
    }
  }
}

export interface KindInput {
  /** The last snapshot of the chain (parents' last), or null. */
  parentName: string | null;
  parentExists: boolean;
  /** Members of the parent's chain inside the store (the parent included). */
  parentDepth: number;
  /** The active volume's header names the parent as its backing: its top layer is exactly the delta. */
  activeBacksOntoParent: boolean;
  maxChainLength: number;
}

export type KindChoice = { kind: 'delta' } | { kind: 'full'; reason: string };

/** Full or delta (pure): delta only when the parent exists, is the active's backing and the chain has room. */
export function chooseKind(input: KindInput): KindChoice {
  if (input.parentName === null) return { kind: 'full', reason: 'no parent snapshot: first of a chain' };
  if (!input.parentExists)
    return { kind: 'full', reason: `parent ${input.parentName} is missing from the store` };
  if (input.parentDepth >= input.maxChainLength) {
    return {
      kind: 'full',
      reason: `chain depth ${input.parentDepth} reached maxChainLength ${input.maxChainLength}`,
    };
  }
  if (!input.activeBacksOntoParent) {
    return { kind: 'full', reason: `the active volume does not back onto parent ${input.parentName}` };
  }
  return { kind: 'delta' };
}
