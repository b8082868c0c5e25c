// snapshot.revert (VM stopped): the volume becomes a fresh overlay on the snapshot (instant) or a
// flattened standalone copy of it.
//   create-staging → retire-active → promote-staging (point of no return) → remove-retired
import { AgentError, ValidationError, VmStateError } from '../errors/index.js';
import type { JobContext } from '../jobs/types.js';
import { pathExists } from './chain.js';
import { createStagingStep, swapSteps } from './common-steps.js';
import type { SnapshotDeps } from './deps.js';
import type { GuestFacts } from './journal.js';
import { activeLayerBackend, volumeAt } from './live-layers.js';
import { runPlannedJob } from './planned-job.js';
import type { StepPlan } from './steps.js';
import { inspectVm, pinnedBackingChain, pinnedChainReason } from './vm.js';
import { jobTag, type VolumeBackend, volumeBackend } from './volumes.js';

type RevertContext = JobContext<'snapshot.revert'>;

export interface RevertPlan {
  snapshotName: string;
  snapshotPath: string;
  mode: 'overlay' | 'flatten';
  activePath: string;
  virtualSize: number;
  stagingName: string;
  retiredName: string;
}

export function revertSnapshot(ctx: RevertContext, deps: SnapshotDeps): Promise<Record<string, unknown>> {
  return runPlannedJob<RevertPlan, GuestFacts, Record<string, unknown>>(ctx, deps, {
    plan: () => makeRevertPlan(ctx, deps),
    steps: async (plan) =>
      revertSteps(
        plan,
        await volumeBackend(volumeAt(ctx.command.params.volume, plan.activePath), deps),
        deps,
      ),
    result: async (plan) => ({
      activePath: plan.activePath,
      revertedTo: plan.snapshotName,
      mode: plan.mode,
      backing: plan.mode === 'overlay' ? plan.snapshotPath : null,
    }),
  });
}

export async function makeRevertPlan(ctx: RevertContext, deps: SnapshotDeps): Promise<RevertPlan> {
  const params = ctx.command.params;
  if (!params.chain.includes(params.snapshot)) {
    throw new ValidationError('SNAPSHOT_NOT_IN_CHAIN', `${params.snapshot} is not in the given chain`, {
      field: 'snapshot',
    });
  }
  const backend = await activeLayerBackend(params.volume, params.vm, deps);
  const vm = await inspectVm(deps.libvirt, params.vm, backend.activePath);
  if (vm?.running) throw new VmStateError(vm.name, vm.state, 'revert needs the VM stopped');
  const pinned = await pinnedBackingChain(deps.libvirt, params.vm, backend.activePath);
  if (pinned !== null && params.vm !== null) {
    throw new AgentError(
      'VOLUME_STATE_UNEXPECTED',
      `revert refused: ${pinnedChainReason(params.vm, pinned)}`,
      {
        details: { vm: params.vm, chain: pinned },
      },
    );
  }
  const snapshotPath = await deps.store.memberPath(params.store, params.snapshot);
  if (!(await pathExists(snapshotPath))) {
    throw new AgentError('SNAPSHOT_NOT_FOUND', `${snapshotPath} does not exist`, {
      details: { path: snapshotPath },
    });
  }
  // Every layer under the snapshot must resolve before the volume depends on it.
  const [top] = await deps.store.readChain(snapshotPath);
  await backend.ensureSpace(params.mode === 'overlay' ? 'overlay' : 'copy', top!.virtualSize);
  const tag = jobTag(ctx.jobId);
  return {
    snapshotName: params.snapshot,
    snapshotPath,
    mode: params.mode,
    activePath: backend.activePath,
    virtualSize: top!.virtualSize,
    stagingName: backend.tempName('stg', tag),
    retiredName: backend.tempName('old', tag),
  };
}

/** The revert steps for one plan. */
export function revertSteps(plan: RevertPlan, backend: VolumeBackend, deps: SnapshotDeps): StepPlan {
  const stagingPath = backend.pathOf(plan.stagingName);
  return {
    kind: 'revert',
    pointOfNoReturn: 'promote-staging',
    steps: [
      createStagingStep(backend, plan.stagingName, async (io) => {
        if (plan.mode === 'overlay') {
          await backend.createOverlay(
            plan.stagingName,
            { file: plan.snapshotPath, format: 'qcow2' },
            plan.virtualSize,
          );
          return;
        }
        const { targetExists } = await backend.prepareCopyTarget(plan.stagingName, plan.snapshotPath);
        await deps.qemuImg.convert({
          source: plan.snapshotPath,
          target: stagingPath,
          targetExists,
          signal: io.signal,
          progress: (p) =>
            io.progress({ percent: p.percent, bytesDone: p.bytesDone, bytesTotal: p.bytesTotal }),
        });
      }),
      ...swapSteps(backend, deps, { staging: plan.stagingName, retired: plan.retiredName }),
    ],
  };
}
