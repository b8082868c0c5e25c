// Steps shared by strategies: export to a part file, publish, verify, and the volume swap
// (retire the old active, promote the staging volume, remove the retired one).
import { dirname } from 'node:path';
import { ChainInvalidError, CowOverflowError } from '../errors/index.js';
import { EXPORT_TUNING, type QemuImg, RATE_LIMITED_TUNING } from '../host/qemu-img.js';
import { backsOnto, newSnapshotProblems, pathExists, removeIfUnreferenced, removePart } from './chain.js';
import type { SnapshotDeps } from './deps.js';
import type { CreatePlan } from './plan.js';
import type { Step, StepIO } from './steps.js';
import type { StrategyHooks } from './strategies/strategy.js';
import type { CowHealth, VolumeBackend } from './volumes.js';

/**
 * The staging volume, made by `make` under its name (a half-made one from an earlier attempt of
 * this job is removed first); undone by removing it.
 */
export function createStagingStep(
  backend: VolumeBackend,
  staging: string,
  make: (io: StepIO) => Promise<void>,
): Step {
  return {
    name: 'create-staging',
    run: async (io) => {
      await backend.remove(staging);
      await make(io);
    },
    undo: async () => {
      await backend.remove(staging);
    },
  };
}

/** exportStep for a create plan: the part file, parent, compression, size and bandwidth come from the plan. */
export function planExportStep(
  deps: SnapshotDeps,
  plan: Pick<
    CreatePlan,
    'partPath' | 'parentBacking' | 'compress' | 'exportBytes' | 'bandwidthBytesPerSecond'
  >,
  hooks: Pick<StrategyHooks, 'onExportProgress'>,
  opts: Pick<Parameters<typeof exportStep>[1], 'source' | 'forceShare' | 'cow'>,
): Step {
  return exportStep(deps, {
    ...opts,
    partPath: plan.partPath,
    parentBacking: plan.parentBacking,
    compress: plan.compress,
    onProgress: hooks.onExportProgress,
    bytesTotal: plan.exportBytes,
    bandwidth: plan.bandwidthBytesPerSecond,
  });
}

/**
 * A part file no one has written for a day belongs to no running job (an export is killed at its
 * time-out, hours at most): it is what a job that failed with the store unreachable left behind.
 */
const STALE_PART_AGE_MS = 24 * 3600_000;

/** `qemu-img convert` of `source` to the part file: a delta (-B parent, relative) or a full image. */
export function exportStep(
  deps: SnapshotDeps,
  opts: {
    source: string;
    partPath: string;
    parentBacking: string | null;
    compress: boolean;
    forceShare: boolean;
    /** Copy-on-write source: its fill level is watched during the copy; overflow aborts it. */
    cow?: { volume: string; health: () => Promise<CowHealth> };
    /** Called with each progress percentage (the mid-export failpoint hooks here). */
    onProgress?: (percent: number) => void;
    /** Bytes to copy, measured by the planner (spares a `qemu-img map` for the progress total). */
    bytesTotal?: number;
    /** The command's bandwidth (bytes/s); the host's limit caps it (deps.bandwidth). */
    bandwidth?: number;
  },
): Step {
  const convert = async (io: StepIO, signal: AbortSignal): Promise<void> => {
    await removePart(deps.store, opts.partPath);
    await deps.store.removeStaleParts(dirname(opts.partPath), STALE_PART_AGE_MS);
    const ticket = deps.bandwidth?.admit(opts.bandwidth, signal);
    const rateLimit = ticket ? ticket.rate : opts.bandwidth;
    // The average rate since the copy began: with a limit it is the limit (or its share), so the
    // ETA that consumers derive from it (bytes left / rate) holds.
    const started = performance.now();
    try {
      await deps.qemuImg.convert({
        source: opts.source,
        target: opts.partPath,
        sourceFormat: 'qcow2',
        targetFormat: 'qcow2',
        forceShare: opts.forceShare,
        ...(opts.parentBacking === null ? {} : { backing: { file: opts.parentBacking, format: 'qcow2' } }),
        compress: opts.compress ? 'zlib' : false,
        tuning: rateLimit === undefined ? EXPORT_TUNING : RATE_LIMITED_TUNING,
        progressBytesTotal: opts.bytesTotal,
        ...(rateLimit === undefined ? {} : { rateLimit }),
        ...(ticket ? { onSpawn: (pid: number) => ticket.attach(pid) } : {}),
        signal,
        progress: (p) => {
          ticket?.progress(p.bytesDone);
          const seconds = (performance.now() - started) / 1000;
          const bytesPerSecond =
            seconds > 0.5 && p.bytesDone > 0 ? Math.round(p.bytesDone / seconds) : undefined;
          io.progress({
            percent: p.percent,
            bytesDone: p.bytesDone,
            bytesTotal: p.bytesTotal,
            ...(bytesPerSecond === undefined ? {} : { bytesPerSecond }),
          });
          opts.onProgress?.(p.percent);
        },
      });
      // Durable before the step counts as done: recovery publishes a part whose export is journaled.
      await deps.store.syncPart(opts.partPath);
    } finally {
      ticket?.release();
    }
  };
  return {
    name: 'export',
    run: async (io) => {
      const cow = opts.cow;
      if (cow === undefined) return convert(io, io.signal);
      const overflow = new AbortController();
      let overflowed: CowHealth | null = null;
      let pollError: unknown = null;
      // One fill-level read at a time, the next one `cowPollMs` after the previous answered: on a
      // loaded host an `lvs` can take longer than the interval, and overlapping ones queue on the
      // VG lock and slow every other LVM command of the job (the lab VM under load).
      let polling = true;
      let inFlight: Promise<void> = Promise.resolve();
      let timer: NodeJS.Timeout | undefined;
      const schedule = (): void => {
        timer = setTimeout(() => {
          inFlight = cow.health().then(
            (health) => {
              if (health.overflowed && overflowed === null) {
                overflowed = health;
                overflow.abort();
              }
              if (polling) schedule();
            },
            (error: unknown) => {
              pollError = error;
              overflow.abort();
            },
          );
        }, deps.cowPollMs ?? 1000);
      };
      schedule();
      try {
        await convert(io, AbortSignal.any([io.signal, overflow.signal]));
      } catch (error) {
        if (pollError !== null) throw pollError;
        if (overflowed !== null) throw new CowOverflowError(cow.volume, (overflowed as CowHealth).percent);
        throw error;
      } finally {
        polling = false;
        clearTimeout(timer);
        await inFlight; // no lvs of this step outlives it
      }
      // The copy may have read a snapshot that overflowed at its very end.
      const health = await cow.health();
      if (health.overflowed) throw new CowOverflowError(cow.volume, health.percent);
    },
    undo: () => removePart(deps.store, opts.partPath),
  };
}

/** Gives the snapshot its final name once complete and fsynced (store.publish). */
export function publishStep(
  deps: SnapshotDeps,
  opts: { partPath: string; snapshotPath: string; holders: () => string[] },
): Step {
  return {
    name: 'publish',
    run: async () => {
      // Idempotent: a crash right after the rename leaves the final file and no part.
      if ((await pathExists(opts.snapshotPath)) && !(await pathExists(opts.partPath))) return;
      await deps.store.publish(opts.partPath, opts.snapshotPath);
    },
    undo: async () => {
      await removePart(deps.store, opts.partPath);
      await removeIfUnreferenced(deps.store, opts.snapshotPath, opts.holders());
    },
  };
}

/** qemu-img check of the new snapshot and its link to its parent (metadata); plus a data compare (full). */
export function verifyStep(
  deps: SnapshotDeps,
  opts: { snapshotPath: string; level: 'none' | 'metadata' | 'full'; compareWith: string },
): Step {
  return {
    name: 'verify',
    run: async (io) => {
      if (opts.level === 'none') return;
      const problems = await newSnapshotProblems(deps.store, deps.qemuImg, opts.snapshotPath, {
        signal: io.signal,
      });
      if (opts.level === 'full' && problems.length === 0) {
        const result = await deps.qemuImg.compare(opts.snapshotPath, opts.compareWith, {
          forceShare: true,
          signal: io.signal,
        });
        if (!result.identical) problems.push(`snapshot differs from its source: ${result.message}`);
      }
      if (problems.length > 0) throw new ChainInvalidError('the new snapshot failed verification', problems);
    },
  };
}

/** Rewrites only the header of an image nobody holds (`qemu-img rebase -u`), if not already so. */
export async function setBackingUnsafe(qemuImg: QemuImg, image: string, backing: string): Promise<void> {
  if (await backsOnto(qemuImg, image, backing)) return;
  await qemuImg.rebase({ image, backing: { file: backing, format: 'qcow2' }, unsafe: true });
}

/**
 * The volume swap: the old active moves aside, the staging volume takes the active name (the
 * point of no return: the volume path now opens the new image), the old one is removed after
 * proving nothing references it.
 */
export function swapSteps(
  backend: VolumeBackend,
  deps: SnapshotDeps,
  names: { staging: string; retired: string },
): Step[] {
  return [
    {
      name: 'retire-active',
      run: () => backend.retireActive(names.retired),
      undo: () => backend.restoreActive(names.retired),
    },
    {
      name: 'promote-staging',
      run: () => backend.promote(names.staging),
      isDone: async () => !(await backend.exists(names.staging)) && (await pathExists(backend.activePath)),
    },
    {
      name: 'remove-retired',
      run: async () => {
        const retired = backend.pathOf(names.retired);
        if (!(await backend.exists(names.retired))) return;
        const chain = (await deps.store.readChain(backend.activePath)).map((m) => m.path);
        if (chain.includes(retired)) {
          throw new ChainInvalidError('refusing to remove the old active volume', [
            `${backend.activePath} still has ${retired} in its backing chain`,
          ]);
        }
        await backend.remove(names.retired);
      },
    },
  ];
}
