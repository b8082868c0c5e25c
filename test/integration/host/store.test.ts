import { existsSync } from 'node:fs';
import { mkdir, readdir, rename, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InsufficientSpaceError, PathExistsError, ValidationError } from '../../../src/errors/index.js';
import { runTool } from '../../../src/host/exec.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { SnapshotStore } from '../../../src/host/store.js';
import {
  hasPattern,
  infoOf,
  MiB,
  makeQcow2,
  sameContent,
  tempDir,
  writePattern,
} from '../../support/images.js';
import { freeBytesOf } from '../../support/xfs.js';

const toolCalls: string[][] = [];
const qemuImg = new QemuImg({
  timeoutMs: 30_000,
  exportTimeoutMs: 120_000,
  run: (file, args, options) => {
    toolCalls.push([file, ...args]);
    return runTool(file, args, options);
  },
});

let base: string;
let cleanup: () => Promise<void>;
let rootA: string;
let rootB: string;
let outside: string;
let store: SnapshotStore;

beforeAll(async () => {
  ({ dir: base, cleanup } = await tempDir('store-test'));
  rootA = join(base, 'storeA');
  rootB = join(base, 'storeB');
  outside = join(base, 'outside');
  for (const d of [rootA, rootB, outside]) await mkdir(d);
  store = new SnapshotStore({ roots: [rootA, rootB], qemuImg });
});
afterAll(async () => {
  await cleanup();
});

async function refusal(promise: Promise<unknown>): Promise<ValidationError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ValidationError);
  return error as ValidationError;
}

describe('SnapshotStore paths', () => {
  it('resolves store directories under a configured root', async () => {
    expect(await store.directory({ root: rootA, dir: 'vol-1' })).toBe(join(rootA, 'vol-1'));
    expect(await store.directory({ root: rootB, dir: 'a/b' })).toBe(join(rootB, 'a', 'b'));
    const made = await store.ensureDirectory({ root: rootA, dir: 'made/deep' });
    expect(existsSync(made)).toBe(true);
  });

  it('refuses roots that are not configured, escapes, symlinks out and odd names, before any tool runs', async () => {
    await symlink(outside, join(rootA, 'link-out'));
    const calls = toolCalls.length;
    expect((await refusal(store.directory({ root: outside, dir: 'x' }))).code).toBe('PATH_OUTSIDE_ROOTS');
    expect((await refusal(store.directory({ root: `${rootA}/`, dir: 'x' }))).code).toBe('INVALID_PATH');
    expect((await refusal(store.directory({ root: rootA, dir: '../outside' }))).code).toBe('INVALID_PATH');
    expect((await refusal(store.directory({ root: rootA, dir: '/etc' }))).code).toBe('INVALID_PATH');
    expect((await refusal(store.directory({ root: rootA, dir: 'link-out' }))).code).toBe(
      'PATH_OUTSIDE_ROOTS',
    );
    expect((await refusal(store.directory({ root: rootA, dir: 'link-out/new' }))).code).toBe(
      'PATH_OUTSIDE_ROOTS',
    );
    for (const name of ['a b', "it's", 'a;b', '$(touch x)', 'a\nb', '-rf', '..', '.hidden', '']) {
      await refusal(store.memberPath({ root: rootA, dir: 'vol-1' }, name));
      await refusal(store.directory({ root: rootA, dir: name }));
      await refusal(store.directory({ root: rootA, dir: `ok/${name}` }));
    }
    await refusal(store.memberPath({ root: rootA, dir: 'vol-1' }, 'x/y'));
    await refusal(store.remove('/etc/hostname'));
    await refusal(store.freeBytes(outside));
    await refusal(store.readChain('relative/top.qcow2'));
    await refusal(store.publish(join(outside, '.x.part'), join(outside, 'x')));
    expect(toolCalls.length).toBe(calls);
    expect(await readdir(outside)).toEqual([]);
  });
});

describe('SnapshotStore publish', () => {
  it('gives a snapshot its final name only when complete; the .part file is gone after', async () => {
    const ref = { root: rootA, dir: 'pub' };
    await store.ensureDirectory(ref);
    const src = await makeQcow2(join(base, 'pub-src.qcow2'), 64 * MiB);
    for (let i = 0; i < 4; i++) await writePattern(src, 0x20 + i, i * 16 * MiB, MiB);

    const finalPath = await store.memberPath(ref, 'snap-1');
    const part = store.partPath(finalPath);
    expect(part).toBe(join(rootA, 'pub', '.snap-1.part'));
    const seenFinal: boolean[] = [];
    await qemuImg.convert({
      source: src,
      target: part,
      progress: () => seenFinal.push(existsSync(finalPath)),
    });
    expect(seenFinal.length).toBeGreaterThan(1);
    expect(seenFinal.every((v) => v === false)).toBe(true);
    expect(existsSync(finalPath)).toBe(false);
    expect(await store.list(ref)).toEqual([]);

    await store.publish(part, finalPath);
    expect(existsSync(part)).toBe(false);
    expect(await sameContent(src, finalPath)).toBe(true);
    expect(await store.list(ref)).toEqual(['snap-1']);

    // Never replaces a published snapshot; refuses a part that does not belong to the final name.
    await writeFile(part, 'again');
    await expect(store.publish(part, finalPath)).rejects.toBeInstanceOf(PathExistsError);
    const other = await store.memberPath(ref, 'snap-2');
    expect((await refusal(store.publish(part, other))).code).toBe('INVALID_PATH');
    expect(existsSync(other)).toBe(false);

    // Leftovers of exports that failed long ago go; a part written recently may be a running job's.
    const fresh = join(rootA, 'pub', '.snap-3.part');
    await writeFile(fresh, 'running');
    const dayAgo = new Date(Date.now() - 25 * 3600_000);
    await utimes(part, dayAgo, dayAgo);
    const dir = await store.directory(ref);
    expect(await store.removeStaleParts(dir, 24 * 3600_000)).toEqual(['.snap-1.part']);
    expect(await readdir(join(rootA, 'pub'))).toEqual(['.snap-3.part', 'snap-1']);
  });
});

describe('SnapshotStore chains', () => {
  it('writes relative backing names that survive moving the store, and reads the chain', async () => {
    const ref = { root: rootA, dir: 'chain' };
    const dir = await store.ensureDirectory(ref);
    // The active volume lives outside the store (a file pool here).
    const active = await makeQcow2(join(outside, 'active.qcow2'), 32 * MiB);
    await writePattern(active, 0xa1, 0, 2 * MiB);

    const snap1 = await store.memberPath(ref, 'snap-1');
    await qemuImg.convert({ source: active, target: store.partPath(snap1) });
    await store.publish(store.partPath(snap1), snap1);
    // Re-point the active image at snap-1 (absolute, as the live disk does) and write more.
    await qemuImg.rebase({ image: active, backing: { file: snap1, format: 'qcow2' }, unsafe: true });
    await writePattern(active, 0xa2, 4 * MiB, MiB);
    const overlay = join(outside, 'overlay.qcow2');
    await qemuImg.create({ path: overlay, backing: { file: active, format: 'qcow2' } });

    const snap2 = await store.memberPath(ref, 'snap-2');
    const backing = store.relativeBacking(snap2, snap1);
    expect(backing).toBe('snap-1');
    await qemuImg.convert({
      source: active,
      target: store.partPath(snap2),
      backing: { file: backing, format: 'qcow2' },
    });
    await store.publish(store.partPath(snap2), snap2);
    expect((await infoOf(snap2))['backing-filename']).toBe('snap-1');
    expect(await sameContent(active, snap2)).toBe(true);

    const chain = await store.readChain(overlay);
    expect(chain.map((m) => m.path)).toEqual([overlay, active, snap1]);
    expect(chain.map((m) => m.storeRoot)).toEqual([null, null, rootA]);
    expect(chain[1]).toMatchObject({ backingFile: snap1, backingPath: snap1, backingFormat: 'qcow2' });
    expect(chain[2]).toMatchObject({ backingFile: null, virtualSize: 32 * MiB });
    expect(chain[2]?.actualSize).toBeGreaterThan(2 * MiB);

    const stored = await store.readChain(snap2);
    expect(stored.map((m) => [m.path, m.backingFile, m.storeRoot])).toEqual([
      [snap2, 'snap-1', rootA],
      [snap1, null, rootA],
    ]);

    // "Remount" the store elsewhere: move the directory to the other root. The chain still reads.
    const moved = join(rootB, 'chain');
    await rename(dir, moved);
    const movedChain = await store.readChain(join(moved, 'snap-2'));
    expect(movedChain.map((m) => m.path)).toEqual([join(moved, 'snap-2'), join(moved, 'snap-1')]);
    expect(await hasPattern(join(moved, 'snap-2'), 0xa1, 0, 2 * MiB)).toBe(true);
    expect(await hasPattern(join(moved, 'snap-2'), 0xa2, 4 * MiB, MiB)).toBe(true);
  });

  it('computes relative names across directories of one root and refuses across roots', () => {
    expect(store.relativeBacking(join(rootA, 'v', 'snap-2'), join(rootA, 'v', 'snap-1'))).toBe('snap-1');
    expect(store.relativeBacking(join(rootA, 'v2', 'snap-1'), join(rootA, 'v', 'snap-9'))).toBe(
      '../v/snap-9',
    );
    expect(() => store.relativeBacking(join(rootA, 'v', 'x'), join(rootB, 'v', 'y'))).toThrow(
      /same store root/,
    );
    expect(() => store.relativeBacking(join(rootA, 'v', 'x'), join(outside, 'y'))).toThrow(ValidationError);
  });
});

describe('SnapshotStore space and removal', () => {
  it('reports free space like statfs and refuses exports that do not fit', async () => {
    const free = await store.freeBytes(rootA);
    const oracle = await freeBytesOf(rootA);
    expect(Math.abs(free - oracle)).toBeLessThan(256 * MiB);
    await store.ensureFreeSpace(rootA, MiB);
    const error = await store
      .ensureFreeSpace(rootA, free * 2, { reserveBytes: MiB })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InsufficientSpaceError);
    expect(error).toMatchObject({ code: 'STORE_FULL', retryable: true, neededBytes: free * 2 + MiB });
  });

  it('removes files idempotently and refuses directories', async () => {
    const ref = { root: rootA, dir: 'rm' };
    await store.ensureDirectory(ref);
    const file = await store.memberPath(ref, 'snap-1');
    await makeQcow2(file, MiB);
    expect(await store.remove(file)).toBe(true);
    expect(existsSync(file)).toBe(false);
    expect(await store.remove(file)).toBe(false);
    expect((await refusal(store.remove(join(rootA, 'rm')))).code).toBe('INVALID_PATH');
  });
});
