// The live-rotation building blocks (docs/strategies.md, live-rotate) at adapter level, on real libvirt + QEMU,
// for file disks and loop-device block disks: switch writes to a new overlay (libvirt external
// snapshot, or blockdev-add + blockdev-snapshot), export the frozen layer, then re-point the live
// overlay at the export with blockdev-add + blockdev-reopen + change-backing-file + blockdev-del.
// Guest data is written inside QEMU and checked outside it with qemu-io / qemu-img compare.
import { mkdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type BlockNode, Libvirt, qcow2Blockdev, reopenWithBacking } from '../../../src/host/libvirt.js';
import {
  assertLibvirtReady,
  Cleanup,
  checkImage,
  expectedImage,
  expectPattern,
  guestFlush,
  guestWrite,
  imageInfo,
  imagesIdentical,
  LIBVIRT_URI,
  makeDisk,
  makeTempDir,
  startTestDomain,
  sweepStaleTestResources,
  type TestDisk,
  type TestDomain,
} from '../../support/libvirt-fixtures.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE_MIB = 16;

interface Write {
  pattern: number;
  offset: number;
  length: number;
}

const libvirt = new Libvirt({ uri: LIBVIRT_URI, timeoutMs: 30_000 });

async function write(dom: TestDomain, done: Write[], w: Write): Promise<void> {
  await guestWrite(dom, w.pattern, w.offset, w.length);
  done.push(w);
}

let expectedCount = 0;

/** The guest-visible content of `image` equals a fresh image with `writes` applied, and it checks clean. */
async function expectContent(dir: string, image: string, writes: Write[]): Promise<void> {
  expectedCount += 1;
  const expected = join(dir, `expected-${expectedCount}.qcow2`);
  await expectedImage(expected, SIZE_MIB, writes);
  expect(await imagesIdentical(image, expected), `${image} vs ${writes.length} writes`).toBe(true);
  for (const w of writes.slice(-2)) await expectPattern(image, w.pattern, w.offset, w.length);
}

/** Export of a frozen layer to the store, as the agent does it: full, or a delta over `parent`. */
async function exportLayer(frozen: string, output: string, parent?: string): Promise<void> {
  const base = parent === undefined ? [] : ['-B', parent, '-F', 'qcow2'];
  await execa('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'qcow2', ...base, frozen, output]);
}

/** A new empty overlay (file in dir, or a loop device) whose header names `backing`. */
async function newOverlay(
  cleanup: Cleanup,
  dir: string,
  type: TestDisk['type'],
  backing: string,
  name: string,
) {
  return makeDisk(cleanup, { dir, type, sizeMiB: SIZE_MIB, backing, name });
}

/** Re-points `top` at the exported store file and closes the old frozen layer: §2.3 step 4. */
async function repointAtStore(
  dom: TestDomain,
  top: BlockNode,
  frozen: BlockNode,
  store: { file: string; nodeName: string; parentNode: string | null },
): Promise<void> {
  await libvirt.blockdevAdd(
    dom.name,
    qcow2Blockdev({
      nodeName: store.nodeName,
      filename: store.file,
      sourceType: 'file',
      readOnly: true,
      backing: store.parentNode,
    }),
  );
  await libvirt.blockdevReopen(dom.name, [reopenWithBacking(top, store.nodeName)]);
  await libvirt.changeBackingFile(dom.name, {
    device: top.nodeName,
    imageNodeName: top.nodeName,
    backingFile: store.file,
  });
  await libvirt.blockdevDelLayer(dom.name, frozen);
}

describe.each(['file', 'block'] as const)('live rotation with a %s disk', (type) => {
  let cleanup = new Cleanup();

  beforeAll(async () => {
    await assertLibvirtReady();
    await sweepStaleTestResources();
  });

  afterEach(async () => {
    const current = cleanup;
    cleanup = new Cleanup();
    await current.run();
  });

  it('switches writes with a libvirt external snapshot (reuse-external), then re-points at the export', async () => {
    const dir = await makeTempDir(cleanup, `extsnap_${type}`);
    const store = join(dir, 'store');
    await mkdir(store);
    const active = await makeDisk(cleanup, { dir, type, sizeMiB: SIZE_MIB, name: 'active.qcow2' });
    const dom = await startTestDomain(cleanup, { label: `extsnap_${type}`, disk: active });
    const writes: Write[] = [];

    expect(await libvirt.disks(dom.name)).toEqual([
      { type, device: 'disk', target: 'vda', source: active.path },
    ]);
    await write(dom, writes, { pattern: 0x11, offset: 0, length: 128 * KiB });
    await write(dom, writes, { pattern: 0x12, offset: MiB, length: 64 * KiB });

    const overlay = await newOverlay(cleanup, dir, type, active.path, 'overlay.qcow2');
    await libvirt.externalSnapshot(dom.name, { target: 'vda', file: overlay.path, sourceType: type });

    expect(await libvirt.disks(dom.name)).toEqual([
      { type, device: 'disk', target: 'vda', source: overlay.path },
    ]);
    const chain = await libvirt.diskChain(dom.name, 'vda');
    expect(chain.map((n) => [n.filename, n.readOnly, n.fileDriver])).toEqual([
      [overlay.path, false, type === 'block' ? 'host_device' : 'file'],
      [active.path, true, type === 'block' ? 'host_device' : 'file'],
    ]);
    expect(chain[0]?.backingFilename).toBe(active.path);
    expect((await imageInfo(overlay.path))['backing-filename']).toBe(active.path);

    // New writes land in the overlay; the frozen layer holds exactly the writes before the switch.
    const beforeSwitch = [...writes];
    await write(dom, writes, { pattern: 0x21, offset: 64 * KiB, length: 128 * KiB });
    await guestFlush(dom);
    await expectContent(dir, active.path, beforeSwitch);
    await expectContent(dir, overlay.path, writes);

    const snap1 = join(store, 'snap-1');
    await exportLayer(active.path, snap1);
    await expectContent(dir, snap1, beforeSwitch);

    const [top, frozen] = chain as [BlockNode, BlockNode];
    await repointAtStore(dom, top, frozen, { file: snap1, nodeName: 'store-snap-1', parentNode: null });

    const after = await libvirt.diskChain(dom.name, 'vda');
    expect(after.map((n) => [n.nodeName, n.filename, n.readOnly])).toEqual([
      [top.nodeName, overlay.path, false],
      ['store-snap-1', snap1, true],
    ]);
    expect((await imageInfo(overlay.path))['backing-filename']).toBe(snap1);
    await write(dom, writes, { pattern: 0x31, offset: 2 * MiB, length: 64 * KiB });
    await guestFlush(dom);
    await expectContent(dir, overlay.path, writes);
    await checkImage(overlay.path);
    expect(await libvirt.domainState(dom.name)).toEqual({ state: 'running', reason: 'booted' });
  });

  it('switches writes to an overlay passed as an fdset; the old layer survives renaming its path', async () => {
    const dir = await makeTempDir(cleanup, `fdset_${type}`);
    const active = await makeDisk(cleanup, { dir, type, sizeMiB: SIZE_MIB, name: 'vol.qcow2' });
    const dom = await startTestDomain(cleanup, { label: `fdset_${type}`, disk: active });
    const writes: Write[] = [];
    await write(dom, writes, { pattern: 0x41, offset: 0, length: 128 * KiB });
    const frozenPath = join(dir, 'vol.qcow2.frozen');
    // Block devices made after the VM started are not in its private /dev: the fdset reaches them anyway.
    const overlay = await newOverlay(
      cleanup,
      dir,
      type,
      type === 'file' ? frozenPath : active.path,
      'vol.qcow2.next',
    );
    const [top] = await libvirt.diskChain(dom.name, 'vda');
    if (!top) throw new Error('no top node');

    const fdsetId = await libvirt.addFdset(dom.name, overlay.path, 'test:next');
    expect(await libvirt.fdsets(dom.name)).toContainEqual({ fdsetId, opaque: ['test:next', 'test:next'] });
    await libvirt.blockdevAdd(
      dom.name,
      qcow2Blockdev({
        nodeName: 'next',
        filename: `/dev/fdset/${fdsetId}`,
        sourceType: type,
        backing: null,
        ...(top.cache === undefined ? {} : { cache: top.cache }),
      }),
    );
    await libvirt.blockdevSnapshot(dom.name, { node: top.nodeName, overlay: 'next' });
    const frozenWrites = [...writes];
    if (type === 'file') {
      // The switch reopened the old layer by its path; from now on renames do not reach QEMU.
      await rename(active.path, frozenPath);
      await rename(overlay.path, active.path);
    }
    await write(dom, writes, { pattern: 0x42, offset: MiB, length: 128 * KiB });
    await guestFlush(dom);

    const chain = await libvirt.diskChain(dom.name, 'vda');
    expect(chain.map((n) => [n.nodeName, n.filename])).toEqual([
      ['next', `/dev/fdset/${fdsetId}`],
      [top.nodeName, top.filename],
    ]);
    // libvirt never saw the switch: it still names the volume's path.
    expect((await libvirt.disks(dom.name)).map((d) => d.source)).toEqual([active.path]);
    const live = type === 'file' ? active.path : overlay.path;
    await expectContent(dir, live, writes);
    await expectContent(dir, type === 'file' ? frozenPath : active.path, frozenWrites);
    expect(await libvirt.domainState(dom.name)).toEqual({ state: 'running', reason: 'booted' });
  });

  it('runs two rounds of switch (blockdev-snapshot or external snapshot) + export + blockdev-add + reopen + change-backing-file + blockdev-del', async () => {
    const dir = await makeTempDir(cleanup, `rotate_${type}`);
    const store = join(dir, 'store');
    await mkdir(store);
    const active = await makeDisk(cleanup, { dir, type, sizeMiB: SIZE_MIB, name: 'active-0.qcow2' });
    const dom = await startTestDomain(cleanup, { label: `rotate_${type}`, disk: active });
    const writes: Write[] = [];
    await write(dom, writes, { pattern: 0x11, offset: 0, length: 128 * KiB });
    await write(dom, writes, { pattern: 0x12, offset: 3 * MiB, length: 64 * KiB });

    let parent: { file: string; nodeName: string } | null = null;
    for (const round of [1, 2]) {
      const [top] = await libvirt.diskChain(dom.name, 'vda');
      if (!top) throw new Error('no top node');

      // §2.3 step 2: new empty overlay on top of the running layer; writes go there from now on.
      // A file overlay is opened with QMP blockdev-add + blockdev-snapshot. A block device created
      // after the domain started is not in QEMU's private /dev (libvirt's mount namespace), so a
      // block overlay goes through libvirt, which creates the node there.
      const overlay = await newOverlay(cleanup, dir, type, top.filename, `active-${round}.qcow2`);
      let overlayNode: string;
      if (type === 'file') {
        overlayNode = `overlay-${round}`;
        await libvirt.blockdevAdd(
          dom.name,
          qcow2Blockdev({ nodeName: overlayNode, filename: overlay.path, sourceType: type, backing: null }),
        );
        await libvirt.blockdevSnapshot(dom.name, { node: top.nodeName, overlay: overlayNode });
      } else {
        await libvirt.externalSnapshot(dom.name, { target: 'vda', file: overlay.path, sourceType: type });
        overlayNode = (await libvirt.diskChain(dom.name, 'vda'))[0]?.nodeName ?? 'missing';
      }
      const switched = await libvirt.diskChain(dom.name, 'vda');
      expect(switched[0]).toMatchObject({ nodeName: overlayNode, filename: overlay.path, readOnly: false });
      expect(switched[1]).toMatchObject({ nodeName: top.nodeName, filename: top.filename });

      const frozenWrites = [...writes];
      await write(dom, writes, { pattern: 0x20 + round, offset: (64 + round * 32) * KiB, length: 96 * KiB });
      await guestFlush(dom);

      // §2.3 step 3: export the frozen layer (full, then a delta with a RELATIVE backing name).
      const snap = join(store, `snap-${round}`);
      await exportLayer(top.filename, snap, parent === null ? undefined : `snap-${round - 1}`);
      await expectContent(dir, snap, frozenWrites);
      if (parent !== null) expect((await imageInfo(snap))['backing-filename']).toBe(`snap-${round - 1}`);

      // §2.3 step 4: re-point the live overlay at the export; close the frozen layer.
      const [liveTop, frozen] = switched as [BlockNode, BlockNode];
      const snapNode = `store-snap-${round}`;
      await repointAtStore(dom, liveTop, frozen, {
        file: snap,
        nodeName: snapNode,
        parentNode: parent?.nodeName ?? null,
      });
      parent = { file: snap, nodeName: snapNode };

      const chain = await libvirt.diskChain(dom.name, 'vda');
      expect(chain.map((n) => n.nodeName)).toEqual([
        overlayNode,
        ...Array.from({ length: round }, (_, i) => `store-snap-${round - i}`),
      ]);
      expect(chain.slice(1).every((n) => n.readOnly)).toBe(true);
      const names = (
        await libvirt.qmp<Array<{ 'node-name': string }>>(dom.name, 'query-named-block-nodes', { flat: true })
      ).map((n) => n['node-name']);
      expect(names).not.toContain(frozen.nodeName);
      expect(names).not.toContain(frozen.fileNodeName);
      expect((await imageInfo(overlay.path))['backing-filename']).toBe(snap);

      await write(dom, writes, { pattern: 0x30 + round, offset: (4 + round) * MiB, length: 64 * KiB });
      await guestFlush(dom);
      await expectContent(dir, overlay.path, writes);
      await checkImage(overlay.path);
      await checkImage(snap);
    }
    // The delta holds only what changed after round 1: the 0x12 cluster at 3 MiB comes from snap-1.
    const map = await execa('qemu-img', ['map', '-U', '--output=json', join(store, 'snap-2')]);
    const at3MiB = (JSON.parse(map.stdout) as Array<{ start: number; length: number; depth: number }>).find(
      (e) => e.start <= 3 * MiB && 3 * MiB < e.start + e.length,
    );
    expect(at3MiB?.depth).toBe(1);
    // No pause at any point.
    expect(await libvirt.domainState(dom.name)).toEqual({ state: 'running', reason: 'booted' });
  });
});
