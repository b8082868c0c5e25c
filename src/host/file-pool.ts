import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { copyFile, rename as fsRename, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import {
  AgentError,
  InsufficientSpaceError,
  PathExistsError,
  ReflinkUnsupportedError,
  ValidationError,
} from '../errors/index.js';
import { fsyncPath } from '../fsync.js';
import type { Logger } from '../observability/logger.js';
import { confineChild, confinePath, pathExists } from './paths.js';
import type { CreateImageOptions, QemuImg } from './qemu-img.js';
import { type FlushHandle, openFlushHandle, RootedFiles } from './rooted-files.js';

export interface FilePoolOptions {
  /** Configured pool roots (config.pools.fileRoots): every pool and volume lies under one. */
  roots: readonly string[];
  qemuImg: QemuImg;
  /** Timeout of a reflink clone (metadata only, but NFS can be slow). */
  timeoutMs: number;
  logger?: Logger;
}

/** Whether a directory's filesystem makes reflink clones, and if not, why. */
export interface ReflinkSupport {
  supported: boolean;
  /** The tool's words when unsupported (e.g. "Operation not supported"); null when supported. */
  reason: string | null;
}

// The FICLONE ioctl's answers when the filesystem cannot clone (libuv reports most of them as
// ENOTSUP): EOPNOTSUPP on ext4/tmpfs, EXDEV across filesystems, ENOTTY/EINVAL where no clone exists.
const NO_REFLINK: Readonly<Record<string, string>> = {
  ENOTSUP: 'Operation not supported',
  EOPNOTSUPP: 'Operation not supported',
  EXDEV: 'Invalid cross-device link',
  ENOTTY: 'Inappropriate ioctl for device',
  EINVAL: 'Invalid argument',
};

/**
 * A file pool: volumes are QCOW2 files in a directory under a configured root (CloudStack
 * SharedMountPoint / local pools). The LVM snapshot of the LVM strategies becomes a reflink
 * clone here; there is never a silent full copy.
 */
export class FilePool extends RootedFiles {
  private readonly timeoutMs: number;

  constructor(opts: FilePoolOptions) {
    super(opts);
    this.timeoutMs = opts.timeoutMs;
  }

  /**
   * The real path of an existing pool directory under a root.
   * @throws ValidationError PATH_OUTSIDE_ROOTS | INVALID_PATH | INVALID_NAME | POOL_NOT_FOUND
   */
  async poolDirectory(pool: string): Promise<string> {
    const dir = await confinePath(pool, this.roots, 'volume.pool');
    const info = await stat(dir).catch(() => undefined);
    if (!info?.isDirectory()) {
      throw new ValidationError('POOL_NOT_FOUND', `file pool ${pool} is not an existing directory`, {
        field: 'volume.pool',
      });
    }
    return dir;
  }

  /** The real path of volume `file` in `pool` (the file need not exist). */
  async volumePath(pool: string, file: string): Promise<string> {
    return confineChild(await this.poolDirectory(pool), file, this.roots, 'volume.file');
  }

  /** True when the (confined) path exists. */
  async exists(path: string): Promise<boolean> {
    return pathExists(await this.confine(path));
  }

  /**
   * Creates a QCOW2 volume (standalone or an overlay); never overwrites (qemu-img create would).
   * @throws PathExistsError
   */
  async create(opts: Omit<CreateImageOptions, 'preallocation'>): Promise<string> {
    const path = await this.confine(opts.path);
    if (await pathExists(path)) throw new PathExistsError(path);
    await this.qemuImg.create({ ...opts, path });
    await fsyncPath(dirname(path));
    return path;
  }

  /** Removes a volume file; false when it did not exist. Checking that nothing uses it is the caller's job. */
  async remove(path: string): Promise<boolean> {
    const removed = await this.removeFile(path);
    if (removed) this.logger?.debug({ path: removed }, 'pool volume removed');
    return removed !== undefined;
  }

  /**
   * Renames a volume without replacing anything (a running QEMU keeps its open file).
   * @throws PathExistsError when `to` exists
   */
  async rename(from: string, to: string): Promise<void> {
    const source = await this.confine(from, 'from');
    const target = await this.confine(to, 'to');
    if (await pathExists(target)) throw new PathExistsError(target);
    await fsRename(source, target);
    await fsyncPath(dirname(target));
    if (dirname(source) !== dirname(target)) await fsyncPath(dirname(source));
  }

  /**
   * Instant copy-on-write clone (one FICLONE ioctl, in-process: lvm-cow runs it with the VM paused,
   * where starting a `cp` process cost more than the clone): shares all data extents with
   * `source`, so it costs no data space and no copy time. Never falls back to a full copy.
   * @throws ReflinkUnsupportedError REFLINK_UNSUPPORTED when the filesystem cannot (ext4, tmpfs,
   *   different filesystems); PathExistsError when `target` exists
   */
  async reflinkClone(source: string, target: string, opts: { syncDirectory?: boolean } = {}): Promise<void> {
    const from = await this.confine(source, 'source');
    const to = await this.confine(target, 'target');
    if (await pathExists(to)) throw new PathExistsError(to);
    await this.clone(from, to);
    // A caller with the VM paused syncs the directory after the resume (syncDirectoryOf).
    if (opts.syncDirectory ?? true) await fsyncPath(dirname(to));
  }

  /** A descriptor of volume `path` to fsync later (openFlushHandle): reports write errors from now on. */
  async flushHandle(path: string): Promise<FlushHandle> {
    return openFlushHandle(await this.confine(path));
  }

  /** fsyncs the directory of `path` (under a root): makes a new name in it durable. */
  async syncDirectoryOf(path: string): Promise<void> {
    await fsyncPath(dirname(await this.confine(path, 'path')));
  }

  /**
   * Probes whether `dir` (under a root) makes reflink clones: clones a small scratch file, then
   * removes both. Used by the capability probe and the strategy planner.
   */
  async supportsReflink(dir: string): Promise<ReflinkSupport> {
    const real = await this.confine(dir, 'dir');
    const tag = `${process.pid}-${randomBytes(4).toString('hex')}`;
    const probe = join(real, `.reflink-probe-${tag}`);
    const clone = join(real, `.reflink-probe-${tag}.clone`);
    try {
      await writeFile(probe, randomBytes(4096));
      await this.clone(probe, clone);
      return { supported: true, reason: null };
    } catch (error) {
      if (error instanceof ReflinkUnsupportedError)
        return { supported: false, reason: String(error.details.reason) };
      throw error;
    } finally {
      await rm(probe, { force: true });
      await rm(clone, { force: true });
    }
  }

  /** Bytes available on the filesystem holding `dir` (statfs). */
  async freeBytes(dir: string): Promise<number> {
    const fs = await statfs(await this.confine(dir, 'dir'));
    return fs.bavail * fs.bsize;
  }

  /** @throws InsufficientSpaceError POOL_FULL when fewer than `bytes` are free. */
  async ensureFreeSpace(dir: string, bytes: number): Promise<void> {
    const free = await this.freeBytes(dir);
    if (free < bytes) throw new InsufficientSpaceError('pool', dir, bytes, free);
  }

  private async clone(from: string, to: string): Promise<void> {
    const flags = fsConstants.COPYFILE_FICLONE_FORCE | fsConstants.COPYFILE_EXCL;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        reject(
          new AgentError('HOST_TIMEOUT', `reflink clone of ${from} took more than ${this.timeoutMs} ms`, {
            retryable: true,
            details: { syscall: 'copyfile', path: from, dest: to },
          }),
        );
      }, this.timeoutMs);
    });
    try {
      await Promise.race([copyFile(from, to, flags), timeout]);
      this.logger?.debug({ from, to }, 'reflink clone made');
    } catch (error) {
      const errno = (error as NodeJS.ErrnoException).code;
      if (errno === 'EEXIST') throw new PathExistsError(to);
      // The target did not exist before: whatever the copy left there goes.
      await rm(to, { force: true });
      const reason = errno === undefined ? undefined : NO_REFLINK[errno];
      if (reason !== undefined) throw new ReflinkUnsupportedError(dirname(to), reason, { cause: error });
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }
}
