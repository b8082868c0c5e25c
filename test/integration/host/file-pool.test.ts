import childProcess from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, symlink } from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  InsufficientSpaceError,
  PathExistsError,
  ReflinkUnsupportedError,
  ValidationError,
} from '../../../src/errors/index.js';
import { runTool } from '../../../src/host/exec.js';
import { FilePool } from '../../../src/host/file-pool.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import {
  hasPattern,
  infoOf,
  MiB,
  makeQcow2,
  sameContent,
  tempDir,
  writePattern,
} from '../../support/images.js';
import { freeBytesOf, mountXfs, type XfsMount } from '../../support/xfs.js';

const toolCalls: string[][] = [];
const record = (file: string, args: readonly string[], options: Parameters<typeof runTool>[2]) => {
  toolCalls.push([file, ...args]);
  return runTool(file, args, options);
};
const qemuImg = new QemuImg({ timeoutMs: 30_000, exportTimeoutMs: 120_000, run: record });

let xfs: XfsMount;
let ext: { dir: string; cleanup: () => Promise<void> };
let xfsPool: string;
let extPool: string;
let outside: string;
let pool: FilePool;

beforeAll(async () => {
  xfs = await mountXfs('file-pool-test');
  ext = await tempDir('file-pool-test-ext');
  xfsPool = join(xfs.mountPoint, 'pool');
  extPool = join(ext.dir, 'root', 'pool');
  outside = join(ext.dir, 'outside');
  for (const d of [xfsPool, extPool, outside]) await mkdir(d, { recursive: true });
  pool = new FilePool({
    roots: [xfs.mountPoint, join(ext.dir, 'root')],
    qemuImg,
    timeoutMs: 30_000,
  });
});
afterAll(async () => {
  await xfs?.cleanup();
  await ext?.cleanup();
});

async function fsType(path: string): Promise<string> {
  return String((await execa('stat', ['-f', '-c', '%T', path])).stdout).trim();
}

describe('FilePool on XFS with reflink', () => {
  it('clones a volume instantly (no data space used) with the same content, copy-on-write after', async () => {
    expect(await fsType(xfsPool)).toBe('xfs');
    expect(await pool.supportsReflink(xfsPool)).toEqual({ supported: true, reason: null });
    expect(await readdir(xfsPool)).toEqual([]); // the probe cleaned up

    const volume = await pool.volumePath(xfsPool, 'vol-1.qcow2');
    await pool.create({ path: volume, sizeBytes: 128 * MiB });
    await writePattern(volume, 0x31, 0, 48 * MiB);
    await execa('sync');

    const clone = await pool.volumePath(xfsPool, 'vol-1.clone');
    const freeBefore = await freeBytesOf(xfsPool);
    await pool.reflinkClone(volume, clone);
    await execa('sync');
    const freeAfter = await freeBytesOf(xfsPool);
    // A full copy would take 48 MiB; a reflink takes metadata only.
    expect(freeBefore - freeAfter).toBeLessThan(2 * MiB);
    expect(await sameContent(volume, clone)).toBe(true);
    expect((await infoOf(clone))['virtual-size']).toBe(128 * MiB);

    // Writes to the clone do not show in the original (and cost space only for what was written).
    await writePattern(clone, 0x32, 0, MiB);
    expect(await hasPattern(volume, 0x31, 0, 48 * MiB)).toBe(true);
    expect(await hasPattern(clone, 0x32, 0, MiB)).toBe(true);
    expect(await sameContent(volume, clone)).toBe(false);

    await expect(pool.reflinkClone(volume, clone)).rejects.toBeInstanceOf(PathExistsError);
  });

  it('clones without starting a process (lvm-cow makes it with the VM paused)', async () => {
    const volume = await pool.volumePath(xfsPool, 'noproc.qcow2');
    await pool.create({ path: volume, sizeBytes: 8 * MiB });
    const spawned: string[] = [];
    const spawn = childProcess.spawn;
    // Every tool start (execa, runTool) goes through child_process.spawn.
    childProcess.spawn = ((...args: Parameters<typeof spawn>) => {
      spawned.push(String(args[0]));
      return spawn(...args);
    }) as typeof spawn;
    syncBuiltinESMExports();
    try {
      await execa('true'); // proves the counting sees a process start
      expect(spawned).toHaveLength(1);
      spawned.length = 0;
      await pool.reflinkClone(volume, await pool.volumePath(xfsPool, 'noproc.clone'));
      expect(await pool.supportsReflink(xfsPool)).toEqual({ supported: true, reason: null });
      expect(spawned).toEqual([]);
    } finally {
      childProcess.spawn = spawn;
      syncBuiltinESMExports();
    }
    expect(await sameContent(volume, await pool.volumePath(xfsPool, 'noproc.clone'))).toBe(true);
  });

  it('creates overlays, renames without replacing and removes volumes', async () => {
    const base = await pool.volumePath(xfsPool, 'base.qcow2');
    await pool.create({ path: base, sizeBytes: 8 * MiB });
    await writePattern(base, 0x41, 0, MiB);
    await expect(pool.create({ path: base, sizeBytes: 8 * MiB })).rejects.toBeInstanceOf(PathExistsError);
    expect(await hasPattern(base, 0x41, 0, MiB)).toBe(true);

    const overlay = await pool.volumePath(xfsPool, 'overlay.qcow2');
    await pool.create({ path: overlay, backing: { file: base, format: 'qcow2' } });
    expect((await infoOf(overlay))['backing-filename']).toBe(base);

    const renamed = await pool.volumePath(xfsPool, 'overlay-renamed.qcow2');
    await pool.rename(overlay, renamed);
    expect(existsSync(overlay)).toBe(false);
    expect(await hasPattern(renamed, 0x41, 0, MiB)).toBe(true);
    await expect(pool.rename(renamed, base)).rejects.toBeInstanceOf(PathExistsError);
    expect(existsSync(renamed)).toBe(true);

    expect(await pool.remove(renamed)).toBe(true);
    expect(await pool.remove(renamed)).toBe(false);
    expect(existsSync(renamed)).toBe(false);
    expect(await pool.exists(base)).toBe(true);
  });
});

describe('FilePool without reflink', () => {
  it('says REFLINK_UNSUPPORTED on the work filesystem and never makes a full copy', async () => {
    const type = await fsType(extPool);
    expect(type).not.toBe('xfs');
    const support = await pool.supportsReflink(extPool);
    expect(support.supported).toBe(false);
    expect(support.reason).toMatch(/not supported/i);
    expect(await readdir(extPool)).toEqual([]);

    const volume = await pool.volumePath(extPool, 'vol.qcow2');
    await pool.create({ path: volume, sizeBytes: 8 * MiB });
    await writePattern(volume, 0x51, 0, 4 * MiB);
    const clone = await pool.volumePath(extPool, 'vol.clone');
    const error = await pool.reflinkClone(volume, clone).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ReflinkUnsupportedError);
    expect(error).toMatchObject({ code: 'REFLINK_UNSUPPORTED', retryable: false });
    expect(existsSync(clone)).toBe(false);
  });

  it('says REFLINK_UNSUPPORTED across filesystems (ext4 source, XFS target)', async () => {
    const source = await pool.volumePath(extPool, 'cross.qcow2');
    await pool.create({ path: source, sizeBytes: 4 * MiB });
    const target = await pool.volumePath(xfsPool, 'cross.clone');
    await expect(pool.reflinkClone(source, target)).rejects.toMatchObject({ code: 'REFLINK_UNSUPPORTED' });
    expect(existsSync(target)).toBe(false);
  });
});

describe('FilePool space and input checks', () => {
  it('reports free space and refuses what does not fit', async () => {
    const free = await pool.freeBytes(xfsPool);
    expect(Math.abs(free - (await freeBytesOf(xfsPool)))).toBeLessThan(8 * MiB);
    expect(free).toBeLessThan(320 * MiB);
    await pool.ensureFreeSpace(xfsPool, MiB);
    const error = await pool.ensureFreeSpace(xfsPool, 400 * MiB).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InsufficientSpaceError);
    expect(error).toMatchObject({ code: 'POOL_FULL', freeBytes: free, neededBytes: 400 * MiB });
  });

  it('refuses bad names, paths outside the roots and symlinks out before any tool runs', async () => {
    await symlink(outside, join(extPool, 'out-link'));
    await makeQcow2(join(outside, 'secret.qcow2'), MiB);
    const before = toolCalls.length;
    const refused = async (promise: Promise<unknown>) => {
      await expect(promise).rejects.toBeInstanceOf(ValidationError);
    };
    for (const name of [
      'a b',
      "it's",
      'a"b',
      'a;b',
      '$(touch pwned)',
      '`id`',
      'a\nb',
      '-rf',
      '..',
      '../x',
      '/etc',
    ]) {
      await refused(pool.volumePath(extPool, name));
    }
    await refused(pool.poolDirectory(outside));
    await refused(pool.poolDirectory(`${extPool}/../../outside`));
    await refused(pool.poolDirectory(join(extPool, 'missing')));
    await refused(pool.poolDirectory(join(extPool, 'out-link')));
    await refused(pool.create({ path: join(outside, 'new.qcow2'), sizeBytes: MiB }));
    await refused(pool.create({ path: join(extPool, 'out-link', 'new.qcow2'), sizeBytes: MiB }));
    await refused(pool.create({ path: join(extPool, '-o.qcow2'), sizeBytes: MiB }));
    await refused(pool.reflinkClone(join(outside, 'secret.qcow2'), join(xfsPool, 'stolen')));
    await refused(pool.reflinkClone(join(extPool, 'out-link', 'secret.qcow2'), join(xfsPool, 'stolen')));
    await refused(pool.rename(join(extPool, 'out-link', 'secret.qcow2'), join(extPool, 'mine')));
    await refused(pool.remove(join(outside, 'secret.qcow2')));
    await refused(pool.remove(join(extPool, 'out-link', 'secret.qcow2')));
    await refused(pool.supportsReflink(outside));
    expect(toolCalls.length).toBe(before);
    expect((await readdir(outside)).sort()).toEqual(['secret.qcow2']);
    expect(existsSync(join(xfsPool, 'stolen'))).toBe(false);
    expect(existsSync(join(extPool, 'mine'))).toBe(false);
  });
});
