import { mkdir, open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostCommandError, ValidationError } from '../../../src/errors/index.js';
import { runTool } from '../../../src/host/exec.js';
import { type ConvertProgress, QemuImg } from '../../../src/host/qemu-img.js';
import {
  checkExitCode,
  hasPattern,
  infoOf,
  KiB,
  MiB,
  makeQcow2,
  mapOf,
  sameContent,
  tempDir,
  writePattern,
} from '../../support/images.js';

const qemuImg = new QemuImg({ timeoutMs: 30_000, exportTimeoutMs: 120_000 });
let dir: string;
let cleanup: () => Promise<void>;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('qemu-img-test'));
});
afterAll(async () => {
  await cleanup();
});

const p = (name: string) => join(dir, name);

/** Reads/writes 8 bytes big-endian at `offset` of a file (to damage QCOW2 metadata on purpose). */
async function readU64(path: string, offset: number): Promise<bigint> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(8);
    await fh.read(buf, 0, 8, offset);
    return buf.readBigUInt64BE();
  } finally {
    await fh.close();
  }
}
async function writeU64(path: string, offset: number, value: bigint): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    const buf = Buffer.alloc(8);
    buf.writeBigUInt64BE(value);
    await fh.write(buf, 0, 8, offset);
  } finally {
    await fh.close();
  }
}
/** File offset of the first L2 table of a QCOW2 image (header: l1_table_offset at byte 40). */
async function firstL2TableOffset(path: string): Promise<number> {
  const l1 = await readU64(path, 40);
  return Number((await readU64(path, Number(l1))) & 0x00fffffffffffe00n);
}

describe('QemuImg', () => {
  it('reports its version', async () => {
    expect(await qemuImg.version()).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it('creates standalone images with cluster size and extended L2, and reads info', async () => {
    await qemuImg.create({
      path: p('std.qcow2'),
      sizeBytes: 32 * MiB,
      clusterSize: 128 * KiB,
      extendedL2: true,
    });
    const info = await qemuImg.info(p('std.qcow2'));
    expect(info).toMatchObject({
      format: 'qcow2',
      virtualSize: 32 * MiB,
      clusterSize: 128 * KiB,
      extendedL2: true,
      backingFile: null,
      dirty: false,
      corrupt: false,
    });
    // Cross-check with the raw tool output.
    expect((await infoOf(p('std.qcow2')))['cluster-size']).toBe(128 * KiB);
  });

  it('creates overlays (safe, and unsafe onto a backing that does not exist yet) and reads the chain', async () => {
    await makeQcow2(p('c-base.qcow2'), 16 * MiB);
    await qemuImg.create({ path: p('c-mid.qcow2'), backing: { file: p('c-base.qcow2'), format: 'qcow2' } });
    await qemuImg.create({ path: p('c-top.qcow2'), backing: { file: 'c-mid.qcow2', format: 'qcow2' } });
    const chain = await qemuImg.chain(p('c-top.qcow2'));
    expect(chain.map((m) => m.filename)).toEqual([p('c-top.qcow2'), p('c-mid.qcow2'), p('c-base.qcow2')]);
    expect(chain[0]).toMatchObject({
      backingFile: 'c-mid.qcow2',
      fullBackingFile: p('c-mid.qcow2'),
      backingFormat: 'qcow2',
      virtualSize: 16 * MiB,
    });
    expect(chain[2]?.backingFile).toBeNull();

    await qemuImg.create({
      path: p('c-unsafe.qcow2'),
      backing: { file: p('not-there-yet.qcow2'), format: 'qcow2' },
      unsafe: true,
      sizeBytes: 8 * MiB,
    });
    expect((await infoOf(p('c-unsafe.qcow2')))['backing-filename']).toBe(p('not-there-yet.qcow2'));
    // Without -u, qemu-img opens the backing: a missing one is a classified not-found error.
    const error = await qemuImg
      .create({ path: p('c-bad.qcow2'), backing: { file: p('missing.qcow2'), format: 'qcow2' } })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HostCommandError);
    expect((error as HostCommandError).kind).toBe('not-found');
  });

  it('reports convert -p progress as increasing percent and bytes, ending at 100', async () => {
    const src = await makeQcow2(p('prog-src.qcow2'), 256 * MiB);
    // Data spread over the disk so qemu-img reports several steps.
    for (let i = 0; i < 8; i++) await writePattern(src, 0x10 + i, i * 32 * MiB, MiB);
    const updates: ConvertProgress[] = [];
    await qemuImg.convert({ source: src, target: p('prog-dst.qcow2'), progress: (u) => updates.push(u) });

    const percents = updates.map((u) => u.percent);
    expect(percents.length).toBeGreaterThanOrEqual(4);
    for (let i = 1; i < percents.length; i++) expect(percents[i]).toBeGreaterThan(percents[i - 1] ?? 0);
    expect(percents.at(-1)).toBe(100);
    expect(percents.some((v) => v > 0 && v < 100)).toBe(true);
    // Bytes are relative to the data to copy (8 MiB), not the 256 MiB virtual size.
    expect(updates.at(-1)).toMatchObject({ bytesTotal: 8 * MiB, bytesDone: 8 * MiB });
    expect(await sameContent(src, p('prog-dst.qcow2'))).toBe(true);
  });

  it('exports a delta with -B: only the top layer clusters, same content as the source chain', async () => {
    const base = await makeQcow2(p('d-base.qcow2'), 64 * MiB);
    await writePattern(base, 0xaa, 0, 8 * MiB);
    const top = await makeQcow2(p('d-top.qcow2'), undefined, { backing: base });
    await writePattern(top, 0xbb, 1 * MiB, 128 * KiB);
    await writePattern(top, 0xcc, 40 * MiB, 64 * KiB);

    // Full export of the base, then the top as a delta whose backing is written relative.
    await qemuImg.convert({ source: base, target: p('snap-1') });
    const progress: ConvertProgress[] = [];
    await qemuImg.convert({
      source: top,
      target: p('snap-2'),
      backing: { file: 'snap-1', format: 'qcow2' },
      progress: (u) => progress.push(u),
    });

    const topLayer = (await mapOf(p('snap-2'))).filter((e) => e.depth === 0 && e.data);
    expect(topLayer.map((e) => [e.start, e.length])).toEqual([
      [1 * MiB, 128 * KiB],
      [40 * MiB, 64 * KiB],
    ]);
    expect((await infoOf(p('snap-2')))['backing-filename']).toBe('snap-1');
    expect(await sameContent(top, p('snap-2'))).toBe(true);
    expect(await hasPattern(p('snap-2'), 0xaa, 2 * MiB, MiB)).toBe(true);
    expect(progress.at(-1)).toMatchObject({ percent: 100, bytesTotal: 192 * KiB });
    expect(await qemuImg.allocatedBytes(top, { topOnly: true })).toBe(192 * KiB);
    expect(await qemuImg.allocatedBytes(top)).toBe(8 * MiB + 64 * KiB);
  });

  it('exports with zstd compression and throughput options, content unchanged', async () => {
    const src = await makeQcow2(p('z-src.qcow2'), 16 * MiB);
    await writePattern(src, 0x5a, 0, 4 * MiB);
    await qemuImg.convert({
      source: src,
      target: p('z-dst.qcow2'),
      compress: 'zstd',
      tuning: { outOfOrder: true, coroutines: 4, targetCache: 'none', sourceCache: 'writeback' },
    });
    const info = await qemuImg.info(p('z-dst.qcow2'));
    expect(info.compressionType).toBe('zstd');
    expect((await qemuImg.check(p('z-dst.qcow2'))).compressedClusters).toBeGreaterThan(0);
    expect(await sameContent(src, p('z-dst.qcow2'))).toBe(true);
  });

  it('rebases unsafely (header only) and safely (data kept), and flattens with backing null', async () => {
    const base = await makeQcow2(p('r-base.qcow2'), 8 * MiB);
    await writePattern(base, 0x11, 0, 2 * MiB);
    const copy = p('r-copy.qcow2');
    await execa('cp', [base, copy]);
    const top = await makeQcow2(p('r-top.qcow2'), undefined, { backing: base });
    await writePattern(top, 0x22, 0, 64 * KiB);
    const reference = p('r-ref.qcow2');
    await execa('qemu-img', ['convert', '-f', 'qcow2', '-O', 'qcow2', top, reference]);

    // Same data in the copy: a header-only rebase keeps the guest view.
    await qemuImg.rebase({ image: top, backing: { file: 'r-copy.qcow2', format: 'qcow2' }, unsafe: true });
    expect((await infoOf(top))['backing-filename']).toBe('r-copy.qcow2');
    expect(await sameContent(top, reference)).toBe(true);

    // Safe rebase onto an empty base copies what differs into the top.
    const empty = await makeQcow2(p('r-empty.qcow2'), 8 * MiB);
    const updates: ConvertProgress[] = [];
    await qemuImg.rebase({
      image: top,
      backing: { file: empty, format: 'qcow2' },
      unsafe: false,
      progress: (u) => updates.push(u),
    });
    expect((await infoOf(top))['backing-filename']).toBe(empty);
    expect(await sameContent(top, reference)).toBe(true);
    expect(updates.at(-1)?.percent).toBe(100);

    await qemuImg.rebase({ image: top, backing: null, unsafe: false });
    expect((await infoOf(top))['backing-filename']).toBeUndefined();
    expect(await sameContent(top, reference)).toBe(true);
  });

  it('measures a new image and an existing chain', async () => {
    const bySize = await qemuImg.measure({ sizeBytes: 64 * MiB });
    expect(bySize.requiredBytes).toBeGreaterThan(0);
    expect(bySize.fullyAllocatedBytes).toBeGreaterThan(64 * MiB);
    const base = await makeQcow2(p('m-base.qcow2'), 64 * MiB);
    await writePattern(base, 0x33, 0, 4 * MiB);
    const top = await makeQcow2(p('m-top.qcow2'), undefined, { backing: base });
    await writePattern(top, 0x34, 8 * MiB, 2 * MiB);
    const chain = await qemuImg.measure({ source: top });
    expect(chain.requiredBytes).toBeGreaterThanOrEqual(6 * MiB);
    expect(chain.requiredBytes).toBeLessThan(8 * MiB);
  });

  it('checks images: clean, leaked (exit 3, repairable) and corrupt (exit 2)', async () => {
    const clean = await makeQcow2(p('k-clean.qcow2'), 4 * MiB);
    await writePattern(clean, 0x44, 0, 128 * KiB);
    expect(await qemuImg.check(clean)).toMatchObject({ ok: true, corruptions: 0, leaks: 0, exitCode: 0 });

    // Leak: drop the L2 entry of cluster 0; its refcount stays 1 with nothing pointing at it.
    const leaky = await makeQcow2(p('k-leak.qcow2'), 4 * MiB);
    await writePattern(leaky, 0x45, 0, 64 * KiB);
    await writeU64(leaky, await firstL2TableOffset(leaky), 0n);
    expect(await checkExitCode(leaky)).toBe(3);
    expect(await qemuImg.check(leaky)).toMatchObject({ ok: false, leaks: 1, corruptions: 0, exitCode: 3 });
    expect(await qemuImg.check(leaky, { repair: 'leaks' })).toMatchObject({ leaksFixed: 1 });
    expect((await qemuImg.check(leaky)).ok).toBe(true);

    // Corruption: two L2 entries point at the same cluster, whose refcount is 1.
    const corrupt = await makeQcow2(p('k-corrupt.qcow2'), 4 * MiB);
    await writePattern(corrupt, 0x46, 0, 128 * KiB);
    const l2 = await firstL2TableOffset(corrupt);
    await writeU64(corrupt, l2 + 8, await readU64(corrupt, l2));
    expect(await checkExitCode(corrupt)).toBe(2);
    const result = await qemuImg.check(corrupt);
    expect(result.ok).toBe(false);
    expect(result.corruptions).toBeGreaterThan(0);
    expect(result.exitCode).toBe(2);
  });

  it('compares images: identical, and different with the offset', async () => {
    const a = await makeQcow2(p('cmp-a.qcow2'), 4 * MiB);
    await writePattern(a, 0x55, 0, MiB);
    const b = p('cmp-b.qcow2');
    await execa('cp', [a, b]);
    expect(await qemuImg.compare(a, b)).toMatchObject({ identical: true, mismatchOffset: null });
    await writePattern(b, 0x56, 2 * MiB, 64 * KiB);
    const differ = await qemuImg.compare(a, b);
    expect(differ.identical).toBe(false);
    expect(differ.mismatchOffset).toBe(2 * MiB);
    expect(differ.message).toMatch(/mismatch/i);
  });

  it('commits a top layer into its backing (and keeps it with drop)', async () => {
    const base = await makeQcow2(p('cm-base.qcow2'), 8 * MiB);
    await writePattern(base, 0x61, 0, 2 * MiB);
    const top = await makeQcow2(p('cm-top.qcow2'), undefined, { backing: base });
    await writePattern(top, 0x62, MiB, 128 * KiB);
    const updates: ConvertProgress[] = [];
    await qemuImg.commit({ image: top, drop: true, progress: (u) => updates.push(u) });
    expect(await hasPattern(base, 0x62, MiB, 128 * KiB)).toBe(true);
    expect(await hasPattern(base, 0x61, 0, MiB)).toBe(true);
    expect(updates.at(-1)?.percent).toBe(100);
  });

  it('maps allocation with depth per layer', async () => {
    const base = await makeQcow2(p('map-base.qcow2'), 4 * MiB);
    await writePattern(base, 0x71, 0, MiB);
    const top = await makeQcow2(p('map-top.qcow2'), undefined, { backing: base });
    await writePattern(top, 0x72, 2 * MiB, 64 * KiB);
    const entries = await qemuImg.map(top);
    expect(entries.find((e) => e.start === 2 * MiB)).toMatchObject({
      depth: 0,
      data: true,
      length: 64 * KiB,
    });
    expect(entries.find((e) => e.start === 0)).toMatchObject({ depth: 1, data: true, present: true });
    expect(entries.reduce((sum, e) => sum + e.length, 0)).toBe(4 * MiB);
  });

  it('maps image locks: busy without -U while another process holds the image, readable with -U', async () => {
    const held = await makeQcow2(p('lock.qcow2'), 4 * MiB);
    // qemu-io in interactive mode keeps the image open (and write-locked) until stdin closes.
    const holder = execa('qemu-io', ['-f', 'qcow2', held], { stdin: 'pipe', reject: false });
    try {
      await new Promise((r) => setTimeout(r, 500));
      const error = await qemuImg.info(held).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(HostCommandError);
      expect((error as HostCommandError).kind).toBe('busy');
      expect((error as HostCommandError).retryable).toBe(true);
      expect((await qemuImg.info(held, { forceShare: true })).virtualSize).toBe(4 * MiB);
    } finally {
      holder.stdin?.end('quit\n');
      await holder;
    }
  });

  it('classifies missing files, cancellation and timeouts', async () => {
    const missing = await qemuImg.info(p('nope.qcow2')).catch((e: unknown) => e);
    expect(missing).toMatchObject({ kind: 'not-found', code: 'HOST_NOT_FOUND' });
    expect((missing as HostCommandError).stderr).toMatch(/No such file/);
    expect((missing as HostCommandError).args.at(-1)).toBe(p('nope.qcow2'));

    const src = await makeQcow2(p('abort-src.qcow2'), 16 * MiB);
    const aborted = await qemuImg
      .convert({ source: src, target: p('abort-dst.qcow2'), signal: AbortSignal.abort() })
      .catch((e: unknown) => e);
    expect(aborted).toMatchObject({ kind: 'aborted', code: 'HOST_ABORTED' });

    const slow = new QemuImg({ timeoutMs: 1, exportTimeoutMs: 1 });
    const timedOut = await slow
      .convert({ source: src, target: p('timeout-dst.qcow2') })
      .catch((e: unknown) => e);
    expect(timedOut).toMatchObject({ kind: 'timeout', retryable: true });

    const absent = new QemuImg({ timeoutMs: 5_000, exportTimeoutMs: 5_000, binary: '/nonexistent/qemu-img' });
    expect(await absent.version().catch((e: unknown) => e)).toMatchObject({ kind: 'tool-missing' });
  });

  it('classifies a full target filesystem as no-space', async () => {
    const src = await makeQcow2(p('nospace-src.qcow2'), 16 * MiB);
    await writePattern(src, 0x77, 0, 8 * MiB);
    const small = p('small-fs');
    await mkdir(small);
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', small], { timeout: 10_000 });
    try {
      const error = await qemuImg
        .convert({ source: src, target: join(small, 'dst.qcow2') })
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(HostCommandError);
      expect(error).toMatchObject({ kind: 'no-space', code: 'HOST_NO_SPACE' });
      expect((error as HostCommandError).stderr).toMatch(/No space left/);
    } finally {
      await execa('umount', [small], { timeout: 10_000 });
    }
  });

  it('refuses bad paths and backing names before running anything', async () => {
    const calls: string[][] = [];
    const spied = new QemuImg({
      timeoutMs: 5_000,
      exportTimeoutMs: 5_000,
      run: (file, args, options) => {
        calls.push([file, ...args]);
        return runTool(file, args, options);
      },
    });
    const bad = [
      'relative.qcow2',
      '-o.qcow2',
      `${dir}/../escape.qcow2`,
      `${dir}/a\nb.qcow2`,
      `${dir}//double.qcow2`,
      'json:{"file.filename":"/etc/passwd"}',
      '',
    ];
    for (const path of bad) {
      await expect(spied.info(path)).rejects.toBeInstanceOf(ValidationError);
      await expect(spied.create({ path, sizeBytes: MiB })).rejects.toBeInstanceOf(ValidationError);
    }
    for (const file of ['nbd:localhost:10809', '-b', 'a b', "x'y", 'a;b', '$(reboot)', '']) {
      await expect(
        spied.create({
          path: p('never.qcow2'),
          backing: { file, format: 'qcow2' },
          unsafe: true,
          sizeBytes: MiB,
        }),
      ).rejects.toBeInstanceOf(ValidationError);
    }
    await expect(spied.create({ path: p('never.qcow2'), sizeBytes: -1 })).rejects.toMatchObject({
      code: 'INVALID_SIZE',
    });
    await expect(
      spied.convert({ source: p('x'), target: p('y'), tuning: { coroutines: 99 } }),
    ).rejects.toBeInstanceOf(ValidationError);
    expect(calls).toEqual([]);
    await expect(stat(p('never.qcow2'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
