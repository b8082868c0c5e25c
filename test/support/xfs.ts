import { mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';

/**
 * A small XFS filesystem with reflink, loop-mounted from a sparse file the test creates
 * (needs root). `cleanup` unmounts (the loop device is auto-cleared) and removes everything,
 * and is safe to call twice.
 */
export interface XfsMount {
  /** The mount point: an empty directory on XFS with reflink=1. */
  mountPoint: string;
  cleanup: () => Promise<void>;
}

/** XFS needs at least 300 MiB; the backing file is sparse, so it costs only its metadata. */
export async function mountXfs(prefix: string, sizeBytes = 320 * 1024 * 1024): Promise<XfsMount> {
  const base = await mkdtemp(join(tmpdir(), `${prefix}-xfs-`));
  const image = join(base, 'fs.img');
  const mountPoint = join(base, 'mnt');
  let mounted = false;
  const cleanup = async (): Promise<void> => {
    if (mounted) {
      await execa('umount', [mountPoint], { timeout: 30_000, reject: false });
      mounted = false;
    }
    await rm(base, { recursive: true, force: true });
  };
  try {
    await writeFile(image, '');
    await truncate(image, sizeBytes);
    await mkdir(mountPoint);
    await execa('mkfs.xfs', ['-q', '-m', 'reflink=1', image], { timeout: 60_000 });
    await execa('mount', ['-o', 'loop', image, mountPoint], { timeout: 30_000 });
    mounted = true;
    return { mountPoint, cleanup };
  } catch (error) {
    await cleanup();
    throw new Error(
      `cannot loop-mount an XFS image for the reflink tests (needs root, xfsprogs, loop devices): ${String(error)}`,
    );
  }
}

/** Bytes free on the filesystem holding `path` (statfs, as `df` shows). */
export async function freeBytesOf(path: string): Promise<number> {
  const { stdout } = await execa('stat', ['-f', '-c', '%a %S', path], { timeout: 10_000 });
  const [blocks, size] = String(stdout).trim().split(' ').map(Number);
  return (blocks ?? 0) * (size ?? 0);
}
