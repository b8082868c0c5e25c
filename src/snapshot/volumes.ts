import { createHash } from 'node:crypto';
import { link, rename, stat, unlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { AgentError, InsufficientSpaceError, ValidationError } from '../errors/index.js';
import { fsyncPath } from '../fsync.js';
import type { FilePool } from '../host/file-pool.js';
import type { LogicalVolume, Lvm } from '../host/lvm.js';
import type { BackingRef, QemuImg } from '../host/qemu-img.js';
import type { FlushHandle } from '../host/rooted-files.js';
import type { VolumeRef } from '../protocol/index.js';

/** Health of a copy-on-write clone while it is exported. */
export interface CowHealth {
  overflowed: boolean;
  /** LVM: fill level of the exception store; file pools (reflink): null. */
  percent: number | null;
}

/**
 * One volume's pool, as the strategies see it: sibling volumes by name (staging overlay, retired
 * old active, CoW clone), with the same operations on LVM (LVs) and file pools (files). The active
 * volume's path never changes; temporary names are derived from the job id (recovery finds them).
 */
export interface VolumeBackend {
  readonly kind: 'lvm' | 'file';
  /** Name of the active volume in its pool (LV name or file name). */
  readonly activeName: string;
  /** Path QEMU opens: /dev/<vg>/<lv> or <pool>/<file>. */
  readonly activePath: string;
  /** A sibling name for a temporary volume: `<active>-<role>-<tag>` (LVM) or `<active>.<role>-<tag>` (file). */
  tempName(role: 'stg' | 'old' | 'cow', tag: string): string;
  pathOf(name: string): string;
  exists(name: string): Promise<boolean>;
  /**
   * Creates volume `name` holding an empty QCOW2 overlay on `backing` (an absolute path);
   * `backingMayNotExist`: the header names a path that appears later (qemu-img create -u).
   */
  createOverlay(
    name: string,
    backing: BackingRef,
    virtualSize: number,
    opts?: { backingMayNotExist?: boolean },
  ): Promise<void>;
  /**
   * Creates volume `name` for a standalone copy of `source` (flatten); returns whether the target
   * exists before the copy (LVM: yes, qemu-img convert -n) or is created by qemu-img (file).
   */
  prepareCopyTarget(name: string, source: string): Promise<{ targetExists: boolean }>;
  /** Instant point-in-time copy of the active volume: LVM snapshot / reflink clone. */
  cowClone(name: string): Promise<void>;
  /**
   * The same clone for a paused VM: reads now what it needs (sizes, extents) and returns the one
   * call that makes it, nothing else, for inside the pause; settleClone once the VM runs again.
   */
  prepareClone(name: string): Promise<() => Promise<void>>;
  /** Makes a clone made by prepareClone's call durable (file pools: fsync of its directory). */
  settleClone(name: string): Promise<void>;
  cowHealth(name: string): Promise<CowHealth>;
  /** Moves the active volume aside under `retiredName`; the volume path keeps working where the pool allows. */
  retireActive(retiredName: string): Promise<void>;
  /** Gives `stagingName` the active volume's name. */
  promote(stagingName: string): Promise<void>;
  /** Puts a retired active back (rollback of retireActive). */
  restoreActive(retiredName: string): Promise<void>;
  /** Removes a sibling volume (never the active one); false when it did not exist. */
  remove(name: string): Promise<boolean>;
  /**
   * A descriptor of volume `name` whose `sync()` later makes what any process wrote to it through
   * the host page cache durable, or throws a write error recorded since it was opened (EIO) /
   * HOST_TIMEOUT. Close it.
   */
  flushHandle(name: string): Promise<FlushHandle>;
  /** Space checks before a job (staging overlay or CoW clone), throwing InsufficientSpaceError. */
  ensureSpace(purpose: 'overlay' | 'cow' | 'copy', virtualSize: number): Promise<void>;
}

/** A short stable tag from the job id: temporary names stay the same across a crash and restart. */
export function jobTag(jobId: string): string {
  return createHash('sha256').update(jobId).digest('hex').slice(0, 10);
}

export interface BackendDeps {
  qemuImg: QemuImg;
  filePool: FilePool;
  lvm: Lvm;
}

/** Resolves a volume reference to its backend (paths confined, names checked). */
export async function volumeBackend(volume: VolumeRef, deps: BackendDeps): Promise<VolumeBackend> {
  if (volume.kind === 'file') {
    const dir = await deps.filePool.poolDirectory(volume.pool);
    const path = await deps.filePool.volumePath(volume.pool, volume.file);
    return new FileVolumeBackend(deps, dir, basename(path));
  }
  return new LvmVolumeBackend(deps, volume.vg, volume.lv);
}

/**
 * File pools: the swap is atomic — retireActive hard-links the old file under another name and
 * promote renames the staging file over the volume's name (rename(2) replaces), so the volume path
 * opens at every instant.
 */
export class FileVolumeBackend implements VolumeBackend {
  readonly kind = 'file';
  readonly activePath: string;

  constructor(
    private readonly deps: BackendDeps,
    readonly dir: string,
    readonly activeName: string,
  ) {
    this.activePath = join(dir, activeName);
  }

  tempName(role: 'stg' | 'old' | 'cow', tag: string): string {
    return `${this.activeName}.${role}-${tag}`;
  }

  pathOf(name: string): string {
    return join(this.dir, name);
  }

  async exists(name: string): Promise<boolean> {
    return this.deps.filePool.exists(this.pathOf(name));
  }

  async createOverlay(
    name: string,
    backing: BackingRef,
    virtualSize: number,
    opts: { backingMayNotExist?: boolean } = {},
  ): Promise<void> {
    await this.deps.filePool.create({
      path: this.pathOf(name),
      backing,
      sizeBytes: virtualSize,
      unsafe: opts.backingMayNotExist ?? false,
    });
  }

  async prepareCopyTarget(): Promise<{ targetExists: boolean }> {
    return { targetExists: false };
  }

  async cowClone(name: string): Promise<void> {
    await this.deps.filePool.reflinkClone(this.activePath, this.pathOf(name), { syncDirectory: true });
  }

  async prepareClone(name: string): Promise<() => Promise<void>> {
    return () =>
      this.deps.filePool.reflinkClone(this.activePath, this.pathOf(name), { syncDirectory: false });
  }

  async settleClone(name: string): Promise<void> {
    await this.deps.filePool.syncDirectoryOf(this.pathOf(name));
  }

  async cowHealth(): Promise<CowHealth> {
    return { overflowed: false, percent: null };
  }

  async retireActive(retiredName: string): Promise<void> {
    const retired = await this.deps.filePool.confine(this.pathOf(retiredName));
    if (await existsPath(retired)) return;
    await link(this.activePath, retired);
    await fsyncPath(this.dir);
  }

  async promote(stagingName: string): Promise<void> {
    const staging = await this.deps.filePool.confine(this.pathOf(stagingName));
    if (!(await existsPath(staging))) return;
    await rename(staging, this.activePath);
    await fsyncPath(this.dir);
  }

  async restoreActive(retiredName: string): Promise<void> {
    const retired = await this.deps.filePool.confine(this.pathOf(retiredName));
    if (!(await existsPath(retired))) return;
    // Before promote the active name still holds the same inode: drop only the extra link.
    const [a, b] = await Promise.all([stat(retired), stat(this.activePath)]);
    if (a.ino !== b.ino) {
      throw new AgentError('VOLUME_STATE_UNEXPECTED', `${this.activePath} is no longer the retired volume`, {
        details: { retired, active: this.activePath },
      });
    }
    await unlink(retired);
    await fsyncPath(this.dir);
  }

  async remove(name: string): Promise<boolean> {
    if (name === this.activeName)
      throw new ValidationError('INVALID_NAME', 'refusing to remove the active volume');
    return this.deps.filePool.remove(this.pathOf(name));
  }

  flushHandle(name: string): Promise<FlushHandle> {
    return this.deps.filePool.flushHandle(this.pathOf(name));
  }

  async ensureSpace(purpose: 'overlay' | 'cow' | 'copy', virtualSize: number): Promise<void> {
    let bytes = 4 * 1024 * 1024; // an empty overlay: header and tables
    if (purpose === 'cow') bytes = (await stat(this.activePath)).blocks * 512; // worst case: every shared extent rewritten
    if (purpose === 'copy')
      bytes = (await this.deps.qemuImg.measure({ sizeBytes: virtualSize })).requiredBytes;
    await this.deps.filePool.ensureFreeSpace(this.dir, bytes);
  }
}

/** LVM pools (CLVM_NG): LVs of one VG. An LV rename cannot replace, so the swap is two renames. */
export class LvmVolumeBackend implements VolumeBackend {
  readonly kind = 'lvm';
  readonly activePath: string;

  constructor(
    private readonly deps: BackendDeps,
    readonly vg: string,
    readonly activeName: string,
  ) {
    this.activePath = `/dev/${vg}/${activeName}`;
  }

  tempName(role: 'stg' | 'old' | 'cow', tag: string): string {
    return `${this.activeName}-${role}-${tag}`;
  }

  pathOf(name: string): string {
    return `/dev/${this.vg}/${name}`;
  }

  async exists(name: string): Promise<boolean> {
    return (await this.deps.lvm.getVolume(this.vg, name)) !== undefined;
  }

  /**
   * A thick LV for a whole QCOW2 of `virtualSize`, fully allocated (it becomes the active volume,
   * or a layer of a live-rotated chain that holds every cluster once the guest rewrote them all).
   */
  async fullSize(virtualSize: number): Promise<number> {
    return (await this.deps.qemuImg.measure({ sizeBytes: virtualSize })).fullyAllocatedBytes;
  }

  /** The LV `name` as lvs reports it (undefined: no such LV). */
  volume(name: string): Promise<LogicalVolume | undefined> {
    return this.deps.lvm.getVolume(this.vg, name);
  }

  /** Every LV of the VG (one lvs). */
  volumes(): Promise<LogicalVolume[]> {
    return this.deps.lvm.listVolumes(this.vg);
  }

  /** Changes the tags of LV `name` in one metadata commit. */
  retag(name: string, tags: { add: string[]; remove: string[] }): Promise<void> {
    return this.deps.lvm.changeTags(this.vg, name, tags);
  }

  /**
   * Makes LV `name` usable here: active exclusively on a shared (lvmlockd/clvmd) VG, so no other
   * host opens it, and locally on a plain VG. lvcreate activates a new LV the same way.
   */
  async ensureActive(name: string): Promise<void> {
    const lv = await this.volume(name);
    if (lv === undefined || lv.activeHere) return;
    const group = await this.deps.lvm.volumeGroup(this.vg);
    await this.deps.lvm.activate(this.vg, name, group.shared ? 'exclusive' : 'local');
  }

  async createOverlay(
    name: string,
    backing: BackingRef,
    virtualSize: number,
    opts: { backingMayNotExist?: boolean } = {},
  ): Promise<void> {
    if (!(await this.exists(name))) {
      await this.deps.lvm.createVolume({ vg: this.vg, name, sizeBytes: await this.fullSize(virtualSize) });
    }
    await this.ensureActive(name);
    await this.deps.qemuImg.create({
      path: this.pathOf(name),
      backing,
      sizeBytes: virtualSize,
      unsafe: opts.backingMayNotExist ?? false,
    });
  }

  async prepareCopyTarget(name: string, source: string): Promise<{ targetExists: boolean }> {
    if (!(await this.exists(name))) {
      const { requiredBytes } = await this.deps.qemuImg.measure({ source });
      const { virtualSize } = await this.deps.qemuImg.info(source, { forceShare: true });
      const size = Math.max(requiredBytes, await this.fullSize(virtualSize));
      await this.deps.lvm.createVolume({ vg: this.vg, name, sizeBytes: size });
    }
    const { virtualSize } = await this.deps.qemuImg.info(source, { forceShare: true });
    await this.deps.qemuImg.create({ path: this.pathOf(name), sizeBytes: virtualSize });
    return { targetExists: true };
  }

  /** CoW size as in the seed (20 % of the LV, at least 1 GiB), capped at the LV: then it cannot overflow. */
  private async cowSize(): Promise<number> {
    const active = await this.deps.lvm.getVolume(this.vg, this.activeName);
    if (!active) throw new AgentError('VOLUME_NOT_FOUND', `LV ${this.vg}/${this.activeName} does not exist`);
    return Math.min(active.sizeBytes, Math.max(Math.ceil(active.sizeBytes * 0.2), 1024 ** 3));
  }

  async settleClone(): Promise<void> {
    // lvcreate commits the LVM metadata itself.
  }

  async cowClone(name: string): Promise<void> {
    if (await this.exists(name)) return;
    const sizeBytes = await this.cowSize();
    await this.deps.lvm.createSnapshot({ vg: this.vg, origin: this.activeName, name, sizeBytes });
  }

  async prepareClone(name: string): Promise<() => Promise<void>> {
    // The lookups (lvs, vgs) stay outside the pause: only lvcreate -s runs while the VM is stopped.
    const { extentSizeBytes } = await this.deps.lvm.volumeGroup(this.vg);
    const sizeBytes = this.deps.lvm.roundToExtents(await this.cowSize(), extentSizeBytes);
    return () => this.deps.lvm.snapshotVolume({ vg: this.vg, origin: this.activeName, name, sizeBytes });
  }

  async cowHealth(name: string): Promise<CowHealth> {
    const lv = await this.deps.lvm.getVolume(this.vg, name);
    if (!lv) return { overflowed: true, percent: null };
    return {
      overflowed: lv.snapshotInvalid || (lv.snapshotPercent ?? 0) >= 100,
      percent: lv.snapshotPercent,
    };
  }

  async retireActive(retiredName: string): Promise<void> {
    if (await this.exists(retiredName)) return;
    await this.deps.lvm.renameVolume(this.vg, this.activeName, retiredName);
  }

  async promote(stagingName: string): Promise<void> {
    if (!(await this.exists(stagingName))) return;
    await this.deps.lvm.renameVolume(this.vg, stagingName, this.activeName);
  }

  async restoreActive(retiredName: string): Promise<void> {
    if (!(await this.exists(retiredName))) return;
    if (await this.exists(this.activeName)) {
      throw new AgentError('VOLUME_STATE_UNEXPECTED', `both ${this.activeName} and ${retiredName} exist`, {
        details: { vg: this.vg, retired: retiredName },
      });
    }
    await this.deps.lvm.renameVolume(this.vg, retiredName, this.activeName);
  }

  async remove(name: string): Promise<boolean> {
    if (name === this.activeName)
      throw new ValidationError('INVALID_NAME', 'refusing to remove the active volume');
    if (!(await this.exists(name))) return false;
    await this.deps.lvm.removeVolume(this.vg, name); // refuses an open LV (invariant 3)
    return true;
  }

  flushHandle(name: string): Promise<FlushHandle> {
    return this.deps.lvm.flushHandle(this.vg, name);
  }

  /**
   * lvextends the given LVs of the volume (paths) so each holds a fully allocated QCOW2 of
   * `virtualSize`; checks the VG has room for all of them before extending any. Returns each LV's size.
   */
  async growLayers(
    paths: string[],
    virtualSize: number,
  ): Promise<Array<{ path: string; sizeBytes: number }>> {
    const group = await this.deps.lvm.volumeGroup(this.vg);
    const needed = this.deps.lvm.roundToExtents(await this.fullSize(virtualSize), group.extentSizeBytes);
    const lvs: LogicalVolume[] = [];
    for (const path of paths) {
      const lv = await this.volume(basename(path));
      if (lv === undefined) throw new AgentError('VOLUME_NOT_FOUND', `LV ${path} does not exist`);
      lvs.push(lv);
    }
    const growth = lvs.reduce((sum, lv) => sum + Math.max(0, needed - lv.sizeBytes), 0);
    if (group.freeBytes < growth)
      throw new InsufficientSpaceError('pool', `VG ${this.vg}`, growth, group.freeBytes);
    const grown: Array<{ path: string; sizeBytes: number }> = [];
    for (const lv of lvs) {
      const after = await this.deps.lvm.extendVolume(this.vg, lv.name, needed);
      grown.push({ path: lv.path, sizeBytes: after.sizeBytes });
    }
    return grown;
  }

  async ensureSpace(purpose: 'overlay' | 'cow' | 'copy', virtualSize: number): Promise<void> {
    const bytes = purpose === 'cow' ? await this.cowSize() : await this.fullSize(virtualSize);
    const group = await this.deps.lvm.volumeGroup(this.vg);
    const needed = this.deps.lvm.roundToExtents(bytes, group.extentSizeBytes);
    if (group.freeBytes < needed)
      throw new InsufficientSpaceError('pool', `VG ${this.vg}`, needed, group.freeBytes);
  }
}

async function existsPath(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return false;
      throw e;
    },
  );
}
