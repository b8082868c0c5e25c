import { stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { AgentError, PathExistsError, StrategyUnavailableError } from '../errors/index.js';
import type { JobContext } from '../jobs/types.js';
import type { SnapshotCreateResult } from '../protocol/index.js';
import { pathExists } from './chain.js';
import { checkpoint } from './checkpoints.js';
import type { SnapshotDeps } from './deps.js';
import { existingActiveLayer, layerHoldsWritesSince, refuseUnmergedLayers, volumeAt } from './live-layers.js';
import type { CreateFacts, CreateJournal, CreatePlan } from './plan.js';
import { runPlannedJob } from './planned-job.js';
import { candidateStrategies, chooseKind, chooseStrategy } from './planner.js';
import type { StepPlan } from './steps.js';
import { STRATEGIES, type StrategyHooks, strategyOf, type VolumeProbe } from './strategies/index.js';
import { inspectVm, pinnedBackingChain, pinnedChainReason } from './vm.js';
import { jobTag, type VolumeBackend, volumeBackend } from './volumes.js';

type CreateContext = JobContext<'snapshot.create'>;

/**
 * snapshot.create: plans (strategy, full/delta, names, capacity), journals the plan, runs the
 * strategy's steps, and returns the SnapshotCreateResult. With `ctx.recovering` it rebuilds the
 * steps from the journaled plan and rolls back or finishes (see steps.ts).
 */
export function createSnapshot(ctx: CreateContext, deps: SnapshotDeps): Promise<SnapshotCreateResult> {
  return runPlannedJob<CreatePlan, CreateFacts, SnapshotCreateResult>(ctx, deps, {
    plan: () => makeCreatePlan(ctx, deps),
    steps: async (plan, journal) => {
      // The plan names the layer it snapshots (a command may name the volume by another of its names).
      const backend = await volumeBackend(volumeAt(ctx.command.params.volume, plan.activePath), deps);
      return createSteps(plan, backend, deps, journal);
    },
    result: createResult,
    failure: withVolumePath,
  });
}

/** The job's step list for a plan (its strategy's, from the table), its checkpoints published. */
export function createSteps(
  plan: CreatePlan,
  backend: VolumeBackend,
  deps: SnapshotDeps,
  journal: CreateJournal,
): StepPlan {
  const hooks: StrategyHooks = {
    onExportProgress: (percent: number) => {
      if (percent > 0 && percent < 100) checkpoint(`${plan.strategy}:export:during`);
    },
    // Inside a step, at its critical moment (VM paused by lvm-cow, right after live-rotate's switch).
    midStep: (step: string) => checkpoint(`${plan.strategy}:${step}:during`),
  };
  return STRATEGIES[plan.strategy].steps(plan, backend, deps, journal, hooks);
}

/** Decides everything before the first step: strategy, full or delta, names, paths; checks capacity. */
export async function makeCreatePlan(ctx: CreateContext, deps: SnapshotDeps): Promise<CreatePlan> {
  const params = ctx.command.params;
  // A layer a live rotation could not prove merged holds writes the base may lack: no snapshot of
  // a volume that may read wrong until it is repaired (checked before the layers are resolved: the
  // kept layer is a second top).
  await refuseUnmergedLayers(await volumeBackend(params.volume, deps));
  const backend = await existingActiveLayer(params.volume, params.vm, deps);
  const vm = await inspectVm(deps.libvirt, params.vm, backend.activePath);
  const vmRunning = vm?.running ?? false;
  // Every backing of the active volume must resolve (the store mounted, seed defect 3) before we start.
  const activeChain = await deps.store.readChain(backend.activePath);
  const active = activeChain[0]!;
  // Each strategy the planner may choose looks at the volume first (reflink, live rotation...).
  const probes: Partial<Record<CreatePlan['strategy'], VolumeProbe>> = {};
  for (const candidate of candidateStrategies(params.options.strategy, vmRunning)) {
    const input = { deps, vm, backend, virtualSize: active.virtualSize };
    probes[candidate.name] = (await candidate.probe?.(input)) ?? null;
  }
  const strategy = chooseStrategy({
    requested: params.options.strategy,
    vmRunning,
    poolKind: backend.kind,
    probes,
  });
  const chosen = strategyOf(strategy.name);
  if (chosen.rewritesActiveHeader) {
    const pinned = await pinnedBackingChain(deps.libvirt, params.vm, backend.activePath);
    if (pinned !== null && params.vm !== null) {
      throw new StrategyUnavailableError(strategy.name, pinnedChainReason(params.vm, pinned));
    }
  }
  const storeDir = await deps.store.ensureDirectory(params.store);
  const snapshotPath = await deps.store.memberPath(params.store, params.snapshot);
  if (await pathExists(snapshotPath)) throw new PathExistsError(snapshotPath);

  const parentName = params.parents.at(-1) ?? null;
  const parentPath = parentName === null ? null : await deps.store.memberPath(params.store, parentName);
  const parentExists = parentPath !== null && (await pathExists(parentPath));
  const parentDepth = parentExists
    ? (await deps.store.readChain(parentPath)).filter((m) => m.storeRoot !== null).length
    : 0;
  // The active layer holds exactly the writes since the parent: its header names the parent, or a
  // live rotation made it the top when it took the parent (the pool's layer record says so).
  const writesSinceParent =
    parentPath !== null &&
    (active.backingPath === parentPath ||
      (await layerHoldsWritesSince(backend, backend.activeName, parentPath)));
  const kind = chooseKind({
    parentName,
    parentExists,
    parentDepth,
    activeBacksOntoParent: writesSinceParent,
    maxChainLength: params.options.maxChainLength,
  });
  const delta = kind.kind === 'delta' && parentPath !== null;

  // Capacity: the export (top layer for a delta, every layer for a full) plus QCOW2 tables.
  const exportBytes = await deps.qemuImg.allocatedBytes(backend.activePath, {
    topOnly: delta,
    forceShare: true,
  });
  const metadataBytes = 1024 * 1024 + Math.ceil(active.virtualSize / 8192);
  await deps.store.ensureFreeSpace(storeDir, exportBytes, { reserveBytes: metadataBytes });
  await backend.ensureSpace(chosen.space, active.virtualSize);

  const tag = jobTag(ctx.jobId);
  const layers =
    (await chosen.planLayers?.(
      backend,
      activeChain.map((m) => m.path),
    )) ?? null;
  return {
    strategy: strategy.name,
    strategyReason: strategy.reason,
    kind: delta ? 'delta' : 'full',
    fullReason: kind.kind === 'full' ? kind.reason : null,
    activePath: backend.activePath,
    vm: params.vm,
    vmRunning,
    target: vm?.target ?? null,
    storeDir,
    snapshotName: params.snapshot,
    snapshotPath,
    partPath: deps.store.partPath(snapshotPath),
    parentName: delta ? parentName : null,
    parentPath: delta ? parentPath : null,
    parentBacking: delta ? deps.store.relativeBacking(snapshotPath, parentPath) : null,
    chainDepth: delta ? parentDepth + 1 : 1,
    virtualSize: active.virtualSize,
    exportBytes,
    stagingName: layers?.stagingName ?? backend.tempName('stg', tag),
    ...(layers?.liveLayers === undefined ? {} : { liveLayers: layers.liveLayers }),
    retiredName: backend.tempName('old', tag),
    cloneName: backend.tempName('cow', tag),
    tag,
    verify: params.options.verify,
    compress: params.options.compress,
    quiesce: params.options.quiesce,
    ...(params.options.bandwidthBytesPerSecond === undefined
      ? {}
      : { bandwidthBytesPerSecond: params.options.bandwidthBytesPerSecond }),
  };
}

/** The succeeded result: built from the plan and the journal, plus the file's size. */
async function createResult(
  plan: CreatePlan,
  journal: CreateJournal,
  steps: StepPlan,
): Promise<SnapshotCreateResult> {
  const record = journal.get();
  const physicalSize = (await stat(plan.snapshotPath)).blocks * 512;
  const quiesced = record.facts.quiesced;
  return {
    snapshot: {
      name: plan.snapshotName,
      path: plan.snapshotPath,
      parent: plan.parentName,
      kind: plan.kind,
      ...(plan.fullReason === null ? {} : { fullReason: plan.fullReason }),
      physicalSize,
      virtualSize: plan.virtualSize,
      chainDepth: plan.chainDepth,
    },
    strategy: { name: plan.strategy, reason: plan.strategyReason },
    vmPauseMs: Math.round(record.pauseMs * 1000) / 1000,
    activePath: plan.activePath,
    volumePath: volumePathOf(plan, journal),
    quiesced: !plan.quiesce
      ? 'not-requested'
      : quiesced === 'yes' || quiesced === 'unavailable'
        ? quiesced
        : 'unavailable',
    steps: steps.steps.map((s) => ({ name: s.name, durationMs: record.timings[s.name] ?? 0 })),
  };
}

/** The volume's active layer after the job: a strategy's new layer once it moved there (live-rotate's switch). */
function volumePathOf(plan: CreatePlan, journal: CreateJournal): string {
  return activeLayerMoved(plan, journal) ? join(dirname(plan.activePath), plan.stagingName) : plan.activePath;
}

function activeLayerMoved(plan: CreatePlan, journal: CreateJournal): boolean {
  const step = strategyOf(plan.strategy).movesActiveLayerAt;
  return step !== undefined && journal.get().steps[step] === 'done';
}

/** A failure after the active layer moved still tells the management plane where the volume is now. */
function withVolumePath(error: unknown, plan: CreatePlan, journal: CreateJournal): unknown {
  if (!(error instanceof AgentError) || !activeLayerMoved(plan, journal)) return error;
  return new AgentError(error.code, error.message, {
    cause: error.cause ?? error,
    retryable: error.retryable,
    details: { ...error.details, volumePath: volumePathOf(plan, journal) },
  });
}
