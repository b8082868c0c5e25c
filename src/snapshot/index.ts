// The snapshot engine: strategies as step lists, the step runner with journal and recovery, the
// planner, and the delete / revert / verify handlers.
import type { AgentConfig } from '../config/index.js';
import { runTool } from '../host/exec.js';
import { FilePool } from '../host/file-pool.js';
import { Libvirt } from '../host/libvirt.js';
import { Lvm } from '../host/lvm.js';
import { confinedRunner } from '../host/paths.js';
import { QemuImg } from '../host/qemu-img.js';
import { SnapshotStore } from '../host/store.js';
import type { HandlerRegistry } from '../jobs/types.js';
import type { Logger } from '../observability/logger.js';
import { createSnapshot } from './create.js';
import { deleteSnapshot } from './delete.js';
import type { SnapshotDeps } from './deps.js';
import { ExportBandwidth } from './export-bandwidth.js';
import { resizeVolume } from './resize.js';
import { revertSnapshot } from './revert.js';
import { verifyChain } from './verify.js';

export { CHECKPOINT_CHANNEL, type Checkpoint } from './checkpoints.js';
export { createSnapshot, createSteps, makeCreatePlan } from './create.js';
export { deleteSnapshot, deleteSteps, makeDeletePlan } from './delete.js';
export type { SnapshotDeps } from './deps.js';
export { EngineJournal, type EngineRecord } from './journal.js';
export type { CreatePlan } from './plan.js';
export { candidateStrategies, chooseKind, chooseStrategy } from './planner.js';
export { resizeVolume } from './resize.js';
export { revertSnapshot, revertSteps } from './revert.js';
export { recoverSteps, runSteps, type Step, type StepPlan } from './steps.js';
export { hostSupport, STRATEGIES, type Strategy, type StrategyHooks } from './strategies/index.js';
export { verifyChain } from './verify.js';
export { jobTag, volumeBackend } from './volumes.js';

/** The handlers of snapshot.create, snapshot.delete, snapshot.revert, chain.verify and volume.resize. */
export function snapshotHandlers(deps: SnapshotDeps): HandlerRegistry {
  return {
    'snapshot.create': (ctx) => createSnapshot(ctx, deps),
    'snapshot.delete': (ctx) => deleteSnapshot(ctx, deps),
    'snapshot.revert': (ctx) => revertSnapshot(ctx, deps),
    'chain.verify': (ctx) => verifyChain(ctx, deps),
    'volume.resize': (ctx) => resizeVolume(ctx, deps),
  };
}

/** Builds the engine's adapters from the configuration. */
export function createSnapshotDeps(config: AgentConfig, logger: Logger): SnapshotDeps {
  const qemuImg = new QemuImg({
    logger,
    timeoutMs: config.timeouts.toolMs,
    exportTimeoutMs: config.timeouts.exportMs,
    // Every path under a root is re-resolved right before qemu-img runs (symlink swaps).
    run: confinedRunner(runTool, [...config.store.roots, ...config.pools.fileRoots]),
  });
  const store = new SnapshotStore({ roots: config.store.roots, qemuImg, logger });
  const filePool = new FilePool({
    roots: config.pools.fileRoots,
    qemuImg,
    timeoutMs: config.timeouts.toolMs,
    logger,
  });
  const lvm = new Lvm({ timeoutMs: config.timeouts.toolMs, logger });
  const libvirt = new Libvirt({
    uri: config.libvirt.uri,
    timeoutMs: config.timeouts.toolMs,
    copyTimeoutMs: config.timeouts.exportMs,
    logger,
  });
  const bandwidth = new ExportBandwidth({ hostLimit: config.limits.exportBytesPerSecond, logger });
  return {
    qemuImg,
    store,
    filePool,
    lvm,
    libvirt,
    liveRotate: config.snapshot.liveRotate,
    bandwidth,
  };
}
