// Strategy "lvm-cow" (running VM; also works stopped), see docs/strategies.md:
//   clone (VM paused for the instant of the clone) → export → publish → verify → remove-clone →
//   repoint (point of no return: QMP change-backing-file with the VM paused, or rebase -u when stopped)
import { backsOnto } from '../chain.js';
import { exportStep, publishStep, setBackingUnsafe, verifyStep } from '../common-steps.js';
import { blockGraphOf, type SnapshotDeps } from '../deps.js';
import type { CreateJournal, CreatePlan } from '../plan.js';
import type { StepPlan } from '../steps.js';
import { diskOf, freezeRecord, withVmPaused } from '../vm.js';
import { FileVolumeBackend, type VolumeBackend } from '../volumes.js';
import { fileRoots, type Strategy, type StrategyHooks, supportFrom } from './strategy.js';

/**
 * A running VM (also works stopped): an LVM snapshot, or a reflink clone in a file pool, made with
 * the VM paused for an instant; the active image is re-pointed onto the snapshot at the end.
 */
export const lvmCow = {
  name: 'lvm-cow',
  auto: { vm: 'running', rank: 1 },
  onHost: (host) =>
    supportFrom((need, reasons) => {
      const base =
        need(host.tools.qemuImg !== null, 'qemu-img not found') &&
        need(host.tools.libvirt !== null, 'libvirt not available (running VMs are re-pointed through it)');
      const lvmPools = base && need(host.tools.lvm !== null, 'lvm2 not found (LVM pools)');
      const noReflink = host.reflink.filter((r) => !r.supported);
      if (noReflink.length > 0) {
        reasons.push(
          `no reflink in file pool roots: ${noReflink.map((r) => `${r.root} (${r.reason})`).join(', ')}`,
        );
      }
      const reflinkRoots = fileRoots(host).filter((root) => !noReflink.some((r) => r.root === root));
      return { lvmPools, filePools: base ? reflinkRoots : [] };
    }),
  // File pools: whether the pool's filesystem makes reflink clones.
  probe: async ({ deps, backend }) =>
    backend instanceof FileVolumeBackend ? deps.filePool.supportsReflink(backend.dir) : null,
  fit: ({ vmRunning, poolKind, probe }) => {
    const cow =
      poolKind === 'lvm'
        ? 'LVM copy-on-write snapshot'
        : probe?.supported
          ? 'reflink clone in the file pool'
          : null;
    if (cow === null)
      return {
        fits: false,
        whyNot: `the file pool cannot make reflink clones (${probe?.reason ?? 'unknown'})`,
      };
    return {
      fits: true,
      why: vmRunning ? cow : `${cow}; VM stopped: backing pointer set with qemu-img rebase -u`,
    };
  },
  space: 'cow',
  rewritesActiveHeader: true,
  steps: lvmCowSteps,
} satisfies Strategy;

/** The lvm-cow strategy's steps for one plan. */
function lvmCowSteps(
  plan: CreatePlan,
  backend: VolumeBackend,
  deps: SnapshotDeps,
  journal: CreateJournal,
  hooks: StrategyHooks = {},
): StepPlan {
  const clonePath = backend.pathOf(plan.cloneName);
  const vm = plan.vmRunning ? plan.vm : null;
  const graph = blockGraphOf(deps);
  // The node repoint opens for snap-N when the top has no backing node to re-point.
  const snapNode = `snap-${plan.tag}`;
  return {
    kind: 'lvm-cow',
    pointOfNoReturn: 'repoint',
    steps: [
      {
        // The VM is paused only for the clone: `stop` flushes QEMU's caches, so the clone is a
        // consistent image (the seed took the LVM snapshot unflushed: crash-consistent at best).
        name: 'clone',
        run: async () => {
          await backend.remove(plan.cloneName);
          if (vm === null) {
            await backend.cowClone(plan.cloneName);
            return;
          }
          // Nothing but the clone inside the pause: the journal writes, the freeze and the removal
          // of an earlier half-made clone stay outside (reflink clone in-process; lvcreate on LVM).
          const pausedClone = () =>
            withVmPaused(
              deps.libvirt,
              journal,
              vm,
              () => backend.cowClone(plan.cloneName, { whilePaused: true }),
              () => hooks.midStep?.('clone'),
            );
          if (plan.quiesce) await graph.withGuestFrozen(vm, pausedClone, freezeRecord(journal, vm));
          else await pausedClone();
          await backend.settleClone(plan.cloneName);
        },
        undo: async () => {
          await backend.remove(plan.cloneName);
        },
      },
      exportStep(deps, {
        source: clonePath,
        partPath: plan.partPath,
        parentBacking: plan.parentBacking,
        compress: plan.compress,
        forceShare: true,
        cow: { volume: backend.activePath, health: () => backend.cowHealth(plan.cloneName) },
        onProgress: hooks.onExportProgress,
        bytesTotal: plan.exportBytes,
        bandwidth: plan.bandwidthBytesPerSecond,
      }),
      publishStep(deps, {
        partPath: plan.partPath,
        snapshotPath: plan.snapshotPath,
        holders: () => [plan.activePath],
      }),
      verifyStep(deps, { snapshotPath: plan.snapshotPath, level: plan.verify, compareWith: clonePath }),
      {
        name: 'remove-clone',
        run: async () => {
          await backend.remove(plan.cloneName);
        },
      },
      {
        // The active image now names snap-N (absolute: it lives outside the store) as its backing.
        name: 'repoint',
        run: async () => {
          if (vm === null) return setBackingUnsafe(deps.qemuImg, plan.activePath, plan.snapshotPath);
          if (await backsOnto(deps.qemuImg, plan.activePath, plan.snapshotPath)) return;
          const disk = diskOf(plan);
          const chain = await graph.chain(disk);
          const top = chain[0];
          if (top === undefined) throw new Error(`no block node for ${disk.target} of ${vm}`);
          // QEMU refuses change-backing-file on a node without a backing: open snap-N read-only and
          // make it the top node's backing first (same data, so the guest cannot tell).
          const needsBacking = chain.length === 1 && top.filename !== plan.snapshotPath;
          if (needsBacking) {
            await graph.openLayer(vm, {
              nodeName: snapNode,
              filename: plan.snapshotPath,
              sourceType: 'file',
            });
          }
          // Never `qemu-img rebase -u` under a running QEMU (seed defect 5): QEMU writes the header itself.
          await withVmPaused(deps.libvirt, journal, vm, async () => {
            hooks.midStep?.('repoint');
            if (needsBacking) await graph.attachBacking(vm, top, snapNode);
            await graph.writeBackingName(vm, top, plan.snapshotPath);
          });
        },
        // Not re-pointed: close a snap-N node this step may have opened in QEMU (it is not attached).
        undo: async () => {
          if (vm === null || !(await graph.holdsDisks(vm))) return;
          await graph.closeDetachedLayer(diskOf(plan), snapNode);
        },
        // Done once the header names snap-N, or once QEMU reads through snap-N (then finish the header).
        isDone: async () => {
          if (await backsOnto(deps.qemuImg, plan.activePath, plan.snapshotPath)) return true;
          if (vm === null || !(await graph.holdsDisks(vm))) return false;
          return (await graph.chain(diskOf(plan))).slice(1).some((n) => n.filename === plan.snapshotPath);
        },
      },
    ],
  };
}
