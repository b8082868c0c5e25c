import { randomBytes } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fsyncPath } from './fsync.js';

/**
 * Replaces `path` with `data` atomically and durably: write a temp file in the same directory,
 * fsync it, rename it over `path`, fsync the directory. A crash at any instant leaves either the
 * old or the new content, never a torn file. With `durable: false` the directory fsync is skipped:
 * the new content is whole on disk before the rename, but a power loss may undo the rename and
 * bring back the previous content.
 */
export async function writeFileAtomic(
  path: string,
  data: string | Buffer,
  options: { durable?: boolean } = {},
): Promise<void> {
  const durable = options.durable ?? true;
  const dir = dirname(path);
  const temp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const file = await open(temp, 'wx', 0o600);
    try {
      await file.writeFile(data);
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temp, path);
  } catch (error) {
    await unlink(temp).catch((unlinkError: NodeJS.ErrnoException) => {
      if (unlinkError.code !== 'ENOENT') throw unlinkError;
    });
    throw error;
  }
  if (durable) await fsyncPath(dir);
}

/** True for the temp files writeFileAtomic leaves behind when the process dies mid-write. */
export function isAtomicTempFile(name: string): boolean {
  return name.startsWith('.') && name.endsWith('.tmp');
}
