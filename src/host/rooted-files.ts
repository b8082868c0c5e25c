import { resolve } from 'node:path';
import type { Logger } from '../observability/logger.js';
import { confinePath } from './paths.js';
import type { QemuImg } from './qemu-img.js';

/**
 * What a file pool and the snapshot store share: files under configured roots (resolved), every
 * path confined to them, qemu-img to work on them.
 */
export abstract class RootedFiles {
  readonly roots: readonly string[];
  protected readonly qemuImg: QemuImg;
  protected readonly logger: Logger | undefined;

  constructor(opts: { roots: readonly string[]; qemuImg: QemuImg; logger?: Logger | undefined }) {
    this.roots = opts.roots.map((r) => resolve(r));
    this.qemuImg = opts.qemuImg;
    this.logger = opts.logger;
  }

  /** Confines any path to the roots and returns its real path. */
  async confine(path: string, field = 'path'): Promise<string> {
    return confinePath(path, this.roots, field);
  }
}
