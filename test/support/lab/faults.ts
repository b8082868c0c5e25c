// Fault-injecting block devices for the lab suites (inside the lab guest, as root): a device-mapper
// device over a slice of a scratch disk whose table is reloaded mid-job to fail or slow its I/O.
//
//   ok         linear                                    every I/O goes through
//   eio        error                                     every read and write fails with EIO
//   eio-read   flakey, always down, no feature           reads fail with EIO, writes go through
//   eio-write  flakey, always down, error_writes         writes fail with EIO, reads go through
//   slow       delay <ms>                                every I/O waits (a slow store)
//
// The slice starts 1 MiB into the disk, so an LVM label written on the device is not seen on the
// raw disk under it (LVM would otherwise find the same PV twice).
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { execa } from 'execa';
import { sh, uniqueName } from './lab.js';

export type FaultMode = 'ok' | 'eio' | 'eio-read' | 'eio-write' | 'slow';

const SECTOR = 512;
const DMSETUP_TIMEOUT_MS = 60_000;

/** Loads the device-mapper targets and file system the fault suites use (once per guest; idempotent). */
export async function loadFaultModules(): Promise<void> {
  await sh('modprobe', ['-a', 'dm-flakey', 'dm-delay', 'dm-log-writes', 'ext4', 'crc32c_generic']);
}

/**
 * Drops the guest's clean page cache, so the next reads reach the (faulty) device. Page cache only
 * (1, not 3): 3 also runs the slab shrinkers, and a shrinker that evicts an inode of the NFS suite's
 * store while its server is stopped waits for that server holding the shrinker lock, which nfsd
 * needs to start again (register_shrinker): the guest's NFS deadlocks for good.
 */
export function dropCaches(): void {
  writeFileSync('/proc/sys/vm/drop_caches', '1');
}

export class FaultyDevice {
  mode: FaultMode = 'ok';

  private constructor(
    readonly name: string,
    private readonly base: string,
    private readonly offsetSectors: number,
    private readonly sizeSectors: number,
    private readonly delayMs: number,
  ) {}

  get path(): string {
    return `/dev/mapper/${this.name}`;
  }

  /** A linear device over `sizeBytes` of `base` from `offsetBytes` (defaults: 1 MiB in). */
  static async create(
    prefix: string,
    base: string,
    sizeBytes: number,
    opts: { offsetBytes?: number; delayMs?: number } = {},
  ): Promise<FaultyDevice> {
    const device = new FaultyDevice(
      uniqueName(prefix),
      base,
      (opts.offsetBytes ?? 1024 * 1024) / SECTOR,
      sizeBytes / SECTOR,
      opts.delayMs ?? 300,
    );
    await sh('dmsetup', ['create', '--noudevsync', device.name, '--table', device.table('ok')]);
    // No udev in the guest: dmsetup makes the /dev/mapper node itself.
    await sh('dmsetup', ['mknodes', device.name]);
    return device;
  }

  private table(mode: FaultMode): string {
    const range = `0 ${this.sizeSectors}`;
    const at = `${this.base} ${this.offsetSectors}`;
    switch (mode) {
      case 'ok':
        return `${range} linear ${at}`;
      case 'eio':
        return `${range} error`;
      case 'eio-read':
        return `${range} flakey ${at} 0 1`;
      case 'eio-write':
        return `${range} flakey ${at} 0 1 1 error_writes`;
      case 'slow':
        return `${range} delay ${at} ${this.delayMs}`;
    }
  }

  private argvs(mode: FaultMode): string[][] {
    // --nolockfs: the file system on top is not frozen and synced first (a disk fails without notice).
    return [
      ['suspend', '--nolockfs', '--noudevsync', this.name],
      ['load', this.name, '--table', this.table(mode)],
      ['resume', '--nolockfs', '--noudevsync', this.name],
    ];
  }

  /** Reloads the table with `mode`, then drops the page cache so reads see the device. */
  async set(mode: FaultMode): Promise<void> {
    for (const args of this.argvs(mode)) await sh('dmsetup', args);
    this.mode = mode;
    dropCaches();
  }

  /** `set` for synchronous callers (a job's progress callback): blocks the event loop, not the job's tools. */
  setSync(mode: FaultMode): void {
    for (const args of this.argvs(mode)) {
      execFileSync('dmsetup', args, { timeout: DMSETUP_TIMEOUT_MS, stdio: ['ignore', 'ignore', 'pipe'] });
    }
    this.mode = mode;
    dropCaches();
  }

  async remove(): Promise<void> {
    await sh('dmsetup', ['remove', '--noudevsync', '--retry', this.name], { okExitCodes: [0, 1] });
  }
}

/**
 * A store root on a faulty device: ext4 without a journal, `errors=continue`, so a write error
 * does not turn the whole file system read-only (a journaled ext4 aborts its journal); after a fault
 * `repair()` unmounts, runs e2fsck and mounts again, so later checks read what the disk holds.
 */
export class FaultyStore {
  private filler: string;

  private constructor(
    readonly device: FaultyDevice,
    readonly mountPoint: string,
  ) {
    this.filler = `${mountPoint}/.filler`;
  }

  static async create(base: string, sizeBytes: number, offsetBytes: number): Promise<FaultyStore> {
    const device = await FaultyDevice.create('fstore', base, sizeBytes, { offsetBytes });
    await sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-O', '^has_journal', '-m', '0', device.path]);
    const mountPoint = `/tmp/${device.name}`;
    mkdirSync(mountPoint, { recursive: true });
    const store = new FaultyStore(device, mountPoint);
    await store.mount();
    return store;
  }

  private async mount(): Promise<void> {
    await sh('mount', ['-t', 'ext4', '-o', 'errors=continue', this.device.path, this.mountPoint]);
  }

  /** Fills the file system but `leaveBytes` (the next large write gets ENOSPC). */
  async fill(leaveBytes = 256 * 1024): Promise<void> {
    const fs = statfsSync(this.mountPoint);
    const bytes = Math.max(0, fs.bavail * fs.bsize - leaveBytes);
    await sh('fallocate', ['-l', String(bytes), this.filler]);
  }

  async unfill(): Promise<void> {
    rmSync(this.filler, { force: true });
  }

  /** Fault off, unmount, e2fsck -fy, mount again. Returns e2fsck's exit code (0 clean, 1 fixed). */
  async repair(): Promise<number> {
    await this.device.set('ok');
    await sh('umount', [this.mountPoint]);
    const result = await execa('e2fsck', ['-f', '-y', this.device.path], {
      reject: false,
      timeout: DMSETUP_TIMEOUT_MS,
    });
    if ((result.exitCode ?? 8) > 1) {
      throw new Error(
        `e2fsck ${this.device.path} exited ${result.exitCode}: ${result.stdout}${result.stderr}`,
      );
    }
    await this.mount();
    return result.exitCode ?? 0;
  }

  async remove(): Promise<void> {
    await sh('umount', [this.mountPoint], { okExitCodes: [0, 1] });
    rmSync(this.mountPoint, { recursive: true, force: true });
    await this.device.remove();
  }
}

/** A VG on a faulty device (its only PV), for pool faults. */
export class FaultyPool {
  private constructor(
    readonly device: FaultyDevice,
    readonly vg: string,
  ) {}

  static async create(base: string, sizeBytes: number, offsetBytes: number): Promise<FaultyPool> {
    const device = await FaultyDevice.create('fpool', base, sizeBytes, { offsetBytes });
    const vg = uniqueName('faultvg');
    await sh('pvcreate', ['-q', '-y', '-ff', device.path]);
    await sh('vgcreate', ['-q', '-s', '4m', vg, device.path]);
    return new FaultyPool(device, vg);
  }

  /** Takes every free extent with one LV (the next lvcreate gets "insufficient free space"). */
  async fill(): Promise<void> {
    await sh('lvcreate', ['-q', '-y', '-an', '-Zn', '-l', '100%FREE', '-n', 'filler', this.vg]);
  }

  async unfill(): Promise<void> {
    await sh('lvremove', ['-q', '-y', `${this.vg}/filler`], { okExitCodes: [0, 5] });
  }

  async remove(): Promise<void> {
    await this.device.set('ok').catch(() => undefined);
    await sh('vgchange', ['-q', '-an', this.vg], { okExitCodes: [0, 5] });
    await sh('vgremove', ['-q', '-f', this.vg], { okExitCodes: [0, 5] });
    await sh('pvremove', ['-q', '-y', '-ff', this.device.path], { okExitCodes: [0, 5] });
    await this.device.remove();
  }
}
