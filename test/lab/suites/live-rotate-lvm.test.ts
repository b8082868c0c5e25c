// live-rotate on real LVM (inside the lab guest): a QCOW2 volume on an LV, held by a running QEMU,
// rotated live six times with guest writes between the rotations. Each rotation puts a new thick
// LV `<vol>.lr-a|b` on top, exports the old top and commits it down into the base LV `<vol>`, then
// removes it: no LV is ever renamed. Checked after each: the snapshot and the live volume equal raw
// references (`qemu-img compare`), only the base and the active layer's LVs exist, QEMU holds
// exactly those two. Then `volume.resize` grows the running volume (lvextend of both LVs, then
// block_resize), the guest writes past the old end, the next snapshot has the new size; QEMU is
// stopped and started again on the chain and reads every byte right (through its own NBD export);
// the next snapshot after that is right too.
//
// The lab has no libvirt, so the VM is a bare QEMU (`-machine none`, TCG) with a QMP socket, and the
// engine talks to it through BareQemu below: the Libvirt adapter's methods the strategy and
// volume.resize call, done over QMP the way libvirt does them (blockdev-add + blockdev-snapshot for
// `snapshot-create-as --reuse-external`, a block-commit job then blockdev-del of the merged nodes for
// `blockcommit`, block_resize for `blockresize`).
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FilePool } from '../../../src/host/file-pool.js';
import type { BlockNode, Libvirt } from '../../../src/host/libvirt.js';
import { Lvm } from '../../../src/host/lvm.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { chainFromGraph, type QmpBlockDeviceInfo, type QmpBlockGraph } from '../../../src/host/qmp.js';
import { SnapshotStore } from '../../../src/host/store.js';
import { createSnapshot, resizeVolume, type SnapshotDeps } from '../../../src/snapshot/index.js';
import { QmpClient, type ScratchVg, scratchVg } from '../../support/lab/lab.js';
import { differsFromReference, ReferenceDisk, roundWrites } from '../../support/reference-images.js';
import { command, FileStepJournal, jobContext } from '../../support/snapshot-harness.js';

const MiB = 1024 * 1024;
const lvm = new Lvm({ timeoutMs: 60_000 });
const qemuImg = new QemuImg({ timeoutMs: 60_000, exportTimeoutMs: 120_000 });
let scratch: ScratchVg;
let vg: string;
let work: string;
let vm: BareQemu | null = null;

beforeAll(async () => {
  scratch = await scratchVg('lrvg');
  vg = scratch.vg;
  work = mkdtempSync(join(tmpdir(), 'lr-'));
});
afterAll(async () => {
  await vm?.kill();
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

/** The device-mapper nodes QEMU holds open (sorted). */
function heldDmDevices(pid: number | undefined): string[] {
  const fdDir = `/proc/${pid}/fd`;
  const held = readdirSync(fdDir)
    .map((fd) => statSync(join(fdDir, fd), { throwIfNoEntry: false }))
    .filter((st) => st?.isBlockDevice() && ((st.rdev >> 8) & 0xfff) === DM_MAJOR)
    .map((st) => `/dev/dm-${minor(st?.rdev ?? 0)}`);
  return [...new Set(held)].sort();
}

/**
 * A running VM for the engine: a bare QEMU whose disk is the chain under node `top`, driven over
 * QMP with the Libvirt adapter's methods (the ones live-rotate and volume.resize call).
 */
class BareQemu {
  private top = 'fmt';
  /** Layers opened by the monitor (command line or blockdev-add), by filename: closed with blockdev-del. */
  private readonly owned = new Map<string, Pick<BlockNode, 'nodeName' | 'fileNodeName'>>();
  private nextNode = 1;

  private constructor(
    private readonly process: ResultPromise,
    private readonly client: QmpClient,
  ) {}

  /** Starts QEMU on the chain whose top layer is `topPath` (the lower layers from its header). */
  static async start(topPath: string): Promise<BareQemu> {
    const socket = join(work, `vm-${Date.now()}.qmp`);
    const blockdev = {
      driver: 'qcow2',
      'node-name': 'fmt',
      file: { driver: 'host_device', filename: topPath, 'node-name': 'file', 'auto-read-only': true },
    };
    const process = execa(
      'qemu-system-x86_64',
      ['-machine', 'none', '-nodefaults', '-display', 'none', '-accel', 'tcg', '-qmp'].concat([
        `unix:${socket},server=on,wait=off`,
        '-blockdev',
        JSON.stringify(blockdev),
      ]),
      { reject: false, timeout: 15 * 60_000 },
    );
    const qemu = new BareQemu(process, await QmpClient.connect(socket));
    qemu.owned.set(topPath, { nodeName: 'fmt', fileNodeName: 'file' });
    return qemu;
  }

  get pid(): number | undefined {
    return this.process.pid;
  }

  async quit(): Promise<void> {
    await this.client.execute('quit');
    await this.process;
    this.client.close();
  }

  async kill(): Promise<void> {
    this.client.close();
    this.process.kill('SIGKILL');
    await this.process.catch(() => undefined);
  }

  // --- the Libvirt adapter's methods -------------------------------------------------------------
  async domainState() {
    return { state: 'running', reason: 'booted' };
  }
  async isRunning() {
    return true;
  }
  async disks() {
    const [top] = await this.diskChain();
    return [{ type: 'block', device: 'disk', target: 'vda', source: top!.filename }];
  }
  async diskChain(): Promise<BlockNode[]> {
    const graph = (await this.client.execute('x-debug-query-block-graph')) as QmpBlockGraph;
    const nodes = (await this.client.execute('query-named-block-nodes', {
      flat: true,
    })) as QmpBlockDeviceInfo[];
    return chainFromGraph('lab', this.top, graph, nodes);
  }
  async diskSources(): Promise<string[]> {
    return (await this.diskChain()).map((n) => n.filename);
  }
  /** `snapshot-create-as --disk-only --reuse-external --diskspec vda,stype=block,file=<file>` */
  async externalSnapshot(_domain: string, opts: { target: string; file: string; sourceType: string }) {
    expect(opts.sourceType).toBe('block');
    const node = `ov${this.nextNode++}`;
    const fileNode = `${node}-file`;
    await this.client.execute('blockdev-add', {
      driver: 'qcow2',
      'node-name': node,
      backing: null,
      file: { driver: 'host_device', filename: opts.file, 'node-name': fileNode },
    });
    await this.client.execute('blockdev-snapshot', { node: this.top, overlay: node });
    this.owned.set(opts.file, { nodeName: node, fileNodeName: fileNode });
    this.top = node;
  }
  /** `blockcommit --top <top> --base <base>` (a non-active commit); waitForBlockJob finishes it. */
  async startBlockCommit(_domain: string, opts: { target: string; top: string; base: string }) {
    const chain = await this.diskChain();
    const node = (path: string) => chain.find((n) => n.filename === path)!.nodeName;
    await this.client.execute('block-commit', {
      'job-id': 'commit',
      device: this.top,
      'top-node': node(opts.top),
      'base-node': node(opts.base),
      'backing-file': opts.base, // libvirt names the base by its path in the overlay's header
    });
  }
  async blockJobRunning(): Promise<boolean> {
    return ((await this.client.execute('query-block-jobs')) as unknown[]).length > 0;
  }
  /** Waits for the job, then closes the layers it dropped from the chain (libvirt does that too). */
  async waitForBlockJob(): Promise<void> {
    while (await this.blockJobRunning()) await new Promise((r) => setTimeout(r, 100));
    const inChain = new Set(await this.diskSources());
    for (const [path, node] of [...this.owned]) {
      if (inChain.has(path)) continue;
      await this.client.execute('blockdev-del', { 'node-name': node.nodeName });
      const nodes = (await this.client.execute('query-named-block-nodes', {
        flat: true,
      })) as QmpBlockDeviceInfo[];
      if (nodes.some((n) => n['node-name'] === node.fileNodeName))
        await this.client.execute('blockdev-del', { 'node-name': node.fileNodeName });
      this.owned.delete(path);
    }
  }
  /** `blockresize` */
  async blockResize(_domain: string, _target: string, sizeBytes: number) {
    await this.client.execute('block_resize', { 'node-name': this.top, size: sizeBytes });
  }

  // --- the guest -----------------------------------------------------------------------------------
  async guestWrite(pattern: number, offset: number, length: number): Promise<void> {
    await this.client.hmp(`qemu-io ${this.top} "write -P ${pattern} ${offset} ${length}"`);
    await this.client.hmp(`qemu-io ${this.top} "flush"`);
  }
  /** What the guest reads, through QEMU: its disk exported over NBD, compared with the reference. */
  async readBackDiffers(reference: ReferenceDisk): Promise<string | null> {
    const socket = join(work, `rb-${Date.now()}.sock`);
    await this.client.execute('nbd-server-start', { addr: { type: 'unix', data: { path: socket } } });
    await this.client.execute('block-export-add', {
      type: 'nbd',
      id: 'rb',
      'node-name': this.top,
      name: 'vda',
    });
    try {
      const r = await execa(
        'qemu-img',
        ['compare', '-f', 'raw', '-F', 'raw', `nbd+unix:///vda?socket=${socket}`, reference.path],
        { reject: false, timeout: 120_000 },
      );
      if (r.exitCode === 0) return null;
      if (r.exitCode === 1) return r.stdout;
      throw new Error(`qemu-img compare over NBD failed: ${r.stderr}`);
    } finally {
      await this.client.execute('block-export-del', { id: 'rb' });
      await this.client.execute('nbd-server-stop');
    }
  }
  async virtualSize(): Promise<number> {
    const nodes = (await this.client.execute('query-named-block-nodes', {
      flat: true,
    })) as Array<QmpBlockDeviceInfo & { image: { 'virtual-size': number } }>;
    return nodes.find((n) => n['node-name'] === this.top)!.image['virtual-size'];
  }
}

describe('live-rotate on an LVM volume held by a running QEMU', () => {
  it('rotates 6 times (new LVs, commit into the base LV), grows with volume.resize, survives a QEMU restart', async () => {
    let size = 32 * MiB;
    const { fullyAllocatedBytes } = await qemuImg.measure({ sizeBytes: size });
    const base = await lvm.createVolume({ vg, name: 'vol', sizeBytes: fullyAllocatedBytes });
    await qemuImg.create({ path: base.path, sizeBytes: size });
    vm = await BareQemu.start(base.path);
    const store = join(work, 'store');
    const deps: SnapshotDeps = {
      qemuImg,
      store: new SnapshotStore({ roots: [store], qemuImg }),
      filePool: new FilePool({ roots: [work], qemuImg, timeoutMs: 60_000 }),
      lvm,
      libvirt: vm as unknown as Libvirt,
    };
    const live = await ReferenceDisk.create(join(work, 'ref-live.raw'), 64 * MiB);
    const names: string[] = [];
    const refs: ReferenceDisk[] = [];
    let current = base.path;
    let round = 0;

    const write = async (): Promise<void> => {
      round += 1;
      const writes = roundWrites(round, size);
      for (const w of writes) await vm!.guestWrite(w.pattern, w.offset, w.length);
      await live.apply(writes);
    };
    const lvNames = async () => (await lvm.listVolumes(vg)).map((lv) => lv.name).sort();
    const resize = (sizeBytes: number) => {
      const cmd = command('volume.resize', {
        volume: { kind: 'lvm', vg, lv: 'vol' },
        vm: 'lab-vm',
        sizeBytes,
      });
      return resizeVolume(jobContext(cmd, new FileStepJournal(join(work, `${cmd.id}.json`))), deps);
    };
    const snapshot = async (label: string): Promise<void> => {
      const started = performance.now();
      const name = `snap-${names.length + 1}`;
      // Any of the volume's names finds its active layer: the base name on even snapshots.
      const lv = names.length % 2 === 0 ? 'vol' : current.slice(`/dev/${vg}/`.length);
      const result = await createSnapshot(
        jobContext(
          command('snapshot.create', {
            volume: { kind: 'lvm', vg, lv },
            vm: 'lab-vm',
            store: { root: store, dir: 'vol' },
            parents: names,
            snapshot: name,
          }),
          new FileStepJournal(join(work, `${name}.json`)),
        ),
        deps,
      );
      expect(result.strategy.name, label).toBe('live-rotate');
      expect(result.snapshot.kind, `${label}: ${result.snapshot.fullReason}`).toBe(
        names.length === 0 ? 'full' : 'delta',
      );
      expect(result.snapshot.virtualSize).toBe(size);
      expect(result.activePath).toBe(current);
      current = result.volumePath!;
      expect(current).toBe(`/dev/${vg}/vol.lr-${names.length % 2 === 0 ? 'a' : 'b'}`);
      names.push(name);
      refs.push(await live.freeze(join(work, `ref-${name}.raw`)));
      expect(await differsFromReference(result.snapshot.path, refs.at(-1)!), label).toBeNull();
      expect((await qemuImg.check(result.snapshot.path)).ok).toBe(true);
      // Only the base LV and the active layer's LV are left; QEMU holds exactly those two.
      expect(await lvNames()).toEqual(['vol', current.slice(`/dev/${vg}/`.length)].sort());
      expect(heldDmDevices(vm!.pid)).toEqual([dmNode(base.path), dmNode(current)].sort());
      expect(await vm!.diskSources()).toEqual([current, base.path]);
      expect(await differsFromReference(current, live), label).toBeNull();
      console.log(
        `${label}: ${name} ${result.snapshot.kind}, ${Math.round(performance.now() - started)} ms`,
        `(steps: ${result.steps.map((st) => `${st.name} ${st.durationMs}`).join(', ')})`,
      );
    };

    for (let i = 0; i < 6; i++) {
      await write();
      await snapshot(`rotation ${i + 1}`);
    }

    // Grow the running volume: both LVs are lvextended for a fully allocated QCOW2 of the new size,
    // then QEMU's disk grows; the guest writes past the old end.
    const grown = 48 * MiB;
    const resized = await resize(grown);
    const needed = (await qemuImg.measure({ sizeBytes: grown })).fullyAllocatedBytes;
    expect(resized).toMatchObject({
      volumePath: current,
      previousVirtualSize: size,
      virtualSize: grown,
      through: 'libvirt',
    });
    expect(resized.lvs.map((l) => l.path).sort()).toEqual([base.path, current].sort());
    for (const lv of await lvm.listVolumes(vg)) expect(lv.sizeBytes).toBeGreaterThanOrEqual(needed);
    size = grown;
    expect(await vm.virtualSize()).toBe(size);
    await vm.guestWrite(0x7e, 40 * MiB, MiB);
    await live.apply([{ pattern: 0x7e, offset: 40 * MiB, length: MiB }]);
    expect(await vm.readBackDiffers(live)).toBeNull();
    // Shrinking is refused before anything changes.
    await expect(resize(16 * MiB)).rejects.toMatchObject({ code: 'VOLUME_SHRINK_REFUSED' });
    await write();
    await snapshot('after volume.resize');
    await write();
    await snapshot('the commit grows the base');
    expect((await qemuImg.info(base.path, { forceShare: true })).virtualSize).toBe(size);

    // QEMU stopped and started again on the chain (what a VM restart does): every byte reads right.
    await vm.quit();
    vm = await BareQemu.start(current);
    deps.libvirt = vm as unknown as Libvirt;
    expect(await vm.diskSources()).toEqual([current, base.path]);
    expect(await vm.readBackDiffers(live)).toBeNull();
    await write();
    await snapshot('after the restart');
    expect(await vm.readBackDiffers(live)).toBeNull();

    // Every snapshot still equals the disk of its moment; the chain in the store checks clean.
    for (const [i, name] of names.entries()) {
      expect(await differsFromReference(join(store, 'vol', name), refs[i]!), name).toBeNull();
    }
    await vm.quit();
    vm = null;
    expect((await qemuImg.check(current)).ok).toBe(true);
    expect((await qemuImg.check(base.path)).ok).toBe(true);
  }, 600_000); // six rotations and more on nested TCG (several minutes under load)
});
