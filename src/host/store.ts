import { mkdir, readdir, rename, stat, statfs, unlink } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import { InsufficientSpaceError, PathExistsError, ValidationError } from '../errors/index.js';
import { fsyncPath } from '../fsync.js';
import type { Logger } from '../observability/logger.js';
import type { StoreRef } from '../protocol/index.js';
import {
  checkAbsolutePath,
  confineChild,
  confinePath,
  isInside,
  pathExists,
  realpathAllowMissing,
} from './paths.js';
import { chainFromHeaders } from './qcow2-header.js';
import type { QemuImg } from './qemu-img.js';
import { RootedFiles } from './rooted-files.js';

/** One image of a backing chain as read from the headers (as `qemu-img info --backing-chain -U` reports it). */
export interface ChainMember {
  /** Absolute path qemu-img opened (for store files: resolved from the child's relative backing). */
  path: string;
  format: string;
  virtualSize: number;
  /** Bytes used on disk; null when qemu-img cannot tell (some block devices). */
  actualSize: number | null;
  /** Backing string exactly as written in the header (relative inside the store). */
  backingFile: string | null;
  /** The backing resolved to an absolute path. */
  backingPath: string | null;
  backingFormat: string | null;
  /** The configured store root this file lies under (real path), or null (e.g. the active volume). */
  storeRoot: string | null;
}

export interface SnapshotStoreOptions {
  /** Configured store roots (config.store.roots): every path the store touches lies under one. */
  roots: readonly string[];
  qemuImg: QemuImg;
  logger?: Logger;
  /** Deadline of one file-system call on the store (default 60 s): the store is NFS, which can stop answering. */
  timeoutMs?: number;
  /** Deadline of a publish, whose fsync writes back what the export left in the page cache (default 1 h). */
  publishTimeoutMs?: number;
}

const PART = /^\..+\.part$/;

/**
 * The snapshot store (an NFS mount): confined paths, atomic publish of snapshot files, free
 * space, relative backing names between store files and chain reading. File-system calls only,
 * except readChain (QCOW2 headers, else qemu-img).
 */
export class SnapshotStore extends RootedFiles {
  private readonly publishTimeoutMs: number;

  constructor(opts: SnapshotStoreOptions) {
    super(opts);
    this.publishTimeoutMs = opts.publishTimeoutMs ?? 3600_000;
  }

  /**
   * The real path of `<root>/<dir>`. `ref.root` must be one of the configured roots (exactly) and
   * the result must stay under it after symlinks are resolved. The directory need not exist.
   * @throws ValidationError PATH_OUTSIDE_ROOTS | INVALID_PATH | INVALID_NAME
   */
  async directory(ref: StoreRef): Promise<string> {
    const root = checkAbsolutePath(ref.root, 'store.root');
    if (!this.roots.includes(root)) {
      throw new ValidationError(
        'PATH_OUTSIDE_ROOTS',
        `store.root ${JSON.stringify(root)} is not a configured store root (${this.roots.join(', ')})`,
        { field: 'store.root' },
      );
    }
    if (typeof ref.dir !== 'string' || ref.dir.length === 0 || ref.dir.startsWith('/')) {
      throw new ValidationError('INVALID_PATH', 'store.dir must be a non-empty relative path', {
        field: 'store.dir',
      });
    }
    const dir = `${root}/${ref.dir}`;
    return this.bounded('realpath', dir, () => confinePath(dir, [root], 'store.dir'));
  }

  /** Creates the store directory (and parents) if needed and returns its real path. */
  async ensureDirectory(ref: StoreRef): Promise<string> {
    const dir = await this.directory(ref);
    return this.bounded('mkdir', dir, async () => {
      const created = await mkdir(dir, { recursive: true });
      // A new directory entry must survive a crash like the files in it.
      if (created !== undefined) await fsyncPath(dirname(created));
      return dir;
    });
  }

  /** The real path of the snapshot file `name` in the store directory (name checked, confined). */
  async memberPath(ref: StoreRef, name: string): Promise<string> {
    return confineChild(await this.directory(ref), name, this.roots, 'snapshot');
  }

  /**
   * Removes a `.name.part` file of an interrupted export if it is there (remove refuses hidden names),
   * durably: an export's undo is journaled as undone right after, and a power cut must not bring the
   * part back under a job that never exported (P3, reliability.md).
   */
  async removePart(partPath: string): Promise<void> {
    const dir = await this.confine(dirname(partPath), 'partPath');
    const part = join(dir, basename(partPath));
    await this.bounded('unlink', part, async () => {
      const removed = await unlink(part).then(
        () => true,
        (e: NodeJS.ErrnoException) => {
          if (e.code !== 'ENOENT') throw e;
          return false;
        },
      );
      if (removed) await fsyncPath(dir);
    });
  }

  /**
   * Makes an export's part file durable. qemu-img convert writes its target with cache=unsafe (no
   * flush of its own), so without this a job could journal its export done while the part is still
   * in the page cache: after a power cut, recovery would publish what survived (P2, reliability.md).
   */
  async syncPart(partPath: string): Promise<void> {
    const part = join(await this.confine(dirname(partPath), 'partPath'), basename(partPath));
    await this.bounded('fsync', part, () => fsyncPath(part), this.publishTimeoutMs);
  }

  /** Where a snapshot is written before it is complete: `<dir>/.<name>.part` (hidden, never a chain member). */
  partPath(finalPath: string): string {
    return join(dirname(finalPath), `.${basename(finalPath)}.part`);
  }

  /**
   * Gives a complete snapshot file its final name (invariant 2): fsync the file, rename it to
   * `finalPath`, fsync the directory. Refuses to replace an existing file.
   * @throws PathExistsError when finalPath exists; ValidationError when the paths do not pair up
   */
  async publish(partPath: string, finalPath: string): Promise<void> {
    const started = performance.now();
    const target = await this.confine(finalPath, 'finalPath');
    const part = join(
      await this.confine(dirname(checkAbsolutePath(partPath, 'partPath'))),
      basename(partPath),
    );
    if (part !== this.partPath(target)) {
      throw new ValidationError('INVALID_PATH', `${partPath} is not the part file of ${finalPath}`, {
        field: 'partPath',
      });
    }
    await this.bounded(
      'publish',
      target,
      async () => {
        if (await pathExists(target)) throw new PathExistsError(target);
        await fsyncPath(part); // the export did; a cheap no-op unless something wrote since
        await rename(part, target);
        await fsyncPath(dirname(target));
      },
      this.publishTimeoutMs,
    );
    this.logger?.debug(
      { path: target, durationMs: Math.round(performance.now() - started) },
      'snapshot published',
    );
  }

  /** Bytes available to the agent on the filesystem holding `dir` (statfs f_bavail × f_bsize). */
  async freeBytes(dir: string): Promise<number> {
    const target = await this.confine(dir, 'dir');
    const fs = await this.bounded('statfs', target, () => statfs(target));
    return fs.bavail * fs.bsize;
  }

  /**
   * Checks before an export that `bytes` (plus `reserveBytes`, a margin for QCOW2 metadata and
   * other writers) fit.
   * @throws InsufficientSpaceError STORE_FULL
   */
  async ensureFreeSpace(dir: string, bytes: number, opts: { reserveBytes?: number } = {}): Promise<void> {
    const needed = bytes + (opts.reserveBytes ?? 0);
    const free = await this.freeBytes(dir);
    if (free < needed) throw new InsufficientSpaceError('store', dir, needed, free);
  }

  /**
   * The backing string to write into `fromFile` so it points at `toFile`: relative to fromFile's
   * directory, so the chain survives the store being mounted elsewhere (seed defect 4).
   * Both must lie under the same store root. Pure: pass confined paths.
   * @throws ValidationError BACKING_OUTSIDE_STORE
   */
  relativeBacking(fromFile: string, toFile: string): string {
    checkAbsolutePath(fromFile, 'fromFile');
    checkAbsolutePath(toFile, 'toFile');
    const root = this.roots.find((r) => isInside(fromFile, r) && isInside(toFile, r));
    if (root === undefined) {
      throw new ValidationError(
        'BACKING_OUTSIDE_STORE',
        `${fromFile} and ${toFile} are not under the same store root; a relative backing name would not survive a remount`,
        { field: 'backing' },
      );
    }
    return relative(dirname(fromFile), toFile);
  }

  /**
   * Reads the backing chain of `topPath` (which may be outside the store, e.g. the active volume),
   * top first, with force-share so it works while QEMU holds the top.
   */
  async readChain(topPath: string): Promise<ChainMember[]> {
    const realRoots = await Promise.all(this.roots.map((r) => realpathAllowMissing(r)));
    const top = checkAbsolutePath(topPath, 'topPath');
    // The headers in-process (a qemu-img process per chain read was most of a snapshot's process
    // starts); qemu-img for what only it reads as it does (raw layers, protocols, broken chains).
    const headers = await this.bounded('read', top, () => chainFromHeaders(top));
    const images = headers ?? (await this.qemuImg.chain(top, { forceShare: true }));
    return images.map((image) => ({
      path: image.filename,
      format: image.format,
      virtualSize: image.virtualSize,
      actualSize: image.actualSize,
      backingFile: image.backingFile,
      backingPath: image.fullBackingFile,
      backingFormat: image.backingFormat,
      storeRoot: realRoots.find((r) => isInside(image.filename, r)) ?? null,
    }));
  }

  /**
   * Removes one store file and fsyncs its directory. Checking that nothing references it
   * (invariant 3) is the caller's job. Returns false when it did not exist (steps are idempotent).
   */
  async remove(path: string): Promise<boolean> {
    const removed = await this.removeFile(path);
    if (removed) this.logger?.debug({ path: removed }, 'store file removed');
    return removed !== undefined;
  }

  /** Snapshot file names in a store directory (no part files, no subdirectories), sorted. */
  async list(ref: StoreRef): Promise<string[]> {
    const dir = await this.directory(ref);
    const entries = await this.bounded('readdir', dir, () => readdir(dir, { withFileTypes: true }));
    return entries
      .filter((e) => e.isFile() && !PART.test(e.name))
      .map((e) => e.name)
      .sort();
  }

  /**
   * Removes `.<name>.part` leftovers in the store directory `dir` that no one has written for
   * `olderThanMs` (a job that failed while the store was unreachable could not remove its own);
   * returns their names.
   */
  async removeStaleParts(dir: string, olderThanMs: number): Promise<string[]> {
    const target = await this.confine(dir, 'dir');
    return this.bounded('unlink', target, async () => {
      const entries = await readdir(target, { withFileTypes: true }).catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return [];
        throw e;
      });
      const removed: string[] = [];
      for (const entry of entries) {
        if (!entry.isFile() || !PART.test(entry.name)) continue;
        const path = join(target, entry.name);
        if (Date.now() - (await stat(path)).mtimeMs < olderThanMs) continue;
        await unlink(path);
        removed.push(entry.name);
      }
      if (removed.length > 0) {
        await fsyncPath(target);
        this.logger?.info({ dir: target, removed }, 'removed parts of exports that failed long ago');
      }
      return removed.sort();
    });
  }
}
