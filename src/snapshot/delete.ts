// snapshot.delete: merge the snapshot into its child, then remove it.
//   merge (safe `qemu-img rebase` of the child onto the snapshot's own backing; point of no return:
//   the child's header no longer names the snapshot) → remove-snapshot (after proving nothing refers to it)

import { readdir } from 'node:fs/promises';
import { AgentError, ChainInvalidError, SnapshotInUseError, ValidationError } from '../errors/index.js';
import { isInside } from '../host/paths.js';
import type { JobContext } from '../jobs/types.js';
import { backingOf, backsOnto, pathExists, removeIfUnreferenced } from './chain.js';
import { blockGraphOf, type SnapshotDeps } from './deps.js';
import type { GuestFacts } from './journal.js';
import { activeLayerBackend } from './live-layers.js';
import { runPlannedJob } from './planned-job.js';
import type { StepPlan } from './steps.js';
import { diskOf, inspectVm, pinnedBackingChain, pinnedChainReason } from './vm.js';
import { FileVolumeBackend } from './volumes.js';

type DeleteContext = JobContext<'snapshot.delete'>;

export interface DeletePlan {
  snapshotName: string;
  snapshotPath: string;
  /** What the snapshot itself backs onto (its parent), which becomes the child's backing; null: none. */
  newBase: string | null;
  /** The backing string written into the child: relative between store files, absolute for the active. */
  childBacking: string | null;
  childPath: string;
  childIsActive: boolean;
  activePath: string;
  storeDir: string;
  vm: string | null;
  target: string | null;
}

export function deleteSnapshot(ctx: DeleteContext, deps: SnapshotDeps): Promise<Record<string, unknown>> {
  return runPlannedJob<DeletePlan, GuestFacts, Record<string, unknown>>(ctx, deps, {
    plan: () => makeDeletePlan(ctx, deps),
    steps: async (plan) => deleteSteps(plan, deps),
    result: async (plan) => ({
      deleted: plan.snapshotName,
      path: plan.snapshotPath,
      mergedInto: plan.childPath,
      childBacking: plan.childBacking,
    }),
  });
}

/** Checks the chain as the command gives it and every reason to refuse, before touching anything. */
export async function makeDeletePlan(ctx: DeleteContext, deps: SnapshotDeps): Promise<DeletePlan> {
  const params = ctx.command.params;
  const index = params.chain.indexOf(params.snapshot);
  if (index < 0) {
    throw new ValidationError('SNAPSHOT_NOT_IN_CHAIN', `${params.snapshot} is not in the given chain`, {
      field: 'snapshot',
    });
  }
  const backend = await activeLayerBackend(params.volume, params.vm, deps);
  const storeDir = await deps.store.directory(params.store);
  const snapshotPath = await deps.store.memberPath(params.store, params.snapshot);
  if (!(await pathExists(snapshotPath))) {
    throw new AgentError('SNAPSHOT_NOT_FOUND', `${snapshotPath} does not exist`, {
      details: { path: snapshotPath },
    });
  }
  const childIsActive = index === params.chain.length - 1;
  const childPath = childIsActive
    ? backend.activePath
    : await deps.store.memberPath(params.store, params.chain[index + 1]!);

  const snapshotBacking = await backingOf(deps.qemuImg, snapshotPath);
  const expectedParent =
    index > 0 ? await deps.store.memberPath(params.store, params.chain[index - 1]!) : null;
  if (index > 0 && snapshotBacking.resolved !== expectedParent) {
    throw new ChainInvalidError('the chain on disk is not the given chain', [
      `${snapshotPath} backs onto ${snapshotBacking.resolved ?? 'nothing'}, not ${expectedParent}`,
    ]);
  }
  const childBackingNow = await backingOf(deps.qemuImg, childPath);
  if (childBackingNow.resolved !== snapshotPath) {
    throw new ChainInvalidError('the chain on disk is not the given chain', [
      `${childPath} backs onto ${childBackingNow.resolved ?? 'nothing'}, not ${snapshotPath}`,
    ]);
  }

  const vm = await inspectVm(deps.libvirt, params.vm, backend.activePath);
  const pinned = childIsActive ? await pinnedBackingChain(deps.libvirt, params.vm, backend.activePath) : null;
  if (pinned !== null && params.vm !== null) {
    throw new SnapshotInUseError(params.snapshot, pinnedChainReason(params.vm, pinned), { retryable: false });
  }
  if (vm?.running) {
    if (childIsActive) {
      throw new SnapshotInUseError(
        params.snapshot,
        `it is the backing file of the running VM ${vm.name}'s disk and a live merge is not supported; stop the VM first`,
      );
    }
    const open = (await blockGraphOf(deps).chain(diskOf({ vm: vm.name, target: vm.target }))).map(
      (n) => n.filename,
    );
    for (const path of [snapshotPath, childPath]) {
      if (open.includes(path)) {
        throw new SnapshotInUseError(
          params.snapshot,
          `the running VM ${vm.name} has ${path} open in its disk chain; stop the VM first`,
        );
      }
    }
  }
  // A second child (another branch, or the active after a revert) would lose its data.
  const others = (await deps.store.list(params.store)).map((name) => `${storeDir}/${name}`);
  for (const other of [...others, backend.activePath]) {
    if (other === snapshotPath || other === childPath || !(await pathExists(other))) continue;
    if (await backsOnto(deps.qemuImg, other, snapshotPath)) {
      throw new SnapshotInUseError(params.snapshot, `${other} also backs onto it`, { retryable: false });
    }
  }

  // Space: the child takes in at most the snapshot's own clusters.
  const mergeBytes = await deps.qemuImg.allocatedBytes(snapshotPath, { topOnly: true, forceShare: true });
  if (!childIsActive) await deps.store.ensureFreeSpace(storeDir, mergeBytes, { reserveBytes: 1024 * 1024 });
  else if (backend instanceof FileVolumeBackend) await deps.filePool.ensureFreeSpace(backend.dir, mergeBytes);

  const newBase = snapshotBacking.resolved;
  const inStore = newBase !== null && deps.store.roots.some((root) => isInside(newBase, root));
  return {
    snapshotName: params.snapshot,
    snapshotPath,
    newBase,
    childBacking:
      newBase === null
        ? null
        : !childIsActive && inStore
          ? deps.store.relativeBacking(childPath, newBase)
          : newBase,
    childPath,
    childIsActive,
    activePath: backend.activePath,
    storeDir,
    vm: vm?.name ?? null,
    target: vm?.target ?? null,
  };
}

/** The delete steps for one plan. */
export function deleteSteps(plan: DeletePlan, deps: SnapshotDeps): StepPlan {
  const merged = (): Promise<boolean> => backsOnto(deps.qemuImg, plan.childPath, plan.newBase);
  return {
    kind: 'delete',
    pointOfNoReturn: 'merge',
    steps: [
      {
        // Safe rebase: the child receives every cluster it read through the snapshot, then its
        // header names the snapshot's parent. Guest-visible content of every image stays the same.
        name: 'merge',
        run: async (io) => {
          if (await merged()) return;
          await deps.qemuImg.rebase({
            image: plan.childPath,
            backing: plan.childBacking === null ? null : { file: plan.childBacking, format: 'qcow2' },
            unsafe: false,
            progress: (p) =>
              io.progress({ percent: p.percent, bytesDone: p.bytesDone, bytesTotal: p.bytesTotal }),
          });
        },
        isDone: merged,
      },
      {
        name: 'remove-snapshot',
        run: async () => {
          const holders = [plan.childPath, plan.activePath, ...(await storeFiles(deps, plan.storeDir))];
          const graph = blockGraphOf(deps);
          if (plan.vm !== null && (await graph.holdsDisks(plan.vm))) {
            // A VM stopped at plan time has no target there: look at it again.
            const target =
              plan.target ?? (await inspectVm(deps.libvirt, plan.vm, plan.activePath))?.target ?? null;
            const open = (await graph.chain(diskOf({ vm: plan.vm, target }))).map((n) => n.filename);
            if (open.includes(plan.snapshotPath)) {
              throw new SnapshotInUseError(plan.snapshotName, `the running VM ${plan.vm} has it open`);
            }
          }
          await removeIfUnreferenced(deps.store, plan.snapshotPath, holders);
        },
      },
    ],
  };
}

async function storeFiles(deps: SnapshotDeps, storeDir: string): Promise<string[]> {
  const entries = await readdir(await deps.store.confine(storeDir), { withFileTypes: true });
  return entries.filter((e) => e.isFile() && !e.name.startsWith('.')).map((e) => `${storeDir}/${e.name}`);
}
