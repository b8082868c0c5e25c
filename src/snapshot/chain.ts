import { stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ChainInvalidError } from '../errors/index.js';
import type { QemuImg } from '../host/qemu-img.js';
import type { SnapshotStore } from '../host/store.js';

/** The backing of one image as written in its header and as resolved (null: none). */
export async function backingOf(
  qemuImg: QemuImg,
  path: string,
): Promise<{ written: string | null; resolved: string | null }> {
  const info = await qemuImg.info(path, { forceShare: true });
  return { written: info.backingFile, resolved: info.fullBackingFile };
}

/** Every path in the backing chain of `top` (top first), read from the headers with force-share. */
export async function chainPaths(store: SnapshotStore, top: string): Promise<string[]> {
  return (await store.readChain(top)).map((m) => m.path);
}

/** Removes a `.name.part` file of an interrupted export (store.remove refuses hidden names). */
export async function removePart(store: SnapshotStore, partPath: string): Promise<void> {
  const dir = await store.confine(dirname(partPath), 'partPath');
  await unlink(join(dir, basename(partPath))).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  });
}

/**
 * Removes a store file only after proving that none of `holders` (images whose chains must stay
 * intact: the active volume, children, staging) has it in its chain (invariant 3).
 * Holders that do not exist are skipped. Returns false when the file was already gone.
 */
export async function removeIfUnreferenced(
  store: SnapshotStore,
  path: string,
  holders: readonly string[],
): Promise<boolean> {
  for (const holder of holders) {
    if (holder === path) continue;
    // A holder that does not exist holds nothing; any other failure means we cannot prove it.
    if (!(await pathExists(holder))) continue;
    const chain = await chainPaths(store, holder);
    if (chain.includes(path)) {
      throw new ChainInvalidError('refusing to remove a layer that is still referenced', [
        `${holder} has ${path} in its backing chain`,
      ]);
    }
  }
  return store.remove(path);
}

/** True when `path` exists (file or device node). */
export async function pathExists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return false;
      throw e;
    },
  );
}

/**
 * Checks a store chain ending in `top`: qemu-img check of every store member, and backing names
 * between store files relative (seed defect 4) and resolving inside the store. Returns the problems.
 */
export async function storeChainProblems(
  store: SnapshotStore,
  qemuImg: QemuImg,
  top: string,
  opts: { signal?: AbortSignal } = {},
): Promise<string[]> {
  const problems: string[] = [];
  const members = await store.readChain(top);
  for (const member of members) {
    if (member.storeRoot === null) {
      problems.push(`${member.path} is outside the store roots`);
      continue;
    }
    const check = await qemuImg.check(member.path, { forceShare: true, signal: opts.signal });
    if (!check.ok) {
      problems.push(
        `${member.path}: qemu-img check found ${check.corruptions} corruptions, ${check.leaks} leaks, ${check.checkErrors} errors`,
      );
    }
    if (member.backingFile?.startsWith('/')) {
      problems.push(`${member.path} names its backing by absolute path ${member.backingFile}`);
    }
  }
  return problems;
}
