// live-rotate on real LVM (inside the lab guest) is refused before anything changes: the rotation
// now goes through libvirt (external disk-only snapshot, block commit into the local base) and is
// proven on file pools only (docs/operations.md). An LVM volume held open by a running QEMU gets
// STRATEGY_UNAVAILABLE with the reason; its LV, its image and what QEMU holds are unchanged.
//
// The lab has no libvirt, so the VM is a bare QEMU (`-machine none`, TCG) with a QMP socket, and
// the engine talks to it through BareQemu below: the subset of the Libvirt adapter the planner
// uses, sent straight over QMP.
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FilePool } from '../../../src/host/file-pool.js';
import type { BlockdevOptions, BlockNode, Libvirt } from '../../../src/host/libvirt.js';
import { Lvm } from '../../../src/host/lvm.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { chainFromGraph, type QmpBlockDeviceInfo, type QmpBlockGraph } from '../../../src/host/qmp.js';
import { SnapshotStore } from '../../../src/host/store.js';
import { createSnapshot, type SnapshotDeps } from '../../../src/snapshot/index.js';
import { QmpClient, type ScratchVg, scratchVg } from '../../support/lab/lab.js';
import { differsFromReference, ReferenceDisk, roundWrites } from '../../support/reference-images.js';
import { command, FileStepJournal, jobContext } from '../../support/snapshot-harness.js';

const MiB = 1024 * 1024;
const VIRTUAL = 32 * MiB;
const lvm = new Lvm({ timeoutMs: 60_000 });
const qemuImg = new QemuImg({ timeoutMs: 60_000, exportTimeoutMs: 120_000 });
let scratch: ScratchVg;
let vg: string;
let work: string;
let qemu: ResultPromise | null = null;
let qmp: QmpClient | null = null;

beforeAll(async () => {
  scratch = await scratchVg('lrvg');
  vg = scratch.vg;
  work = mkdtempSync(join(tmpdir(), 'lr-'));
});
afterAll(async () => {
  qmp?.close();
  qemu?.kill('SIGKILL');
  await qemu?.catch(() => undefined);
  rmSync(work, { recursive: true, force: true });
  await scratch?.cleanup();
});

const DM_MAJOR = Number(
  readFileSync('/proc/devices', 'utf8')
    .split('\n')
    .find((line) => / device-mapper$/.test(line))
    ?.trim()
    .split(' ')[0] ?? -1,
);
const minor = (rdev: number) => (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
const dmNode = (path: string) => `/dev/dm-${minor(statSync(path).rdev)}`;

/** The device-mapper nodes QEMU holds open. */
function heldDmDevices(pid: number | undefined): string[] {
  const fdDir = `/proc/${pid}/fd`;
  return readdirSync(fdDir)
    .map((fd) => statSync(join(fdDir, fd), { throwIfNoEntry: false }))
    .filter((st) => st?.isBlockDevice() && ((st.rdev >> 8) & 0xfff) === DM_MAJOR)
    .map((st) => `/dev/dm-${minor(st?.rdev ?? 0)}`);
}

/** The Libvirt adapter's methods the live-rotate strategy calls, over a bare QEMU's QMP socket. */
class BareQemu {
  /** The disk's top node (no device in -machine none: follow blockdev-snapshot). */
  private top = 'fmt';
  private readonly passed = new Map<number, { path: string; opaque: string }>();
  private nextFdset = 1;

  constructor(
    private readonly client: QmpClient,
    private readonly volumePath: string,
  ) {}

  async domainState() {
    return { state: 'running', reason: 'booted' };
  }
  async isRunning() {
    return true;
  }
  async disks() {
    return [{ type: 'block', device: 'disk', target: 'vda', source: this.volumePath }];
  }
  async qemuVersion() {
    const v = (await this.client.execute('query-version')) as {
      qemu: { major: number; minor: number; micro: number };
      package: string;
    };
    return { ...v.qemu, package: v.package };
  }
  async qmpCommands() {
    const list = (await this.client.execute('query-commands')) as Array<{ name: string }>;
    return new Set(list.map((c) => c.name));
  }
  async qmp<T>(_domain: string, execute: string, args?: Record<string, unknown>): Promise<T> {
    return (await this.client.execute(execute, args)) as T;
  }
  async diskChain(): Promise<BlockNode[]> {
    const graph = (await this.client.execute('x-debug-query-block-graph')) as QmpBlockGraph;
    const nodes = (await this.client.execute('query-named-block-nodes', {
      flat: true,
    })) as QmpBlockDeviceInfo[];
    return chainFromGraph('lab', this.top, graph, nodes);
  }
  async addFdset(_domain: string, path: string, opaque: string): Promise<number> {
    const id = this.nextFdset++;
    this.passed.set(id, { path, opaque });
    return id;
  }
  async fdsets() {
    return [...this.passed].map(([fdsetId, s]) => ({ fdsetId, opaque: [s.opaque, s.opaque] }));
  }
  async removeFdset(_domain: string, id: number) {
    this.passed.delete(id);
  }
  async blockdevAdd(_domain: string, options: BlockdevOptions): Promise<void> {
    const file = options.file as { filename: string } | string;
    const fdset = typeof file === 'object' ? /^\/dev\/fdset\/(\d+)$/.exec(file.filename) : null;
    const path = fdset === null ? undefined : this.passed.get(Number(fdset[1]))?.path;
    const opened =
      path === undefined ? options : { ...options, file: { ...(file as object), filename: dmNode(path) } };
    await this.client.execute('blockdev-add', opened as Record<string, unknown>);
  }
  async blockdevSnapshot(_domain: string, opts: { node: string; overlay: string }) {
    await this.client.execute('blockdev-snapshot', opts);
    this.top = opts.overlay;
  }
  async blockdevReopen(_domain: string, options: BlockdevOptions[]) {
    await this.client.execute('blockdev-reopen', { options });
  }
  async changeBackingFile(
    _domain: string,
    o: { device: string; imageNodeName: string; backingFile: string },
  ) {
    await this.client.execute('change-backing-file', {
      device: o.device,
      'image-node-name': o.imageNodeName,
      'backing-file': o.backingFile,
    });
  }
  async blockdevDel(_domain: string, nodeName: string) {
    await this.client.execute('blockdev-del', { 'node-name': nodeName });
  }
  async blockdevDelLayer(domain: string, node: Pick<BlockNode, 'nodeName' | 'fileNodeName'>) {
    await this.blockdevDel(domain, node.nodeName);
    const nodes = (await this.client.execute('query-named-block-nodes', {
      flat: true,
    })) as QmpBlockDeviceInfo[];
    if (node.fileNodeName !== null && nodes.some((n) => n['node-name'] === node.fileNodeName))
      await this.blockdevDel(domain, node.fileNodeName);
  }
  async guestWrite(pattern: number, offset: number, length: number): Promise<void> {
    await this.client.execute('human-monitor-command', {
      'command-line': `qemu-io ${this.top} "write -P ${pattern} ${offset} ${length}"`,
    });
    await this.client.execute('human-monitor-command', { 'command-line': `qemu-io ${this.top} "flush"` });
  }
}

describe('live-rotate on an LVM volume held by a running QEMU', () => {
  it('is refused before anything changes (not proven on LVM with libvirt tracking)', async () => {
    const { fullyAllocatedBytes } = await qemuImg.measure({ sizeBytes: VIRTUAL });
    const volume = await lvm.createVolume({ vg, name: 'vol', sizeBytes: fullyAllocatedBytes });
    await qemuImg.create({ path: volume.path, sizeBytes: VIRTUAL });
    const socket = join(work, 'vm.qmp');
    const blockdev = {
      driver: 'qcow2',
      'node-name': 'fmt',
      file: { driver: 'host_device', filename: volume.path, 'node-name': 'file', 'auto-read-only': true },
    };
    qemu = execa(
      'qemu-system-x86_64',
      ['-machine', 'none', '-nodefaults', '-display', 'none', '-accel', 'tcg', '-qmp'].concat([
        `unix:${socket},server=on,wait=off`,
        '-blockdev',
        JSON.stringify(blockdev),
      ]),
      { reject: false, timeout: 15 * 60_000 },
    );
    qmp = await QmpClient.connect(socket);
    const vm = new BareQemu(qmp, volume.path);
    const store = join(work, 'store');
    const deps: SnapshotDeps = {
      qemuImg,
      store: new SnapshotStore({ roots: [store], qemuImg }),
      filePool: new FilePool({ roots: [work], qemuImg, timeoutMs: 60_000 }),
      lvm,
      libvirt: vm as unknown as Libvirt,
    };
    const live = await ReferenceDisk.create(join(work, 'ref-live.raw'), VIRTUAL);
    const writes = roundWrites(1, VIRTUAL);
    for (const w of writes) await vm.guestWrite(w.pattern, w.offset, w.length);
    await live.apply(writes);

    const cmd = command('snapshot.create', {
      volume: { kind: 'lvm', vg, lv: 'vol' },
      vm: 'lab-vm',
      store: { root: store, dir: 'vol' },
      parents: [],
      snapshot: 'snap-1',
      options: { strategy: 'live-rotate' },
    });
    await expect(
      createSnapshot(jobContext(cmd, new FileStepJournal(join(work, `${cmd.id}.json`))), deps),
    ).rejects.toMatchObject({ code: 'STRATEGY_UNAVAILABLE', message: expect.stringMatching(/LVM/) });

    // Nothing changed: the one LV, QEMU holding exactly it, the guest's data in it.
    expect((await lvm.listVolumes(vg)).map((lv) => lv.name)).toEqual(['vol']);
    expect(heldDmDevices(qemu.pid)).toEqual([dmNode(volume.path)]);
    await qmp.execute('quit');
    await qemu;
    qemu = null;
    expect(await differsFromReference(volume.path, live)).toBeNull();
    expect((await qemuImg.check(volume.path)).ok).toBe(true);
  });
});
