// A shared VG as CloudStack CLVM_NG uses it: lvmlockd with sanlock (wdmd on softdog), one host (host_id 1).
// This worker gets its own lvm config dir (LVM_SYSTEM_DIR, use_lvmlockd = 1) so the other lab suites,
// running in parallel, keep plain local locking. softdog is loaded with soft_noboot=1: a watchdog that
// fires logs instead of resetting the lab guest.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FilePool } from '../../../src/host/file-pool.js';
import { Lvm } from '../../../src/host/lvm.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { layerHoldsWritesSince, writeLayerRecord } from '../../../src/snapshot/live-layers.js';
import { LvmVolumeBackend } from '../../../src/snapshot/volumes.js';
import { claimDisk, sh, uniqueName } from '../../support/lab/lab.js';

const MiB = 1024 * 1024;
const lvm = new Lvm({ timeoutMs: 120_000 });
const daemons: ResultPromise[] = [];
let configDir: string;
let disk: { disk: string; release(): void };
const vg = uniqueName('shvg');

async function startDaemon(file: string, args: string[], readyWhen: () => Promise<boolean>): Promise<void> {
  const daemon = execa(file, args, { reject: false, timeout: 15 * 60_000, all: true });
  daemons.push(daemon);
  const deadline = Date.now() + 60_000;
  while (!(await readyWhen())) {
    if (daemon.exitCode !== null || Date.now() > deadline) {
      throw new Error(`${file} did not start: ${(await daemon).all}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

const answers = (tool: string, args: string[]) => () =>
  execa(tool, args, { reject: false, timeout: 10_000 }).then((r) => r.exitCode === 0);

beforeAll(async () => {
  configDir = mkdtempSync(join(tmpdir(), 'lvm-lockd-'));
  const base = readFileSync('/etc/lvm/lvm.conf', 'utf8').replace('use_lvmlockd = 0', 'use_lvmlockd = 1');
  writeFileSync(join(configDir, 'lvm.conf'), base);
  writeFileSync(join(configDir, 'lvmlocal.conf'), 'local {\n\thost_id = 1\n}\n');
  process.env.LVM_SYSTEM_DIR = configDir;
  disk = claimDisk();

  await sh('modprobe', ['softdog', 'soft_noboot=1', 'soft_margin=60']);
  await startDaemon('wdmd', ['-D'], answers('wdmd', ['--dump']));
  await startDaemon(
    'sanlock',
    ['daemon', '-D', '-U', '0', '-G', '0'],
    answers('sanlock', ['client', 'status']),
  );
  await startDaemon('lvmlockd', ['-D', '-o', '2'], answers('lvmlockctl', ['--info']));
  const started = performance.now();
  await sh('vgcreate', ['-q', '--shared', '--locktype', 'sanlock', '-s', '4m', vg, disk.disk]);
  console.log(
    `vgcreate --shared (sanlock lockspace joined) took ${Math.round(performance.now() - started)} ms`,
  );
});

afterAll(async () => {
  try {
    // A shared VG is removed while its lockspace runs; vgremove stops it.
    await sh('vgremove', ['-q', '-y', '-ff', vg], { okExitCodes: [0, 5] });
    await sh('pvremove', ['-q', '-y', '-ff', disk.disk], { okExitCodes: [0, 5] });
  } finally {
    for (const daemon of daemons.reverse()) {
      daemon.kill('SIGTERM');
      await daemon;
    }
    disk?.release();
    delete process.env.LVM_SYSTEM_DIR;
    rmSync(configDir, { recursive: true, force: true });
  }
});

describe('shared VG with lvmlockd + sanlock', () => {
  it('reports the VG as shared', async () => {
    expect(await lvm.volumeGroup(vg)).toMatchObject({ shared: true, extentSizeBytes: 4 * MiB });
    expect((await sh('vgs', ['--noheadings', '-o', 'vg_lock_type', vg])).trim()).toBe('sanlock');
  });

  it('activates exclusively and shared, as a hypervisor does for volumes and templates', async () => {
    const lv = await lvm.createVolume({ vg, name: 'vol-1', sizeBytes: 8 * MiB });
    await lvm.activate(vg, 'vol-1', 'off');
    expect((await lvm.getVolume(vg, 'vol-1'))?.activeHere).toBe(false);

    await lvm.activate(vg, 'vol-1', 'exclusive');
    expect((await lvm.getVolume(vg, 'vol-1'))?.activeHere).toBe(true);
    // lvmlockd holds the LV's lock in ex mode while it is active exclusively.
    expect(await sh('lvmlockctl', ['--info'])).toMatch(/LK LV ex/);
    await sh('qemu-io', ['-f', 'raw', '-c', 'write -P 0x7e 0 1M', lv.path]);
    await lvm.activate(vg, 'vol-1', 'off');

    await lvm.activate(vg, 'vol-1', 'shared');
    expect((await lvm.getVolume(vg, 'vol-1'))?.activeHere).toBe(true);
    expect(await sh('lvmlockctl', ['--info'])).toMatch(/LK LV sh/);
    await sh('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x7e 0 1M', lv.path]);
    await lvm.activate(vg, 'vol-1', 'off');
    await lvm.removeVolume(vg, 'vol-1');
    expect(await lvm.getVolume(vg, 'vol-1')).toBeUndefined();
  });

  it('live-rotation layer LVs: created and activated exclusively, their record tag written, grown for a resize', async () => {
    const qemuImg = new QemuImg({ timeoutMs: 60_000, exportTimeoutMs: 120_000 });
    const filePool = new FilePool({ roots: [configDir], qemuImg, timeoutMs: 60_000 });
    const backend = new LvmVolumeBackend({ qemuImg, filePool, lvm }, vg, 'rot');
    const exclusively = async (name: string) =>
      (await sh('lvs', ['--noheadings', '-o', 'lv_active_exclusively', `${vg}/${name}`])).trim();
    const { fullyAllocatedBytes } = await qemuImg.measure({ sizeBytes: 16 * MiB });
    await lvm.createVolume({ vg, name: 'rot', sizeBytes: fullyAllocatedBytes });
    await qemuImg.create({ path: backend.activePath, sizeBytes: 16 * MiB });

    // The new layer: a thick LV of the volume's full size, active here exclusively, a QCOW2 on the base.
    await backend.createOverlay('rot.lr-a', { file: backend.activePath, format: 'qcow2' }, 16 * MiB);
    expect(await exclusively('rot.lr-a')).toBe('active exclusively');
    expect((await lvm.getVolume(vg, 'rot.lr-a'))?.sizeBytes).toBe(
      (await lvm.getVolume(vg, 'rot'))?.sizeBytes,
    );
    expect((await qemuImg.info(backend.pathOf('rot.lr-a'))).fullBackingFile).toBe(backend.activePath);

    // The layer record is a tag in the shared VG's metadata (through lvmlockd's VG lock).
    await writeLayerRecord(backend, 'rot.lr-a', '/store/vol/snap-1');
    await writeLayerRecord(backend, 'rot.lr-a', '/store/vol/snap-2'); // replaces the first
    expect(await layerHoldsWritesSince(backend, 'rot.lr-a', '/store/vol/snap-2')).toBe(true);
    expect(await layerHoldsWritesSince(backend, 'rot.lr-a', '/store/vol/snap-1')).toBe(false);
    expect((await lvm.getVolume(vg, 'rot.lr-a'))?.tags).toHaveLength(1);

    // A layer found inactive (another host had it) is activated exclusively before use.
    await lvm.activate(vg, 'rot.lr-a', 'off');
    await backend.ensureActive('rot.lr-a');
    expect(await exclusively('rot.lr-a')).toBe('active exclusively');

    // volume.resize's LV step: both LVs grow for a fully allocated QCOW2 of the new size.
    const grown = await backend.growLayers([backend.activePath, backend.pathOf('rot.lr-a')], 32 * MiB);
    const needed = (await qemuImg.measure({ sizeBytes: 32 * MiB })).fullyAllocatedBytes;
    expect(grown.map((g) => g.sizeBytes >= needed)).toEqual([true, true]);

    for (const name of ['rot.lr-a', 'rot']) {
      await lvm.activate(vg, name, 'off');
      await lvm.removeVolume(vg, name);
    }
  });
});
