// Strategy "offline" (stopped VM), see docs/strategies.md:
//   create-staging → export → publish → verify → rebase-staging → retire-active →
//   promote-staging (point of no return) → remove-retired
import {
  createStagingStep,
  exportStep,
  publishStep,
  setBackingUnsafe,
  swapSteps,
  verifyStep,
} from '../common-steps.js';
import type { SnapshotDeps } from '../deps.js';
import type { CreateJournal, CreatePlan } from '../plan.js';
import type { StepPlan } from '../steps.js';
import type { VolumeBackend } from '../volumes.js';
import { fileRoots, type Strategy, type StrategyHooks, supportFrom } from './strategy.js';

/** A stopped VM: no copy-on-write; the active image is swapped for an overlay on the snapshot. */
export const offline = {
  name: 'offline',
  auto: { vm: 'stopped', rank: 0 },
  onHost: (host) =>
    supportFrom((need) => {
      const base = need(host.tools.qemuImg !== null, 'qemu-img not found');
      return {
        lvmPools: base && need(host.tools.lvm !== null, 'lvm2 not found (LVM pools)'),
        filePools: base ? fileRoots(host) : [],
      };
    }),
  fit: ({ vmRunning }) =>
    vmRunning
      ? { fits: false, whyNot: 'the VM is running; offline needs it stopped' }
      : { fits: true, why: 'no copy-on-write' },
  space: 'overlay',
  rewritesActiveHeader: true,
  steps: offlineSteps,
} satisfies Strategy;

/** The offline strategy's steps for one plan. */
function offlineSteps(
  plan: CreatePlan,
  backend: VolumeBackend,
  deps: SnapshotDeps,
  _journal: CreateJournal,
  hooks: StrategyHooks = {},
): StepPlan {
  const stagingPath = backend.pathOf(plan.stagingName);
  const retiredPath = backend.pathOf(plan.retiredName);
  return {
    kind: 'offline',
    pointOfNoReturn: 'promote-staging',
    steps: [
      // An empty overlay on the active image: it becomes the volume once the export is done.
      createStagingStep(backend, plan.stagingName, () =>
        backend.createOverlay(plan.stagingName, { file: plan.activePath, format: 'qcow2' }, plan.virtualSize),
      ),
      exportStep(deps, {
        source: plan.activePath,
        partPath: plan.partPath,
        parentBacking: plan.parentBacking,
        compress: plan.compress,
        forceShare: false, // takes the image lock: fails if a VM started meanwhile
        onProgress: hooks.onExportProgress,
        bytesTotal: plan.exportBytes,
        bandwidth: plan.bandwidthBytesPerSecond,
      }),
      publishStep(deps, {
        partPath: plan.partPath,
        snapshotPath: plan.snapshotPath,
        holders: () => [plan.activePath, stagingPath, retiredPath],
      }),
      verifyStep(deps, { snapshotPath: plan.snapshotPath, level: plan.verify, compareWith: plan.activePath }),
      {
        // Header only: the staging overlay now reads snap-N, whose data equals the active image's.
        name: 'rebase-staging',
        run: () => setBackingUnsafe(deps.qemuImg, stagingPath, plan.snapshotPath),
        undo: async () => {
          if (await backend.exists(plan.stagingName))
            await setBackingUnsafe(deps.qemuImg, stagingPath, plan.activePath);
        },
      },
      ...swapSteps(backend, deps, { staging: plan.stagingName, retired: plan.retiredName }),
    ],
  };
}
