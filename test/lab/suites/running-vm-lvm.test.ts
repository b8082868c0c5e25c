// A running VM on an LVM volume (inside the lab guest): a bare QEMU (`-machine none`, TCG) holds the
// QCOW2-on-LV through -blockdev nodes and a QMP socket, like libvirt's QEMU does on a hypervisor.
// Guest writes go through HMP `qemu-io <node>`; reads are done outside QEMU with -U (force share).
// Covers the lvm-cow path (docs/strategies.md) and live rotation on real LVM, including the
// order of steps that live rotation needs on LVM (see docs/lab.md "Findings").
import { mkdirSync, mkdtempSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LvmVolumeInUseError } from '../../../src/errors/index.js';
import { Lvm } from '../../../src/host/lvm.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { dmNode, heldDmDevices, QmpClient, type ScratchVg, scratchVg, sh } from '../../support/lab/lab.js';

const MiB = 1024 * 1024;
const VIRTUAL = 32 * MiB;
const lvm = new Lvm({ timeoutMs: 60_000 });
const qemuImg = new QemuImg({ timeoutMs: 60_000, exportTimeoutMs: 120_000 });
let scratch: ScratchVg;
let vg: string;
let work: string;
const vms: Vm[] = [];

interface Vm {
  process: ResultPromise;
  qmp: QmpClient;
}

beforeAll(async () => {
  scratch = await scratchVg('vmvg');
  vg = scratch.vg;
  work = mkdtempSync(join(tmpdir(), 'vm-'));
});
afterAll(async () => {
  for (const vm of vms) {
    vm.qmp.close();
    vm.process.kill('SIGKILL');
    await vm.process;
  }
  rmSync(work, { recursive: true, force: true });
  await scratch?.cleanup();
});

/** Starts QEMU with one QCOW2 disk on `device` (format node `fmt`, protocol node `file`). */
async function startVm(device: string, name: string): Promise<Vm> {
  const socket = join(work, `${name}.qmp`);
  const started = performance.now();
  const blockdev = {
    driver: 'qcow2',
    'node-name': 'fmt',
    file: { driver: 'host_device', filename: device, 'node-name': 'file', cache: { direct: true } },
  };
  const process = execa(
    'qemu-system-x86_64',
    ['-machine', 'none', '-nodefaults', '-display', 'none', '-accel', 'tcg'].concat([
      '-qmp',
      `unix:${socket},server=on,wait=off`,
      '-blockdev',
      JSON.stringify(blockdev),
    ]),
    { reject: false, timeout: 15 * 60_000 },
  );
  const qmp = await QmpClient.connect(socket);
  console.log(`QEMU -machine none up with QMP in ${Math.round(performance.now() - started)} ms`);
  const vm = { process, qmp };
  vms.push(vm);
  return vm;
}

async function stopVm(vm: Vm): Promise<void> {
  await vm.qmp.execute('quit');
  await vm.process;
  vm.qmp.close();
  vms.splice(vms.indexOf(vm), 1);
}

async function readPattern(image: string, pattern: string, offset: string, length: string): Promise<void> {
  await sh('qemu-io', ['-r', '-U', '-f', 'qcow2', '-c', `read -P ${pattern} ${offset} ${length}`, image]);
}

/** A guest write through QEMU, flushed so readers outside QEMU see it. */
async function guestWrite(
  vm: Vm,
  node: string,
  pattern: string,
  offset: string,
  length: string,
): Promise<void> {
  await vm.qmp.hmp(`qemu-io ${node} "write -P ${pattern} ${offset} ${length}"`);
  await vm.qmp.hmp(`qemu-io ${node} "flush"`);
}

/** A QCOW2 volume LV whose image is an overlay on a template file (as CloudStack volumes are). */
async function templatedVolume(name: string): Promise<string> {
  const template = join(work, `${name}-template.qcow2`);
  await qemuImg.create({ path: template, sizeBytes: VIRTUAL });
  await sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 1M', template]);
  const { fullyAllocatedBytes } = await qemuImg.measure({ sizeBytes: VIRTUAL });
  const lv = await lvm.createVolume({ vg, name, sizeBytes: fullyAllocatedBytes });
  await qemuImg.create({ path: lv.path, backing: { file: template, format: 'qcow2' } });
  return lv.path;
}

describe('running VM on an LVM volume', () => {
  let disk: string;
  let vm: Vm;
  const store = join(tmpdir(), `store-${process.pid}`);

  it('starts QEMU on the QCOW2-on-LV; lvs sees the LV open', async () => {
    disk = await templatedVolume('vm-disk');
    vm = await startVm(disk, 'vm1');
    expect(await lvm.getVolume(vg, 'vm-disk')).toMatchObject({ open: true, activeHere: true });
    await guestWrite(vm, 'fmt', '0x22', '1M', '1M');
    await readPattern(disk, '0x22', '1M', '1M');
    await expect(lvm.removeVolume(vg, 'vm-disk')).rejects.toBeInstanceOf(LvmVolumeInUseError);
  });

  it('lvm-cow: snapshots the held LV, exports it while the VM writes, re-points with QMP in a short pause', async () => {
    const cow = await lvm.createSnapshot({ vg, origin: 'vm-disk', name: 'vm-disk-cow', sizeBytes: 8 * MiB });
    await guestWrite(vm, 'fmt', '0x33', '0', '1M');
    rmSync(store, { recursive: true, force: true });
    mkdirSync(store);
    const part = join(store, '.snap-1.part');
    await qemuImg.convert({ source: cow.path, target: part, forceShare: true });
    const after = await lvm.getVolume(vg, 'vm-disk-cow');
    expect(after?.snapshotInvalid).toBe(false);
    expect(after?.snapshotPercent).toBeGreaterThan(0);
    const snap1 = join(store, 'snap-1');
    renameSync(part, snap1);
    await readPattern(snap1, '0x11', '0', '1M');
    await readPattern(snap1, '0x22', '1M', '1M');
    expect((await qemuImg.compare(cow.path, snap1, { forceShare: true })).identical).toBe(true);
    await lvm.removeVolume(vg, 'vm-disk-cow');

    const paused = performance.now();
    await vm.qmp.execute('stop');
    try {
      await vm.qmp.execute('change-backing-file', {
        device: 'fmt',
        'image-node-name': 'fmt',
        'backing-file': snap1,
      });
    } finally {
      await vm.qmp.execute('cont');
    }
    console.log(
      `paused for ${(performance.now() - paused).toFixed(1)} ms (stop + change-backing-file + cont)`,
    );
    const [top] = await qemuImg.chain(disk, { forceShare: true });
    expect(top?.backingFile).toBe(snap1);
    await guestWrite(vm, 'fmt', '0x44', '2M', '1M');
    await readPattern(disk, '0x33', '0', '1M');
    await readPattern(disk, '0x44', '2M', '1M');
    expect((await qemuImg.check(disk, { forceShare: true })).ok).toBe(true);
  });

  it('live rotation: new overlay LV switched in BEFORE the renames, frozen layer exported', async () => {
    const frozen = `/dev/${vg}/vm-disk-frozen`;
    const frozenDm = dmNode(disk);
    // 1. New LV under a temporary name; its header already names the frozen layer's final path.
    const { fullyAllocatedBytes } = await qemuImg.measure({ sizeBytes: VIRTUAL });
    const overlay = await lvm.createVolume({ vg, name: 'vm-disk-next', sizeBytes: fullyAllocatedBytes });
    await qemuImg.create({
      path: overlay.path,
      sizeBytes: VIRTUAL,
      backing: { file: frozen, format: 'qcow2' },
      unsafe: true,
    });
    const overlayDm = dmNode(overlay.path);
    // 2. Switch QEMU's writes. blockdev-snapshot reopens the old layer read-only BY ITS PATH: it must still
    // name the old LV now. The overlay is added by its /dev/dm-N node, which survives renames.
    await vm.qmp.execute('blockdev-add', {
      driver: 'qcow2',
      'node-name': 'ovl-fmt',
      backing: null,
      file: { driver: 'host_device', filename: overlayDm, 'node-name': 'ovl-file', cache: { direct: true } },
    });
    const switched = performance.now();
    await vm.qmp.execute('blockdev-snapshot', { node: 'fmt', overlay: 'ovl-fmt' });
    console.log(`blockdev-snapshot took ${(performance.now() - switched).toFixed(1)} ms (no pause)`);
    // 3. Renames: QEMU keeps its open devices.
    await lvm.renameVolume(vg, 'vm-disk', 'vm-disk-frozen');
    await lvm.renameVolume(vg, 'vm-disk-next', 'vm-disk');
    expect(new Set(heldDmDevices(vm.process.pid))).toEqual(new Set([frozenDm, overlayDm]));
    expect(await lvm.getVolume(vg, 'vm-disk')).toMatchObject({ open: true });
    expect(await lvm.getVolume(vg, 'vm-disk-frozen')).toMatchObject({ open: true });
    await expect(lvm.removeVolume(vg, 'vm-disk-frozen')).rejects.toBeInstanceOf(LvmVolumeInUseError);

    await guestWrite(vm, 'ovl-fmt', '0x55', '3M', '1M');
    await readPattern(disk, '0x55', '3M', '1M');
    // 4. The frozen layer no longer changes: its delta over snap-1 exports consistently.
    const snap2 = join(store, 'snap-2');
    await qemuImg.convert({
      source: frozen,
      target: snap2,
      forceShare: true,
      backing: { file: 'snap-1', format: 'qcow2' },
    });
    expect((await qemuImg.compare(frozen, snap2, { forceShare: true })).identical).toBe(true);
    await readPattern(snap2, '0x44', '2M', '1M');
    expect((await qemuImg.check(snap2)).ok).toBe(true);

    // After QEMU quits, the live chain (volume LV → frozen LV → snap-1) reads every write.
    await stopVm(vm);
    expect((await lvm.getVolume(vg, 'vm-disk-frozen'))?.open).toBe(false);
    const chain = await qemuImg.chain(disk);
    expect(chain.map((c) => c.filename)).toEqual([disk, frozen, join(store, 'snap-1')]);
    for (const [pattern, offset] of [
      ['0x33', '0'],
      ['0x22', '1M'],
      ['0x44', '2M'],
      ['0x55', '3M'],
    ] as const) {
      await readPattern(disk, pattern, offset, '1M');
    }
    expect((await qemuImg.check(disk)).ok).toBe(true);
    rmSync(store, { recursive: true, force: true });
  });

  it('renaming BEFORE blockdev-snapshot makes QEMU reopen the new LV as the backing (the hazard)', async () => {
    const path = await templatedVolume('hz-disk');
    const hz = await startVm(path, 'vm2');
    const oldDm = dmNode(path);
    await lvm.renameVolume(vg, 'hz-disk', 'hz-disk-frozen');
    const { fullyAllocatedBytes } = await qemuImg.measure({ sizeBytes: VIRTUAL });
    const next = await lvm.createVolume({ vg, name: 'hz-disk', sizeBytes: fullyAllocatedBytes });
    await qemuImg.create({
      path: next.path,
      sizeBytes: VIRTUAL,
      backing: { file: `/dev/${vg}/hz-disk-frozen`, format: 'qcow2' },
      unsafe: true,
    });
    await hz.qmp.execute('blockdev-add', {
      driver: 'qcow2',
      'node-name': 'ovl-fmt',
      backing: null,
      file: { driver: 'host_device', filename: next.path, 'node-name': 'ovl-file', cache: { direct: true } },
    });
    await hz.qmp.execute('blockdev-snapshot', { node: 'fmt', overlay: 'ovl-fmt' });
    // The old layer's read-only reopen went by path to the NEW LV: the frozen LV is no longer held.
    const held = heldDmDevices(hz.process.pid);
    expect(held).not.toContain(oldDm);
    expect(held.every((d) => d === dmNode(next.path))).toBe(true);
    expect((await lvm.getVolume(vg, 'hz-disk-frozen'))?.open).toBe(false);
    await stopVm(hz);
  });
});
