import { ChainInvalidError } from '../errors/index.js';
import { FS_CALL_TIMEOUT_MS, withDeadline } from '../host/deadline.js';
import { pathExists } from '../host/paths.js';
import { readQcow2Header, resolveBackingPath } from '../host/qcow2-header.js';
import type { QemuImg } from '../host/qemu-img.js';
import type { SnapshotStore } from '../host/store.js';

/** The backing of one image as written in its header and as resolved (null: none). */
export async function backingOf(
  qemuImg: QemuImg,
  path: string,
): Promise<{ written: string | null; resolved: string | null }> {
  // The QCOW2 header in-process; qemu-img for another format or a backing name with a protocol.
  // Bounded: the image may lie on an NFS store whose server is gone.
  const read = withDeadline(readQcow2Header(path), {
    operation: 'read',
    path,
    timeoutMs: FS_CALL_TIMEOUT_MS,
  });
  const header = await read.catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return null; // qemu-img's error says it as the callers expect
    throw error;
  });
  if (header !== null) {
    if (header.backingFile === null) return { written: null, resolved: null };
    const resolved = resolveBackingPath(path, header.backingFile);
    if (resolved !== null) return { written: header.backingFile, resolved };
  }
  const info = await qemuImg.info(path, { forceShare: true });
  return { written: info.backingFile, resolved: info.fullBackingFile };
}

/** Whether `image`'s header names `backing` (resolved) as its backing. */
export async function backsOnto(qemuImg: QemuImg, image: string, backing: string | null): Promise<boolean> {
  return (await backingOf(qemuImg, image)).resolved === backing;
}

/** Every path in the backing chain of `top` (top first), read from the headers with force-share. */
export async function chainPaths(store: SnapshotStore, top: string): Promise<string[]> {
  return (await store.readChain(top)).map((m) => m.path);
}

/** Removes a `.name.part` file of an interrupted export (store.remove refuses hidden names). */
export function removePart(store: SnapshotStore, partPath: string): Promise<void> {
  return store.removePart(partPath);
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
export { pathExists };

/**
 * Checks a new store snapshot and its link to its parent, not the rest of the chain (that is
 * chain.verify's job, and re-checking every member made each snapshot cost more as the chain
 * grew): qemu-img check of `top` alone, its backing name relative (seed defect 4), and that name
 * resolving, with the written format, to a store file. One chain read opens the whole chain, which
 * proves the backing names below the parent still resolve. Returns the problems.
 */
export async function newSnapshotProblems(
  store: SnapshotStore,
  qemuImg: QemuImg,
  top: string,
  opts: { signal?: AbortSignal } = {},
): Promise<string[]> {
  const problems: string[] = [];
  const [snapshot, parent] = await store.readChain(top);
  if (snapshot === undefined) return [`${top} has no image`];
  if (snapshot.storeRoot === null) return [`${snapshot.path} is outside the store roots`];
  const check = await qemuImg.check(snapshot.path, { forceShare: true, signal: opts.signal });
  if (!check.ok) {
    problems.push(
      `${snapshot.path}: qemu-img check found ${check.corruptions} corruptions, ${check.leaks} leaks, ${check.checkErrors} errors`,
    );
  }
  if (snapshot.backingFile === null) return problems;
  if (snapshot.backingFile.startsWith('/')) {
    problems.push(`${snapshot.path} names its backing by absolute path ${snapshot.backingFile}`);
  }
  if (parent === undefined || parent.path !== snapshot.backingPath) {
    problems.push(`${snapshot.path}: backing ${snapshot.backingFile} does not resolve to an image`);
  } else {
    if (parent.storeRoot === null) problems.push(`${parent.path} is outside the store roots`);
    if (snapshot.backingFormat !== parent.format) {
      problems.push(
        `${snapshot.path}: backing format ${snapshot.backingFormat ?? 'unset'} but its parent is ${parent.format}`,
      );
    }
  }
  return problems;
}
