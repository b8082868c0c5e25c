// Strategy "live-rotate" (running VM, QEMU ≥ 6.1), see docs/strategies.md:
//   create-overlay → switch (point of no return: QEMU writes to the new overlay) → retire-active →
//   promote-overlay → export → publish → verify → repoint → close-frozen → remove-frozen
// No pause: QEMU only drains the old layer during the switch. The export is exactly the frozen
// layer (the writes since the previous snapshot), and the volume keeps its name and path.
import { basename, dirname } from 'node:path';
import { AgentError, ChainInvalidError, HostCommandError, InsufficientSpaceError } from '../errors/index.js';
import { hasStableBlockdevReopen } from '../host/capabilities.js';
import { type BlockNode, qcow2Blockdev, reopenWithBacking } from '../host/libvirt.js';
import { backingOf } from './chain.js';
import { exportStep, publishStep, setBackingUnsafe, verifyStep } from './common-steps.js';
import type { SnapshotDeps } from './deps.js';
import type { EngineJournal } from './journal.js';
import type { CreatePlan } from './plan.js';
import type { StepPlan } from './steps.js';
import { freezeGuest, thawGuest } from './vm.js';
import type { VolumeBackend } from './volumes.js';

/** Tags the fdsets this agent hands QEMU, so a layer's fdset is found again (recovery, removal). */
/** Why live-rotate is refused unless configured: it changes the chain behind libvirt's back. */
export const LIVE_ROTATE_DISABLED =
  "disabled on this host (snapshot.liveRotate): the rotation changes the disk's chain behind libvirt, so a managedsave, save or migration would reopen the volume without its backing chain";

export const FDSET_TAG = 'clvm-snapshot-agent';

/** The old chain's nodes that the repoint detached, journaled so close-frozen finds them after a crash. */
interface DetachedNode {
  nodeName: string;
  fileNodeName: string | null;
  filename: string;
}

/** The live-rotate strategy's steps for one plan. Callable without the agent. */
export function liveRotateSteps(
  plan: CreatePlan,
  backend: VolumeBackend,
  deps: SnapshotDeps,
  journal: EngineJournal,
  hooks: { onExportProgress?: (percent: number) => void; midStep?: (step: string) => void } = {},
): StepPlan {
  const vm = plan.vm;
  if (vm === null || !plan.vmRunning) throw new Error('live-rotate needs a running VM (the planner checks)');
  const libvirt = deps.libvirt;
  const target = plan.target ?? 'vda';
  const overlayPath = backend.pathOf(plan.stagingName);
  const frozenPath = backend.pathOf(plan.retiredName);
  const overlayNode = `lr-${plan.tag}`;
  const snapshotNode = `lr-snap-${plan.tag}`;
  const fdsetTag = `${FDSET_TAG}:${plan.tag}`;

  // Whether a QEMU process holds the volume (running or paused); a domain that is gone holds nothing.
  const running = async (): Promise<boolean> => {
    try {
      return (await libvirt.domainState(vm)).state !== 'shut off';
    } catch (error) {
      if (error instanceof HostCommandError && error.kind === 'not-found') return false;
      throw error;
    }
  };
  const nodeNames = async (): Promise<Set<string>> => {
    const nodes = await libvirt.qmp<Array<{ 'node-name': string }>>(vm, 'query-named-block-nodes', {
      flat: true,
    });
    return new Set(nodes.map((n) => n['node-name']));
  };
  const ourFdsets = async (): Promise<number[]> =>
    (await libvirt.fdsets(vm)).filter((s) => s.opaque.includes(fdsetTag)).map((s) => s.fdsetId);
  const switched = async (): Promise<boolean> =>
    (await libvirt.diskChain(vm, target))[0]?.nodeName === overlayNode;
  // Between the switch and the promote the volume's name still opens the old top. A VM started
  // again in that window (the agent died there) runs on the old top and never saw the overlay's
  // writes: promoting the overlay would put those stale writes over the guest's newer ones at the
  // next start, and export a layer the guest is writing. Stop instead, keeping the overlay.
  // (The switched QEMU still holds the overlay's fdset, which dies with the process: asking for it
  // is one small QMP command, where walking the block graph is four, each longer with the chain.)
  const assertNotRestartedOnOldTop = async (): Promise<void> => {
    if (!(await backend.exists(plan.stagingName))) return; // promoted: the name opens the overlay
    if (!(await running()) || (await ourFdsets()).length > 0 || (await switched())) return;
    await backend.restoreActive(plan.retiredName); // a file pool's second link to the old top
    throw overlayKept('the rotation');
  };
  // Journaled right after blockdev-snapshot returned: QEMU wrote to the overlay from then on.
  const switchHappened = (): boolean => journal.get().facts.switchMs !== undefined;
  const overlayKept = (what: string): AgentError =>
    new AgentError(
      'VOLUME_STATE_UNEXPECTED',
      `VM ${vm} runs on the old top of ${plan.activePath}, not on the overlay ${overlayPath} it was switched to ` +
        `(started again in between?): ${what} stops here and keeps the overlay, which holds writes the guest ` +
        'made before that restart and no longer sees, for inspection',
      { details: { vm, active: plan.activePath, overlay: overlayPath } },
    );

  return {
    kind: 'live-rotate',
    pointOfNoReturn: 'switch',
    steps: [
      {
        // The new top, under a temporary name. Its header already names the frozen layer's final
        // path, so the volume opens whole at every moment once the names are swapped.
        name: 'create-overlay',
        run: async () => {
          await backend.remove(plan.stagingName); // a half-made one from an earlier attempt of this job
          await backend.createOverlay(
            plan.stagingName,
            { file: frozenPath, format: 'qcow2' },
            plan.virtualSize,
            { backingMayNotExist: true },
          );
        },
        // Never drops guest writes: rolling back after the switch happened means a VM restart on
        // the old top undid it (see assertNotRestartedOnOldTop), and the overlay is kept.
        undo: async () => {
          if (switchHappened() && (await backend.exists(plan.stagingName))) throw overlayKept('the rollback');
          await backend.remove(plan.stagingName);
        },
      },
      {
        // blockdev-snapshot: QEMU drains and flushes the old top, reopens it read-only (by its path,
        // which is why the renames come after) and sends every later write to the overlay. The
        // overlay reaches QEMU as an fdset: no path lookup inside libvirt's private /dev, and the
        // node keeps its file across the renames.
        name: 'switch',
        run: async () => {
          const [top] = await libvirt.diskChain(vm, target);
          if (top === undefined) throw new Error(`no block node for ${target} of ${vm}`);
          if (top.nodeName === overlayNode) return;
          if (!(await nodeNames()).has(overlayNode)) {
            const fdsetId = (await ourFdsets())[0] ?? (await libvirt.addFdset(vm, overlayPath, fdsetTag));
            await libvirt.blockdevAdd(
              vm,
              qcow2Blockdev({
                nodeName: overlayNode,
                filename: `/dev/fdset/${fdsetId}`,
                sourceType: backend.kind === 'lvm' ? 'block' : 'file',
                backing: null,
                ...(top.cache === undefined ? {} : { cache: top.cache }),
              }),
            );
          }
          // The guest stays frozen (when asked) only for the switch itself.
          const freeze = plan.quiesce ? await freezeGuest(libvirt, journal, vm) : null;
          try {
            const started = performance.now();
            await libvirt.blockdevSnapshot(vm, { node: top.nodeName, overlay: overlayNode });
            const switchMs = performance.now() - started;
            await journal.update((r) => {
              r.facts.switchMs = Math.round(switchMs * 1000) / 1000;
            });
            hooks.midStep?.('switch');
          } finally {
            if (freeze !== null && 'frozen' in freeze) await thawGuest(libvirt, journal, vm);
          }
        },
        // The switch did not happen: close the overlay's node and fdset if this step opened them.
        undo: async () => {
          if (!(await running())) return;
          if ((await nodeNames()).has(overlayNode)) await libvirt.blockdevDel(vm, overlayNode);
          for (const id of await ourFdsets()) await libvirt.removeFdset(vm, id);
        },
        // Done when QEMU's top is the overlay. A VM stopped since: done when the overlay exists.
        // It may hold writes (rolling back would drop them); if QEMU never switched it is empty and
        // going forward loses nothing either. (Its allocation cannot be read here: its backing, the
        // frozen layer's final name, appears only with retire-active.)
        isDone: async () => {
          if (await running()) return switched();
          return backend.exists(plan.stagingName);
        },
      },
      {
        // QEMU holds both layers by descriptor now; the names follow. LVM: rename; files: a second link.
        name: 'retire-active',
        run: async () => {
          await assertNotRestartedOnOldTop();
          await backend.retireActive(plan.retiredName);
        },
      },
      {
        name: 'promote-overlay',
        run: async () => {
          await assertNotRestartedOnOldTop();
          await backend.promote(plan.stagingName);
        },
      },
      exportStep(deps, {
        source: frozenPath,
        partPath: plan.partPath,
        parentBacking: plan.parentBacking,
        compress: plan.compress,
        forceShare: true, // QEMU holds the frozen layer read-only
        onProgress: hooks.onExportProgress,
        bytesTotal: plan.exportBytes,
        bandwidth: plan.bandwidthBytesPerSecond,
      }),
      publishStep(deps, {
        partPath: plan.partPath,
        snapshotPath: plan.snapshotPath,
        holders: () => [plan.activePath, frozenPath],
      }),
      verifyStep(deps, { snapshotPath: plan.snapshotPath, level: plan.verify, compareWith: frozenPath }),
      {
        // The live overlay reads snap-N instead of the frozen layer (same data): QEMU opens snap-N
        // read-only on the parent's node, the overlay is reopened onto it, then its header follows.
        name: 'repoint',
        run: async () => {
          if (!(await running())) return setBackingUnsafe(deps.qemuImg, plan.activePath, plan.snapshotPath);
          const chain = await libvirt.diskChain(vm, target);
          const [top, below] = chain;
          if (top === undefined) throw new Error(`no block node for ${target} of ${vm}`);
          if (below?.nodeName !== snapshotNode) {
            const detached: DetachedNode[] = chain.slice(1).map((n) => ({
              nodeName: n.nodeName,
              fileNodeName: n.fileNodeName,
              filename: n.filename,
            }));
            await journal.update((r) => {
              r.facts.detachedNodes = detached;
            });
            if (!(await nodeNames()).has(snapshotNode)) {
              await libvirt.blockdevAdd(
                vm,
                qcow2Blockdev({
                  nodeName: snapshotNode,
                  filename: plan.snapshotPath,
                  sourceType: 'file',
                  readOnly: true,
                  backing: plan.parentPath === null ? null : parentNode(chain, plan.parentPath),
                }),
              );
            }
            await libvirt.blockdevReopen(vm, [reopenWithBacking(top, snapshotNode)]);
          }
          if ((await backingOf(deps.qemuImg, plan.activePath)).resolved !== plan.snapshotPath) {
            await libvirt.changeBackingFile(vm, {
              device: top.nodeName,
              imageNodeName: top.nodeName,
              backingFile: plan.snapshotPath,
            });
          }
        },
      },
      {
        // The layers the repoint detached (the frozen one; for a full snapshot, its old backing too).
        name: 'close-frozen',
        run: async () => {
          if (!(await running())) return;
          const detached = (journal.get().facts.detachedNodes ?? []) as DetachedNode[];
          const inChain = new Set((await libvirt.diskChain(vm, target)).map((n) => n.nodeName));
          for (const node of detached) {
            if (inChain.has(node.nodeName)) continue; // shared with the new chain (the parent)
            const open = await nodeNames();
            if (open.has(node.nodeName)) await libvirt.blockdevDelLayer(vm, node);
            else if (node.fileNodeName !== null && open.has(node.fileNodeName))
              await libvirt.blockdevDel(vm, node.fileNodeName);
            const fdset = /^\/dev\/fdset\/(\d+)$/.exec(node.filename);
            if (fdset !== null) await removeFdsetIfPresent(deps, vm, Number(fdset[1]));
          }
        },
      },
      {
        // Also any older frozen layer of this volume below it: left by a job that failed after its
        // switch (its layer stayed in the chain; this job's export copied it into the snapshot).
        name: 'remove-frozen',
        run: async () => {
          if (!(await backend.exists(plan.retiredName))) return;
          const live = (await deps.store.readChain(plan.activePath)).map((m) => m.path);
          const frozenChain = (await deps.store.readChain(frozenPath)).map((m) => m.path);
          const ours = frozenChain.filter((p) => p === frozenPath || isFrozenLayerOf(backend, p));
          for (const path of ours) {
            if (live.includes(path)) {
              throw new ChainInvalidError('refusing to remove a frozen layer', [
                `${plan.activePath} still has ${path} in its backing chain`,
              ]);
            }
          }
          // Bottom first: the frozen layer itself goes last, so a crash here leaves this step to redo.
          for (const path of ours.reverse()) await backend.remove(basename(path)); // LVM refuses an open LV
        },
      },
    ],
  };
}

/** A frozen layer an earlier live-rotate of this volume left: a sibling named `<active>.old-*` / `<active>-old-*`. */
function isFrozenLayerOf(backend: VolumeBackend, path: string): boolean {
  const prefix = backend.tempName('old', '');
  return dirname(path) === dirname(backend.activePath) && basename(path).startsWith(prefix);
}

/** The node of the parent snapshot in the chain QEMU reads (a delta's snap-N goes on top of it). */
function parentNode(chain: BlockNode[], parentPath: string): string {
  const node = chain.find((n) => n.filename === parentPath);
  if (node === undefined) {
    throw new ChainInvalidError('the running chain does not hold the parent snapshot', [
      `no node of the disk reads ${parentPath}: ${chain.map((n) => n.filename).join(' → ')}`,
    ]);
  }
  return node.nodeName;
}

async function removeFdsetIfPresent(deps: SnapshotDeps, vm: string, fdsetId: number): Promise<void> {
  if ((await deps.libvirt.fdsets(vm)).some((s) => s.fdsetId === fdsetId)) {
    await deps.libvirt.removeFdset(vm, fdsetId);
  }
}

/**
 * Whether the running VM's volume can rotate live: its QEMU is ≥ 6.1 (stable blockdev-reopen; the
 * other QMP commands the steps use are older: add-fd, blockdev-snapshot, change-backing-file), the
 * disk's top layer is QCOW2, and the pool has room for the new overlay.
 */
export async function probeLiveRotate(
  deps: Pick<SnapshotDeps, 'libvirt'>,
  vm: string,
  target: string,
  backend: VolumeBackend,
  virtualSize: number,
): Promise<{ supported: boolean; reason: string }> {
  const version = await deps.libvirt.qemuVersion(vm);
  const qemu = `${version.major}.${version.minor}.${version.micro}`;
  if (!hasStableBlockdevReopen(qemu)) {
    return {
      supported: false,
      reason: `QEMU ${qemu} of the VM is older than 6.1 (no stable blockdev-reopen)`,
    };
  }
  const [top] = await deps.libvirt.diskChain(vm, target);
  if (top?.driver !== 'qcow2') {
    return { supported: false, reason: `the disk's top layer is ${top?.driver ?? 'missing'}, not qcow2` };
  }
  try {
    await backend.ensureSpace('overlay', virtualSize);
  } catch (error) {
    if (error instanceof InsufficientSpaceError) {
      return { supported: false, reason: `no room for the new overlay: ${error.message}` };
    }
    throw error;
  }
  return {
    supported: true,
    reason: `QEMU ${qemu} rotates live (blockdev-reopen) and the pool has room for the overlay`,
  };
}
