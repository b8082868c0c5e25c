import { open, stat, unlink } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { ValidationError } from '../errors/index.js';
import { fsyncPath } from '../fsync.js';
import type { Logger } from '../observability/logger.js';
import { FS_CALL_TIMEOUT_MS, StuckCallGate, withDeadline } from './deadline.js';
import { confinePath } from './paths.js';
import type { QemuImg } from './qemu-img.js';

/** One per process: every store or pool object on the same root shares its mount's stuck call. */
const stuckCalls = new StuckCallGate();

/**
 * What a file pool and the snapshot store share: files under configured roots (resolved), every
 * path confined to them, qemu-img to work on them.
 */
export abstract class RootedFiles {
  readonly roots: readonly string[];
  protected readonly qemuImg: QemuImg;
  protected readonly logger: Logger | undefined;
  /** Deadline of one file-system call (default 60 s): a root may be an NFS mount that stops answering. */
  protected readonly callTimeoutMs: number;

  constructor(opts: {
    roots: readonly string[];
    qemuImg: QemuImg;
    logger?: Logger | undefined;
    timeoutMs?: number;
  }) {
    this.roots = opts.roots.map((r) => resolve(r));
    this.qemuImg = opts.qemuImg;
    this.logger = opts.logger;
    this.callTimeoutMs = opts.timeoutMs ?? FS_CALL_TIMEOUT_MS;
  }

  /** Every file-system call under the roots goes through here: none may wait forever on a dead mount. */
  protected bounded<T>(
    operation: string,
    path: string,
    work: () => Promise<T>,
    timeoutMs = this.callTimeoutMs,
  ): Promise<T> {
    return stuckCalls.run(this.rootOf(path), work, { operation, path, timeoutMs });
  }

  /** The configured root `path` lies under (the path itself when none does). */
  private rootOf(path: string): string {
    return this.roots.find((root) => path === root || path.startsWith(`${root}/`)) ?? path;
  }

  /**
   * Removes one regular file under the roots and fsyncs its directory. Returns its real path, or
   * undefined when it did not exist (steps are idempotent). Whether anything still uses it is the
   * caller's question.
   */
  protected async removeFile(path: string): Promise<string | undefined> {
    const target = await this.confine(path);
    return this.bounded('unlink', target, async () => {
      const info = await stat(target).catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return undefined;
        throw e;
      });
      if (info === undefined) return undefined;
      if (!info.isFile()) {
        throw new ValidationError('INVALID_PATH', `${target} is not a regular file`, { field: 'path' });
      }
      await unlink(target);
      await fsyncPath(dirname(target));
      return target;
    });
  }

  /** Confines any path to the roots and returns its real path. */
  async confine(path: string, field = 'path'): Promise<string> {
    return this.bounded('realpath', path, () => confinePath(path, this.roots, field));
  }
}

/** How long a flush waits by default: it writes back whatever the page cache holds for the file (a merged layer: GBs). */
export const FILE_FLUSH_TIMEOUT_MS = 10 * 60_000;

/** A descriptor of a file or block device kept open to ask later whether what was written since is on disk. */
export interface FlushHandle {
  /**
   * fsync: writes back the dirty pages any process left in the host page cache for the file (QEMU
   * writing without O_DIRECT) and throws a writeback error (EIO) recorded since the handle was opened,
   * even one another descriptor already reported (Linux errseq: each open descriptor gets every error
   * once; a descriptor opened after an error someone saw gets nothing). Never retry one that
   * failed to "prove" durability: the failed pages are clean by then, the next fsync says 0.
   * @throws the system error, or HOST_TIMEOUT after the handle's timeout
   */
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** Opens `path` read-only (fsync needs no write access) for a later FlushHandle.sync. */
export async function openFlushHandle(path: string, timeoutMs = FILE_FLUSH_TIMEOUT_MS): Promise<FlushHandle> {
  const handle = await withDeadline(open(path, 'r'), {
    operation: 'open',
    path,
    timeoutMs: FS_CALL_TIMEOUT_MS,
  });
  return {
    sync: () => withDeadline(handle.sync(), { operation: 'fsync', path, timeoutMs }),
    close: () => handle.close(),
  };
}
