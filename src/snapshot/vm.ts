import { realpath } from 'node:fs/promises';
import { AgentError, HostCommandError } from '../errors/index.js';
import type { DiskRef, FreezeRecord } from '../host/block-graph.js';
import type { Libvirt } from '../host/libvirt.js';
import type { EngineJournal } from './journal.js';

/** What the engine needs to know about the VM using a volume. */
export interface VmView {
  name: string;
  state: string;
  /** A QEMU process exists (running, paused...): it holds the image. */
  running: boolean;
  /** Disk target of the volume in the domain (e.g. vda); null when the domain is not running. */
  target: string | null;
}

/**
 * Reads the VM's state and which disk is the volume. A running VM that does not use the volume is
 * refused: the caller named the wrong VM, and a snapshot strategy chosen for it would be wrong.
 */
export async function inspectVm(
  libvirt: Libvirt,
  vm: string | null,
  activePath: string,
): Promise<VmView | null> {
  if (vm === null) return null;
  let state: string;
  try {
    state = (await libvirt.domainState(vm)).state;
  } catch (error) {
    if (error instanceof HostCommandError && error.kind === 'not-found') {
      throw new AgentError('VM_NOT_FOUND', `libvirt has no domain ${vm} on this host`, {
        cause: error,
        details: { vm },
      });
    }
    throw error;
  }
  const running = state !== 'shut off';
  if (!running) return { name: vm, state, running, target: null };
  const wanted = await realpath(activePath).catch(() => activePath);
  const disks = await libvirt.disks(vm);
  for (const disk of disks) {
    const source = await realpath(disk.source).catch(() => disk.source);
    if (source === wanted || disk.source === activePath)
      return { name: vm, state, running, target: disk.target };
  }
  throw new AgentError('VOLUME_NOT_ATTACHED', `VM ${vm} is ${state} but has no disk ${activePath}`, {
    details: { vm, activePath, disks: disks.map((d) => d.source) },
  });
}

/**
 * Runs `fn` with the VM paused: "paused by us" is journaled before the pause (recovery resumes it),
 * and the VM is resumed in `finally` whatever happens (invariant 4). Returns fn's result.
 */
export async function withVmPaused<T>(
  libvirt: Libvirt,
  journal: EngineJournal,
  vm: string,
  fn: () => Promise<T>,
  onPaused?: () => void,
): Promise<T> {
  await journal.update((r) => {
    r.pausedByUs = vm;
  });
  const started = performance.now();
  try {
    await libvirt.suspend(vm);
  } catch (error) {
    await journal.update((r) => {
      r.pausedByUs = null;
    });
    throw error;
  }
  try {
    onPaused?.();
    return await fn();
  } finally {
    await libvirt.resume(vm);
    const pausedMs = performance.now() - started;
    await journal.update((r) => {
      r.pausedByUs = null;
      r.pauseMs += pausedMs;
    });
  }
}

/** Recovery: resumes a VM the journal says this job paused (only if it is still paused). */
export async function resumeIfPausedByUs(libvirt: Libvirt, journal: EngineJournal): Promise<void> {
  const vm = journal.get().pausedByUs;
  if (vm === null) return;
  const state = await libvirt.domainState(vm).catch((error: unknown) => {
    if (error instanceof HostCommandError && error.kind === 'not-found') return null;
    throw error;
  });
  if (state?.state === 'paused') await libvirt.resume(vm);
  await journal.update((r) => {
    r.pausedByUs = null;
  });
}

/** Recovery: thaws a guest the journal says this job froze. */
export async function thawIfFrozenByUs(libvirt: Libvirt, journal: EngineJournal): Promise<void> {
  const vm = journal.get().facts.frozenByUs;
  if (typeof vm !== 'string') return;
  await libvirt.guestThaw(vm);
  await journal.update((r) => {
    r.facts.frozenByUs = null;
  });
}

/** Journals a guest freeze in the job's facts: recovery thaws a guest a killed job left frozen. */
export function freezeRecord(journal: EngineJournal, vm: string): FreezeRecord {
  return {
    freezing: async () => {
      await journal.update((r) => {
        r.facts.frozenByUs = vm;
      });
    },
    frozen: async (result) => {
      await journal.update((r) => {
        r.facts.quiesced = 'frozen' in result ? 'yes' : 'unavailable';
        if (!('frozen' in result)) r.facts.frozenByUs = null;
      });
    },
    thawed: async () => {
      await journal.update((r) => {
        r.facts.frozenByUs = null;
      });
    },
  };
}

/** The running VM's disk a plan works on (the planner found its target). */
export function diskOf(plan: { vm: string | null; target: string | null }): DiskRef {
  if (plan.vm === null || plan.target === null) {
    throw new AgentError(
      'VOLUME_STATE_UNEXPECTED',
      `no disk target of VM ${plan.vm ?? '(none)'} in the plan`,
      {
        details: { vm: plan.vm, target: plan.target },
      },
    );
  }
  return { domain: plan.vm, target: plan.target };
}

/**
 * The backing chain libvirt's description of the VM pins for the volume's active image (the live
 * description while it runs, else the persistent one), or null when it pins none. libvirt writes
 * the chain into the description when it tracks a layer change (live-rotate's switch and commit),
 * and then opens exactly that chain at the next start or restore, whatever the image header says:
 * a strategy that changes the header behind libvirt would leave that description wrong.
 */
export async function pinnedBackingChain(
  libvirt: Libvirt,
  vm: string | null,
  activePath: string,
): Promise<string[] | null> {
  if (vm === null) return null;
  let running: boolean;
  try {
    running = (await libvirt.domainState(vm)).state !== 'shut off';
  } catch (error) {
    if (error instanceof HostCommandError && error.kind === 'not-found') return null;
    throw error;
  }
  for (const disk of await libvirt.disks(vm)) {
    if (disk.source !== activePath) continue;
    const chain = await libvirt.diskSources(vm, disk.target, { inactive: !running });
    return chain.length > 1 ? chain : null;
  }
  return null;
}

/** Why a header change of `activePath` is refused while libvirt pins its chain (for the error). */
export function pinnedChainReason(vm: string, chain: readonly string[]): string {
  return (
    `libvirt's description of ${vm} pins the chain ${chain.join(' → ')} (written by libvirt when live-rotate ` +
    'switched layers), so a start, restore or migration would open that chain whatever the image header says: ' +
    'snapshot the running VM with live-rotate; for a stopped defined domain, remove the <backingStore> of the ' +
    'disk first (virsh edit), then libvirt reads the headers again'
  );
}
