// A stand-in for the LVM adapter on this host, which has no device-mapper: each "LV" is a sparse
// file on a loop device (a real block device), named `/dev/<vg>/<lv>` by a symlink as LVM names its
// LVs. libvirt and QEMU then see block devices under LVM-like paths (libvirt copies the symlink and
// the device into the domain's private /dev), so the block-device side of live rotation runs for
// real; LVM itself (lvcreate, lvextend, tags, activation) is proven in the lab suite
// test/lab/suites/live-rotate-lvm.test.ts. Implements the Lvm methods LvmVolumeBackend, the
// live-rotate strategy and volume.resize call; it is a test double, not agent code.
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, readlink, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { LvmVolumeInUseError, LvmVolumeNotFoundError } from '../../src/errors/index.js';
import type { LogicalVolume, Lvm, VolumeGroup } from '../../src/host/lvm.js';
import { type FlushHandle, openFlushHandle } from '../../src/host/rooted-files.js';
import type { Cleanup } from './libvirt-fixtures.js';

const EXTENT = 4 * 1024 * 1024;
const TOOL_TIMEOUT_MS = 60_000;

interface LoopLv {
  loop: string;
  file: string;
  tags: string[];
}

export class LoopLvm {
  private constructor(
    readonly vg: string,
    /** Where the backing files and the LV records live. */
    private readonly dir: string,
    private readonly capacityBytes: number,
  ) {}

  /** A "VG" `vg` of `capacityBytes` (its LVs' files under `dir`); `cleanup` removes every LV and /dev/<vg>. */
  static async create(cleanup: Cleanup, dir: string, capacityBytes: number): Promise<LoopLvm> {
    const vg = `h15vg${randomBytes(3).toString('hex')}`;
    const lvm = new LoopLvm(vg, dir, capacityBytes);
    await mkdir(`/dev/${vg}`);
    cleanup.add(`remove loop VG ${vg}`, () => lvm.removeAll());
    return lvm;
  }

  /** The same "VG" in another process (its state is on disk: records, loop devices, /dev/<vg>). */
  static open(vg: string, dir: string, capacityBytes: number): LoopLvm {
    return new LoopLvm(vg, dir, capacityBytes);
  }

  /** What another process needs to open this "VG". */
  get spec(): { vg: string; dir: string; capacityBytes: number } {
    return { vg: this.vg, dir: this.dir, capacityBytes: this.capacityBytes };
  }

  /** The stand-in typed as the adapter it replaces. */
  asLvm(): Lvm {
    return this as unknown as Lvm;
  }

  async listVolumes(vg: string, lv?: string): Promise<LogicalVolume[]> {
    this.checkVg(vg);
    const names = (await readdir(this.dir)).filter((f) => f.endsWith('.lv.json')).map((f) => f.slice(0, -8));
    const lvs: LogicalVolume[] = [];
    for (const name of names.sort()) if (lv === undefined || lv === name) lvs.push(await this.report(name));
    return lvs;
  }

  async getVolume(vg: string, name: string): Promise<LogicalVolume | undefined> {
    return (await this.listVolumes(vg, name))[0];
  }

  async volumeGroup(vg: string): Promise<VolumeGroup> {
    const used = (await this.listVolumes(vg)).reduce((sum, lv) => sum + lv.sizeBytes, 0);
    return {
      name: vg,
      sizeBytes: this.capacityBytes,
      freeBytes: this.capacityBytes - used,
      extentSizeBytes: EXTENT,
      tags: [],
      shared: false,
    };
  }

  roundToExtents(bytes: number, extentSizeBytes: number): number {
    return Math.ceil(bytes / extentSizeBytes) * extentSizeBytes;
  }

  async createVolume(spec: { vg: string; name: string; sizeBytes: number; tags?: string[] }) {
    this.checkVg(spec.vg);
    const size = this.roundToExtents(spec.sizeBytes, EXTENT);
    const group = await this.volumeGroup(spec.vg);
    if (group.freeBytes < size)
      throw new Error(`loop VG ${spec.vg}: ${size} bytes needed, ${group.freeBytes} free`);
    const file = join(this.dir, `${spec.name}.img`);
    await execa('truncate', ['-s', String(size), file], { timeout: TOOL_TIMEOUT_MS });
    const { stdout } = await execa('losetup', ['--find', '--show', file], { timeout: TOOL_TIMEOUT_MS });
    const loop = stdout.trim();
    // Zeroed like `lvcreate --zero y`: a sparse file reads zeros.
    await this.save(spec.name, { loop, file, tags: spec.tags ?? [] });
    await symlink(loop, this.pathOf(spec.name));
    return this.report(spec.name);
  }

  async removeVolume(vg: string, name: string): Promise<void> {
    this.checkVg(vg);
    const lv = await this.getVolume(vg, name);
    if (lv === undefined) throw new LvmVolumeNotFoundError(vg, name);
    if (lv.open) throw new LvmVolumeInUseError(vg, name);
    await this.destroy(name);
  }

  async changeTags(vg: string, name: string, tags: { add: string[]; remove: string[] }): Promise<void> {
    this.checkVg(vg);
    const record = await this.load(name);
    const kept = record.tags.filter((t) => !tags.remove.includes(t));
    await this.save(name, { ...record, tags: [...new Set([...kept, ...tags.add])] });
  }

  /** lvextend: the file grows, then the loop device takes its new size (`losetup -c`). */
  async extendVolume(vg: string, name: string, sizeBytes: number): Promise<LogicalVolume> {
    this.checkVg(vg);
    const record = await this.load(name);
    const size = this.roundToExtents(sizeBytes, EXTENT);
    if ((await stat(record.file)).size < size) {
      await execa('truncate', ['-s', String(size), record.file], { timeout: TOOL_TIMEOUT_MS });
      await execa('losetup', ['-c', record.loop], { timeout: TOOL_TIMEOUT_MS });
    }
    return this.report(name);
  }

  /** Every loop "LV" is active on this host. */
  async activate(): Promise<void> {}

  /** As Lvm.flushHandle: a descriptor of the LV's (loop) device, to fsync later. */
  async flushHandle(vg: string, name: string): Promise<FlushHandle> {
    return openFlushHandle(`/dev/${vg}/${name}`);
  }

  pathOf(name: string): string {
    return `/dev/${this.vg}/${name}`;
  }

  private async report(name: string): Promise<LogicalVolume> {
    const record = await this.load(name);
    const open = await isOpenByAnyProcess(record.loop);
    return {
      vg: this.vg,
      name,
      path: this.pathOf(name),
      sizeBytes: (await stat(record.file)).size,
      attr: `-wi-a${open ? 'o' : '-'}----`,
      activeHere: true,
      open,
      origin: null,
      tags: record.tags,
      snapshotPercent: null,
      snapshotInvalid: false,
      segType: 'linear',
    };
  }

  private async destroy(name: string): Promise<void> {
    const record = await this.load(name);
    await unlink(this.pathOf(name)).catch(() => undefined);
    await execa('losetup', ['-d', record.loop], { timeout: TOOL_TIMEOUT_MS });
    await rm(record.file, { force: true });
    await rm(this.recordPath(name), { force: true });
  }

  private async removeAll(): Promise<void> {
    for (const lv of await this.listVolumes(this.vg)) await this.destroy(lv.name);
    await rm(`/dev/${this.vg}`, { recursive: true, force: true });
  }

  private recordPath(name: string): string {
    return join(this.dir, `${name}.lv.json`);
  }

  private async load(name: string): Promise<LoopLv> {
    try {
      return JSON.parse(await readFile(this.recordPath(name), 'utf8')) as LoopLv;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new LvmVolumeNotFoundError(this.vg, name);
      throw error;
    }
  }

  private async save(name: string, record: LoopLv): Promise<void> {
    await writeFile(this.recordPath(name), JSON.stringify(record));
  }

  private checkVg(vg: string): void {
    if (vg !== this.vg) throw new Error(`loop VG ${this.vg} asked about VG ${vg}`);
  }
}

/** Whether any process holds the block device open (LVM's `o` attribute): its descriptors in /proc. */
async function isOpenByAnyProcess(device: string): Promise<boolean> {
  const { rdev } = await stat(device);
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
      if (!target.startsWith('/dev/')) continue;
      const st = await stat(`/proc/${pid}/fd/${fd}`).catch(() => null);
      if (st?.isBlockDevice() && st.rdev === rdev) return true;
    }
  }
  return false;
}
