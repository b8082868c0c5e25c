// Strategy "live-rotate" (running VM on a file pool or on LVM), see docs/strategies.md:
//   create-overlay → switch (point of no return: libvirt puts the new layer on top, QEMU writes to
//   it) → export → publish → verify → record-layer → commit-frozen → remove-frozen
// No pause. Everything that changes the running chain goes through libvirt (an external disk-only
// snapshot onto the layer we made, a non-active block commit), so libvirt's live and saved
// descriptions always name the chain QEMU really uses (ARCHITECTURE invariant 8). The live chain
// stays on primary storage (active layer → local base); the store is a pure backup chain. The
// export is exactly the old top layer: the writes since the previous snapshot. The cost: the active
// layer's name changes with every snapshot (the result's `volumePath`), and each delta is written
// twice locally (once by the guest, once by the commit into the base). On LVM every layer is a
// thick LV of the volume's full size (two per volume, three during a rotation); no LV is ever
// renamed, so QEMU's reopen of the old top by its path always finds the same device.
import { basename } from 'node:path';
import { AgentError, InsufficientSpaceError, QmpError } from '../../errors/index.js';
import { readQcow2Header } from '../../host/qcow2-header.js';
import type { FlushHandle } from '../../host/rooted-files.js';
import { retrying } from '../../timing.js';
import { planExportStep, publishStep, verifyStep } from '../common-steps.js';
import { blockGraphOf, type SnapshotDeps } from '../deps.js';
import { localLayers, markUnmerged, nextLayerName, writeLayerRecord } from '../live-layers.js';
import type { CreateJournal, CreatePlan } from '../plan.js';
import type { StepPlan } from '../steps.js';
import { diskOf, freezeRecord } from '../vm.js';
import { FileVolumeBackend, LvmVolumeBackend, type VolumeBackend } from '../volumes.js';
import { fileRoots, type Strategy, type StrategyHooks, supportFrom } from './strategy.js';

/** Why live-rotate is refused when the host turned it off (config snapshot.liveRotate). */
export const LIVE_ROTATE_DISABLED =
  "disabled on this host (snapshot.liveRotate): live rotation moves the volume's active layer to a new file or LV with every snapshot, and a management plane that does not apply the result's volumePath would start the VM on an old layer";

/** How long libvirt may take to update its chain (and QEMU to close the layer) after a block commit job ended. */
const COMMIT_SETTLE_MS = 10_000;

/** A running VM on a file pool or LVM, no pause: libvirt puts a new layer on top, the old top is exported. */
export const liveRotate = {
  name: 'live-rotate',
  auto: { vm: 'running', rank: 0 },
  onHost: (host, options) =>
    supportFrom((need) => {
      if (!need(options.liveRotate === 'enabled', LIVE_ROTATE_DISABLED))
        return { lvmPools: false, filePools: [] };
      // libvirt makes every change to the running chain (external disk-only snapshot, block
      // commit): no QMP block-graph command of the agent's own, so no QEMU version rule of its own.
      const base =
        need(host.tools.qemuImg !== null, 'qemu-img not found') &&
        need(host.tools.libvirt !== null, 'libvirt not available');
      return {
        lvmPools: base && need(host.tools.lvm !== null, 'lvm2 not found (LVM pools)'),
        filePools: base ? fileRoots(host) : [],
      };
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
  planLayers: async (backend, activeChain) => ({
    stagingName: await nextLayerName(backend, backend.activeName),
    liveLayers: localLayers(backend, activeChain),
  }),
  steps: liveRotateSteps,
} satisfies Strategy;

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
  const graph = blockGraphOf(deps);
  const disk = diskOf(plan);
  const overlayPath = backend.pathOf(plan.stagingName);
  const frozenPath = plan.activePath;
  // The volume's local layers from the old top down to its base, as planned (a job that failed
  // after its switch may have left one more between them; the commit merges them all).
  const layers = plan.liveLayers ?? [frozenPath];
  const basePath = layers.at(-1) ?? frozenPath;

  // After the switch QEMU writes to the overlay. A VM found running on the old top was started
  // again from a description older than the switch (a management plane that did not apply
  // volumePath): its guest writes land in the layer we export and merge. Stop, keep every layer.
  // Waits for the disk's block job to end and libvirt to drop the old top from its chain (it does
  // so when it handles QEMU's completion event, a moment after the job is gone). False: it stayed.
  const commitSettled = async (): Promise<boolean> => {
    const deadline = Date.now() + COMMIT_SETTLE_MS;
    for (let delay = 5; ; delay = Math.min(delay * 2, 200)) {
      await graph.waitForBlockJob(disk);
      if (!((await graph.describedChain(disk, { live: true })) ?? []).includes(frozenPath)) return true;
      if (Date.now() > deadline) return false;
      await new Promise((resolve) => setTimeout(resolve, delay));
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
    if (!(await graph.holdsDisks(vm))) return;
    const top = (await graph.describedChain(disk, { live: true }))?.[0];
    if (top !== overlayPath) throw layerKept(what, top);
  };

  // What the guest wrote into the new layer. One with no QCOW2 header yet holds nothing: the job
  // died between making the LV (or file) and `qemu-img create` writing the header (a power cut in
  // create-overlay), and QEMU never opened it; qemu-img would refuse it ("not in qcow2 format").
  const overlayBytes = async (): Promise<number> => {
    if ((await readQcow2Header(overlayPath)) === null) return 0;
    return deps.qemuImg.allocatedBytes(overlayPath, { topOnly: true, forceShare: true });
  };

  // (The backend guards its own active name, this old top: the layer goes through its pool directly.)
  const removeMergedLayer = async (path: string): Promise<void> => {
    if (backend instanceof FileVolumeBackend) {
      await deps.filePool.remove(path);
      return;
    }
    if (!(backend instanceof LvmVolumeBackend)) throw new Error(`live-rotate on a ${backend.kind} pool`);
    const name = basename(path);
    // libvirt drops the layer from its chain a moment before QEMU closes the device: wait for that,
    // then lvremove (which refuses an LV still open).
    const deadline = Date.now() + COMMIT_SETTLE_MS;
    for (;;) {
      const lv = await backend.volume(name);
      if (lv === undefined) return;
      if (!lv.open || Date.now() > deadline) break;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    await deps.lvm.removeVolume(backend.vg, name);
  };

  // The commit writes two images: the merged clusters into the base, and, as it completes, the
  // overlay's header (its backing file becomes the base). Neither is flushed by QEMU, and the
  // merged layers may go only once both are on disk (a power cut after the removal with the old
  // header on disk leaves the overlay backed by a layer that is gone: P4, reliability.md).
  // Descriptors of both opened before the commit writes to them: an fsync reports every write error
  // since, even one QEMU saw first (QEMU flushes the base when the commit reopens it read-only, and
  // ignores a failure there). A descriptor opened later would get nothing for an error already seen
  // (Linux errseq). None in a process that did not start the commit (resumed after a crash): then
  // ones opened now, which report only an error nobody has seen yet.
  const mergeWrites = [basePath, overlayPath];
  const flushes = new Map<string, FlushHandle>();
  const closeFlushes = async (): Promise<void> => {
    const handles = [...flushes.values()];
    flushes.clear();
    for (const handle of handles) await handle.close();
  };

  // QEMU's caches of the base first: a base QEMU left writable (its commit's read-only reopen
  // failed) holds the merged clusters' QCOW2 tables only in QEMU's memory until a reopen flushes them
  // (L5). QEMU refusing that reopen is the flush failing; anything else (libvirt unreachable) says
  // nothing about the base and fails the step as it is. A QEMU gone flushed or lost at its exit:
  // the fsync below tells which.
  const sealBase = async (): Promise<unknown> => {
    try {
      if (await graph.holdsDisks(vm)) await graph.sealLayer(disk, basePath);
      return undefined;
    } catch (error) {
      if (error instanceof QmpError) return error;
      await closeFlushes().catch(() => undefined);
      throw error;
    }
  };

  // Seals the base in QEMU, then fsyncs the base and the overlay once each (a second fsync after a
  // failed one reports nothing: the failed pages are clean by then). On failure: mark each merged
  // layer, then fail with their names.
  const proveMergeDurable = async (merged: string[]): Promise<void> => {
    // What failed, as journaled: `<image>: <error>` (a resumed job reads it back).
    let failure = journal.get().facts.mergeNotDurable;
    let flushError: unknown = failure;
    let flushing = basePath;
    if (failure === undefined) {
      flushError = await sealBase();
      try {
        if (flushError === undefined) {
          for (const path of mergeWrites) {
            flushing = path;
            const handle = flushes.get(path) ?? (await backend.flushHandle(basename(path)));
            flushes.set(path, handle);
            await handle.sync();
          }
          return;
        }
      } catch (error) {
        flushError = error;
      } finally {
        await closeFlushes().catch(() => undefined);
      }
      failure = `${flushing}: ${flushError instanceof Error ? flushError.message : String(flushError)}`;
      await journal.update((r) => {
        r.facts.mergeNotDurable = failure;
      });
    }
    const marked: string[] = [];
    let markError: string | null = null;
    for (const path of merged) {
      try {
        // A pool write-error burst may still be passing: asked again, 4 times 2 s apart.
        await retrying(() => markUnmerged(backend, basename(path), basePath), {
          attempts: 4,
          delayMs: 2_000,
        });
        marked.push(path);
      } catch (error) {
        markError = String(error); // the pool may still refuse writes: the layer is kept all the same
      }
    }
    throw new AgentError(
      'LAYER_MERGE_NOT_DURABLE',
      `the block commit merged ${merged.join(', ')} into ${basePath}, but flushing failed (${failure}): ` +
        `on disk the base may lack writes that only ${merged.join(', ')} still ` +
        `hold${merged.length === 1 ? 's' : ''}, or the overlay's header may still name ${merged.length === 1 ? 'it' : 'them'}; kept ` +
        `${markError === null ? 'and marked' : `(marking failed: ${markError})`}, the volume needs repair`,
      {
        cause: flushError,
        details: { vm, base: basePath, keptLayers: merged, marked, markError },
      },
    );
  };

  const exportOldTop = planExportStep(deps, plan, hooks, {
    source: frozenPath,
    forceShare: true, // QEMU holds the old top read-only
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
          if ((await overlayBytes()) > 0) throw layerKept('the rollback');
          await backend.remove(plan.stagingName);
        },
      },
      {
        // libvirt's external disk-only snapshot onto our layer (`--reuse-external --no-metadata`):
        // QEMU drains the old top, reopens it read-only and writes to the overlay from then on;
        // libvirt records the new chain in the domain's live (and persistent) description.
        name: 'switch',
        run: async () => {
          if ((await graph.describedChain(disk, { live: true }))?.[0] === overlayPath) return;
          const switchLayers = async () => {
            const started = performance.now();
            await graph.switchToOverlay(disk, {
              file: overlayPath,
              sourceType: backend.kind === 'lvm' ? 'block' : 'file',
            });
            const switchMs = performance.now() - started;
            await journal.update((r) => {
              r.facts.switchMs = Math.round(switchMs * 1000) / 1000;
            });
            hooks.midStep?.('switch');
          };
          if (plan.quiesce) await graph.withGuestFrozen(vm, switchLayers, freezeRecord(journal, vm));
          else await switchLayers();
        },
        // Done when libvirt's chain starts with the overlay. A domain that is gone: done when the
        // overlay holds data (QEMU wrote to it); an empty one loses nothing either way.
        isDone: async () => {
          const chain = await graph.describedChain(disk);
          if (chain !== null) return chain[0] === overlayPath;
          if (!(await backend.exists(plan.stagingName))) return false;
          return (await overlayBytes()) > 0;
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
        run: () => writeLayerRecord(backend, plan.stagingName, plan.snapshotPath),
      },
      {
        // libvirt's non-active block commit merges the old top (and any layer a failed job left)
        // into the local base; libvirt drops them from its chain. A VM stopped meanwhile keeps
        // them (its saved description names them): the next rotation merges them.
        name: 'commit-frozen',
        run: async () => {
          if (frozenPath === basePath) return; // the first rotation: the old top is the base
          if (!(await graph.holdsDisks(vm))) return;
          await assertOnOverlay('the commit');
          await closeFlushes();
          for (const path of mergeWrites) flushes.set(path, await backend.flushHandle(basename(path)));
          try {
            // A commit this job started (journaled first) goes on in libvirtd if the agent died.
            if (journal.get().facts.commitStarted === true && (await commitSettled())) return;
            await journal.update((r) => {
              r.facts.commitStarted = true;
            });
            await graph.startCommit(disk, { top: frozenPath, base: basePath });
            hooks.midStep?.('commit-frozen');
            if (!(await commitSettled())) {
              const chain = await graph.describedChain(disk, { live: true });
              throw new AgentError(
                'VOLUME_STATE_UNEXPECTED',
                `the block commit of ${frozenPath} ended but libvirt still lists it`,
                { details: { vm, chain } },
              );
            }
          } catch (error) {
            await closeFlushes().catch(() => undefined);
            throw error;
          }
        },
      },
      {
        // The merged layers, each only after proving neither the overlay's headers nor libvirt's
        // chain contain it any more, and that the merge is on disk: a commit through the host page
        // cache (QEMU without O_DIRECT, libvirt's default cache mode) "completes" with its writes to
        // the base still dirty in memory, and a write error at their writeback loses them silently
        // (reliability.md, L4), and so is the overlay's new header (P4). So both are fsynced first
        // through descriptors of our own; if that fails, the layers holding the only good copy stay,
        // marked, and the job fails.
        name: 'remove-frozen',
        run: async () => {
          if (layers.length <= 1) return; // the first rotation: the old top is the base, nothing merged
          const onDisk = (await deps.store.readChain(overlayPath)).map((m) => m.path);
          const described = (await graph.describedChain(disk)) ?? [];
          // Those still named are not merged (VM stopped): the next rotation merges them.
          const merged = layers.slice(0, -1).filter((p) => !onDisk.includes(p) && !described.includes(p));
          if (merged.length === 0) return closeFlushes();
          await proveMergeDurable(merged);
          for (const path of merged) await removeMergedLayer(path);
        },
      },
    ],
  };
}

/**
 * Whether the running VM's volume can rotate live: the disk's top image is QCOW2 (its header, read
 * in-process: no QMP in QEMU's main loop for it), libvirt names it
 * as the kind of source the pool has (a `block` disk for an LV, a `file` disk in a file pool), and
 * the pool has room for the new layer (on LVM a thick LV of the volume's full size).
 */
async function probeLiveRotate(
  deps: Pick<SnapshotDeps, 'libvirt'>,
  vm: string,
  target: string,
  backend: VolumeBackend,
  virtualSize: number,
): Promise<{ supported: boolean; reason: string }> {
  if ((await readQcow2Header(backend.activePath)) === null) {
    return { supported: false, reason: `the disk's top image ${backend.activePath} is not qcow2` };
  }
  const sourceType = backend.kind === 'lvm' ? 'block' : 'file';
  const disk = (await deps.libvirt.disks(vm)).find((d) => d.target === target);
  if (disk !== undefined && disk.type !== sourceType) {
    return {
      supported: false,
      reason: `libvirt describes the disk as type='${disk.type}', not '${sourceType}' as the ${backend.kind} pool's layers are`,
    };
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
      backend.kind === 'lvm'
        ? 'libvirt rotates the LVM volume live (external disk-only snapshot onto a new LV, block commit into the base LV)'
        : 'libvirt rotates the file-pool volume live (external disk-only snapshot, block commit into the local base)',
  };
}
