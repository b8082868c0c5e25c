// One fsync for every layer. No imports from the project: any layer may use it.
import { open } from 'node:fs/promises';

/**
 * fsync of a file (its data reaches the disk, and a write-back error no one has seen yet is
 * reported) or of a directory (renames, creations and removals in it become durable).
 */
export async function fsyncPath(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
