// Strategy "live-rotate" (running VM on a file pool), see docs/strategies.md:
//   create-overlay → switch (point of no return: libvirt puts the new layer on top, QEMU writes to
//   it) → export → publish → verify → record-layer → commit-frozen → remove-frozen
// No pause. Everything that changes the running chain goes through libvirt (an external disk-only
// snapshot onto the layer we made, a non-active block commit), so libvirt's live and saved
// descriptions always name the chain QEMU really uses (ARCHITECTURE invariant 8). The live chain
// stays on primary storage (active layer → local base); the store is a pure backup chain. The
// export is exactly the old top layer: the writes since the previous snapshot. The cost: the active
// layer's name changes with every snapshot (the result's `volumePath`), and each delta is written
// twice locally (once by the guest, once by the commit into the base).
import { AgentError, HostCommandError, InsufficientSpaceError } from '../../errors/index.js';
import { exportStep, publishStep, verifyStep } from '../common-steps.js';
import type { SnapshotDeps } from '../deps.js';
import { familyNames, nextLayerName, writeLayerRecord } from '../live-layers.js';
import type { CreateJournal, CreatePlan } from '../plan.js';
import type { StepPlan } from '../steps.js';
import { freezeGuest, thawGuest } from '../vm.js';
import { FileVolumeBackend, type VolumeBackend } from '../volumes.js';
import { fileRoots, type Strategy, type StrategyHooks, supportFrom } from './strategy.js';

/** Why live-rotate is refused when the host turned it off (config snapshot.liveRotate). */
export const LIVE_ROTATE_DISABLED =
  "disabled on this host (snapshot.liveRotate): live rotation moves the volume's active layer to a new file with every snapshot, and a management plane that does not apply the result's volumePath would start the VM on an old layer";

/** How long libvirt may take to update its chain after a block commit job ended. */
const COMMIT_SETTLE_MS = 10_000;

/** A running VM on a file pool, no pause: libvirt puts a new layer on top, the old top is exported. */
export const liveRotate = {
  name: 'live-rotate',
  auto: { vm: 'running', rank: 0 },
  onHost: (host, options) =>
    supportFrom((need, reasons) => {
      if (!need(options.liveRotate === 'enabled', LIVE_ROTATE_DISABLED))
        return { lvmPools: false, filePools: [] };
      const qemu = host.tools.qemu;
      const base =
        need(host.tools.qemuImg !== null, 'qemu-img not found') &&
        need(host.tools.libvirt !== null, 'libvirt not available') &&
        need(
          host.qmp.blockdevReopen,
          `QEMU ${qemu ?? 'unknown'} has no stable blockdev-reopen (needs ≥ 6.1)`,
        ) &&
        need(host.qmp.changeBackingFile, 'QEMU has no change-backing-file');
      // File pools only: on LVM the libvirt-tracked rotation is not proven yet, and the engine refuses it.
      if (base) reasons.push('LVM pools: live rotation through libvirt is not supported on LVM yet');
      return { lvmPools: false, filePools: base ? fileRoots(host) : [] };
    }),
  probe: async ({ deps, vm, backend, virtualSize }) => {
    if (!vm?.running || vm.target === null) return null;
    if (deps.liveRotate === 'disabled') return { supported: false, reason: LIVE_ROTATE_DISABLED };
    return probeLiveRotate(deps, vm.name, vm.target, backend, virtualSize);
  },
  fit: ({ vmRunning, probe }) => {
    if (!vmRunning) return { fits: false, whyNot: 'the VM is not running; offline snapshots a stopped VM' };
    if (!probe?.supported) return { fits: false, whyNot: probe?.reason ?? 'not probed' };
    return { fits: true, why: probe.reason ?? 'supported' };
  },
  space: 'overlay',
  rewritesActiveHeader: false,
  movesActiveLayerAt: 'switch',
  planLayers: async (backend, activeChain) =>
    backend instanceof FileVolumeBackend
      ? {
          stagingName: await nextLayerName(backend.dir, backend.activeName),
          liveLayers: localLayers(backend, activeChain),
        }
      : null,
  steps: liveRotateSteps,
} satisfies Strategy;

/** The active chain's layers that are this volume's own files in its pool (top first, down to its base). */
function localLayers(backend: FileVolumeBackend, chain: string[]): string[] {
  const own = new Set(familyNames(backend.activeName).map((n) => backend.pathOf(n)));
  const layers: string[] = [];
  for (const path of chain) {
    if (!own.has(path)) break;
    layers.push(path);
  }
  return layers;
}

/** The live-rotate strategy's steps for one plan. */
function liveRotateSteps(
  plan: CreatePlan,
  backend: VolumeBackend,
  deps: SnapshotDeps,
  journal: CreateJournal,
  hooks: StrategyHooks = {},
): StepPlan {
  const vm = plan.vm;
  if (vm === null || !plan.vmRunning) throw new Error('live-rotate needs a running VM (the planner checks)');
  if (!(backend instanceof FileVolumeBackend))
    throw new Error('live-rotate runs on file pools (the probe checks)');
  const libvirt = deps.libvirt;
  const target = plan.target ?? 'vda';
  const overlayPath = backend.pathOf(plan.stagingName);
  const frozenPath = plan.activePath;
  // The volume's local layers from the old top down to its base, as planned (a job that failed
  // after its switch may have left one more between them; the commit merges them all).
  const layers = plan.liveLayers ?? [frozenPath];
  const basePath = layers.at(-1) ?? frozenPath;

  // Whether a QEMU process holds the volume (running or paused); a domain that is gone holds nothing.
  const running = async (): Promise<boolean> => {
    try {
      return (await libvirt.domainState(vm)).state !== 'shut off';
    } catch (error) {
      if (error instanceof HostCommandError && error.kind === 'not-found') return false;
      throw error;
    }
  };
  // libvirt's chain of the disk (live while it runs, else the persistent definition); null: no domain.
  const libvirtChain = async (): Promise<string[] | null> => {
    try {
      return await libvirt.diskSources(vm, target, { inactive: !(await running()) });
    } catch (error) {
      if (error instanceof HostCommandError && error.kind === 'not-found') return null;
      throw error;
    }
  };
  // After the switch QEMU writes to the overlay. A VM found running on the old top was started
  // again from a description older than the switch (a management plane that did not apply
  // volumePath): its guest writes land in the layer we export and merge. Stop, keep every layer.
  // Waits for the disk's block job to end and libvirt to drop the old top from its chain (it does
  // so when it handles QEMU's completion event, a moment after the job is gone). False: it stayed.
  const commitSettled = async (): Promise<boolean> => {
    const deadline = Date.now() + COMMIT_SETTLE_MS;
    for (;;) {
      await libvirt.waitForBlockJob(vm, target);
      if (!(await libvirt.diskSources(vm, target)).includes(frozenPath)) return true;
      if (Date.now() > deadline) return false;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  };
  const layerKept = (what: string, runsOn?: string): AgentError =>
    new AgentError(
      'VOLUME_STATE_UNEXPECTED',
      `VM ${vm} runs on ${runsOn ?? 'its old top'}, not on ${overlayPath} that libvirt switched it to ` +
        `(started again from a description older than the switch?): ${what} stops here and keeps every ` +
        'layer, the new one holding writes the restarted guest no longer sees, for inspection',
      { details: { vm, active: runsOn ?? null, expected: overlayPath, layers } },
    );
  const assertOnOverlay = async (what: string): Promise<void> => {
    if (!(await running())) return;
    const [top] = await libvirt.diskSources(vm, target);
    if (top !== overlayPath) throw layerKept(what, top);
  };

  const exportOldTop = exportStep(deps, {
    source: frozenPath,
    partPath: plan.partPath,
    parentBacking: plan.parentBacking,
    compress: plan.compress,
    forceShare: true, // QEMU holds the old top read-only
    onProgress: hooks.onExportProgress,
    bytesTotal: plan.exportBytes,
    bandwidth: plan.bandwidthBytesPerSecond,
  });

  return {
    kind: 'live-rotate',
    pointOfNoReturn: 'switch',
    steps: [
      {
        // The new top under its final name (a free layer name of the volume), on the old top.
        name: 'create-overlay',
        run: async () => {
          await backend.remove(plan.stagingName); // a half-made one from an earlier attempt of this job
          await backend.createOverlay(
            plan.stagingName,
            { file: frozenPath, format: 'qcow2' },
            plan.virtualSize,
          );
        },
        undo: async () => {
          // Reached when the switch did not happen (the runner asks switch's isDone first), so the
          // layer is empty. One holding data was written by a QEMU that a stale description then
          // replaced (restarted on the old top): those writes are kept for inspection, never dropped.
          if (!(await backend.exists(plan.stagingName))) return;
          if ((await deps.qemuImg.allocatedBytes(overlayPath, { topOnly: true, forceShare: true })) > 0) {
            throw layerKept('the rollback');
          }
          await backend.remove(plan.stagingName);
        },
      },
      {
        // libvirt's external disk-only snapshot onto our layer (`--reuse-external --no-metadata`):
        // QEMU drains the old top, reopens it read-only and writes to the overlay from then on;
        // libvirt records the new chain in the domain's live (and persistent) description.
        name: 'switch',
        run: async () => {
          if ((await libvirt.diskSources(vm, target))[0] === overlayPath) return;
          const freeze = plan.quiesce ? await freezeGuest(libvirt, journal, vm) : null;
          try {
            const started = performance.now();
            await libvirt.externalSnapshot(vm, { target, file: overlayPath, sourceType: 'file' });
            const switchMs = performance.now() - started;
            await journal.update((r) => {
              r.facts.switchMs = Math.round(switchMs * 1000) / 1000;
            });
            hooks.midStep?.('switch');
          } finally {
            if (freeze !== null && 'frozen' in freeze) await thawGuest(libvirt, journal, vm);
          }
        },
        // Done when libvirt's chain starts with the overlay. A domain that is gone: done when the
        // overlay holds data (QEMU wrote to it); an empty one loses nothing either way.
        isDone: async () => {
          const chain = await libvirtChain();
          if (chain !== null) return chain[0] === overlayPath;
          if (!(await backend.exists(plan.stagingName))) return false;
          return (await deps.qemuImg.allocatedBytes(overlayPath, { topOnly: true, forceShare: true })) > 0;
        },
      },
      {
        ...exportOldTop,
        // The old top is stable only while QEMU holds it read-only below the overlay.
        run: async (io) => {
          await assertOnOverlay('the export');
          await exportOldTop.run(io);
        },
      },
      publishStep(deps, {
        partPath: plan.partPath,
        snapshotPath: plan.snapshotPath,
        holders: () => [overlayPath, frozenPath],
      }),
      verifyStep(deps, { snapshotPath: plan.snapshotPath, level: plan.verify, compareWith: frozenPath }),
      {
        // From now on the overlay holds exactly the writes since this snapshot: the next one can
        // be a delta of it. Written only once the snapshot is published and verified.
        name: 'record-layer',
        run: () => writeLayerRecord(backend.dir, plan.stagingName, plan.snapshotPath),
      },
      {
        // libvirt's non-active block commit merges the old top (and any layer a failed job left)
        // into the local base; libvirt drops them from its chain. A VM stopped meanwhile keeps
        // them (its saved description names them): the next rotation merges them.
        name: 'commit-frozen',
        run: async () => {
          if (frozenPath === basePath) return; // the first rotation: the old top is the base
          if (!(await running())) return;
          await assertOnOverlay('the commit');
          // A commit this job started (journaled first) goes on in libvirtd if the agent died.
          if (journal.get().facts.commitStarted === true && (await commitSettled())) return;
          await journal.update((r) => {
            r.facts.commitStarted = true;
          });
          await libvirt.startBlockCommit(vm, { target, top: frozenPath, base: basePath });
          hooks.midStep?.('commit-frozen');
          if (!(await commitSettled())) {
            const chain = await libvirt.diskSources(vm, target);
            throw new AgentError(
              'VOLUME_STATE_UNEXPECTED',
              `the block commit of ${frozenPath} ended but libvirt still lists it`,
              { details: { vm, chain } },
            );
          }
        },
      },
      {
        // The merged layers, each only after proving neither the overlay's headers nor libvirt's
        // chain contain it any more.
        name: 'remove-frozen',
        run: async () => {
          const onDisk = (await deps.store.readChain(overlayPath)).map((m) => m.path);
          const described = (await libvirtChain()) ?? [];
          for (const path of layers.slice(0, -1)) {
            if (onDisk.includes(path) || described.includes(path)) continue; // not merged (VM stopped)
            await deps.filePool.remove(path); // (the backend guards its own active name: this old top)
          }
        },
      },
    ],
  };
}

/**
 * Whether the running VM's volume can rotate live: a file pool (the libvirt-tracked rotation is
 * not proven on LVM yet), the disk's top layer is QCOW2, and the pool has room for the new layer.
 */
async function probeLiveRotate(
  deps: Pick<SnapshotDeps, 'libvirt'>,
  vm: string,
  target: string,
  backend: VolumeBackend,
  virtualSize: number,
): Promise<{ supported: boolean; reason: string }> {
  if (backend.kind !== 'file') {
    return {
      supported: false,
      reason:
        'the volume is on LVM, where the libvirt-tracked rotation is not proven yet (docs/operations.md)',
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
      return { supported: false, reason: `no room for the new layer: ${error.message}` };
    }
    throw error;
  }
  return {
    supported: true,
    reason:
      'libvirt rotates the file-pool volume live (external disk-only snapshot, block commit into the local base)',
  };
}
