// live-rotate and libvirt's view of the disk (plain file pool, running type='qemu' VM):
// - libvirt describes exactly the chain QEMU reads (the active layer the result names, on the
//   volume's base); the running QEMU, and after destroy + start a fresh QEMU that opened that
//   chain from libvirt's description, read the same data as the reference (a blockdev-backup of
//   the whole disk through QEMU, compared byte for byte);
// - after destroy + start further live-rotate snapshots still rotate it, as deltas;
// - a delta after a full snapshot taken by another strategy (offline, VM stopped), then started.
// After every snapshot QEMU holds exactly the disk's chain: no leaked layer or fdset.
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { checkExitCode, infoOf } from '../../support/images.js';
import { guestFlush, guestWrite, type TestDomain, virsh } from '../../support/libvirt-fixtures.js';
import { libvirtSuite, runningVolume } from '../../support/libvirt-suite.js';
import {
  differsFromReference,
  type PatternWrite,
  type ReferenceDisk,
  roundWrites,
} from '../../support/reference-images.js';
import { fileSnapshotCommand, runCreate } from '../../support/snapshot-harness.js';
import { blockCensus, qemuChain, readBackThroughQemu } from '../../support/vm-watch.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
const { h, cleanup } = libvirtSuite('lrrestart');

/** One volume with its domain, its live reference and the snapshots taken so far. */
class Volume {
  readonly names: string[] = [];
  readonly refs: ReferenceDisk[] = [];
  private reads = 0;
  /** The volume's active layer (live-rotate moves it: the result's volumePath). */
  current: string;

  constructor(
    readonly file: string,
    readonly dom: TestDomain,
    readonly live: ReferenceDisk,
  ) {
    this.current = this.active;
  }

  get active(): string {
    return join(h.pool, this.file);
  }

  storePath(name: string): string {
    return join(h.storeRoot, this.file, name);
  }

  /** Guest writes through the running QEMU, or with qemu-io on the image while the VM is stopped. */
  async write(writes: PatternWrite[], running = true): Promise<void> {
    if (running) {
      for (const w of writes) await guestWrite(this.dom, w.pattern, w.offset, w.length);
    } else {
      const commands = writes.flatMap((w) => ['-c', `write -q -P ${w.pattern} ${w.offset} ${w.length}`]);
      await execa('qemu-io', ['-f', 'qcow2', ...commands, this.current], { timeout: 60_000 });
    }
    await this.live.apply(writes);
  }

  async snapshot(strategy: 'live-rotate' | 'offline') {
    const name = `snap-${this.names.length + 1}`;
    const cmd = fileSnapshotCommand(h, {
      file: this.file,
      vm: this.dom.name,
      parents: this.names,
      snapshot: name,
      options: { strategy },
    });
    const result = await runCreate(h, cmd);
    this.names.push(name);
    this.refs.push(await this.live.freeze(join(h.base, `${this.file}.ref-${this.names.length}.raw`)));
    expect(result.strategy.name).toBe(strategy);
    expect(result.snapshot.chainDepth).toBe(this.names.length);
    expect(result.activePath).toBe(this.current);
    this.current = result.volumePath!;
    return result;
  }

  /** Every snapshot equals its reference, the store holds the chain, the active image the live data. */
  async expectChain(running = true): Promise<void> {
    for (const [i, name] of this.names.entries()) {
      expect(await checkExitCode(this.storePath(name))).toBe(0);
      expect(await differsFromReference(this.storePath(name), this.refs[i]!)).toBeNull();
      if (i > 0) expect((await infoOf(this.storePath(name)))['backing-filename']).toBe(this.names[i - 1]);
    }
    if (this.current !== this.active)
      expect((await infoOf(this.current))['backing-filename']).toBe(this.active);
    if (running) await guestFlush(this.dom);
    expect(await checkExitCode(this.current)).toBe(0);
    expect(await differsFromReference(this.current, this.live)).toBeNull();
  }

  /**
   * libvirt names the active layer and describes the chain QEMU reads (`base`: what lies below the
   * volume's base); the QEMU that runs the domain reads the reference's data.
   */
  async expectQemuView(below: string[] = []): Promise<void> {
    const blk = (await virsh(['domblklist', this.dom.name]))
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((cols) => cols[0] === 'vda');
    expect(blk).toEqual([['vda', this.current]]);
    const disk = /<disk[\s\S]*?<\/disk>/.exec(await virsh(['dumpxml', this.dom.name]))![0];
    const described = [...disk.matchAll(/<source file='([^']+)'/g)].map((m) => m[1]);
    const layers = this.current === this.active ? [this.active] : [this.current, this.active];
    expect(described).toEqual([...layers, ...below]);
    const chain = await qemuChain(this.dom.name);
    expect(chain.map((n) => n.path)).toEqual(described);
    const census = await blockCensus(this.dom.name);
    expect(census.qcow2Nodes).toHaveLength(census.chainDepth);
    expect(census.fdsets).toEqual(census.fdsetsInUse);
    const out = join(h.base, `${this.file}.readback-${++this.reads}.raw`);
    await readBackThroughQemu(this.dom.name, out, SIZE);
    const compare = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', out, this.live.path], {
      reject: false,
      timeout: 60_000,
    });
    expect(compare.exitCode, String(compare.stdout)).toBe(0);
    await execa('rm', ['-f', out]);
  }

  async restart(): Promise<void> {
    await virsh(['destroy', this.dom.name]);
    await virsh(['start', this.dom.name]);
  }
}

async function newVolume(file: string): Promise<Volume> {
  const { dom, live } = await runningVolume(h, cleanup, { label: 'lrrestart', file });
  return new Volume(file, dom, live);
}

describe('live-rotate: the chain libvirt and a fresh QEMU see', () => {
  it('QEMU reads the reference before and after destroy + start, and a restarted chain rotates again', async () => {
    const v = await newVolume('restart.qcow2');
    for (let round = 1; round <= 2; round++) {
      await v.write(roundWrites(120 + round, SIZE));
      await v.snapshot('live-rotate');
      await v.expectChain();
      await v.expectQemuView();
    }

    // A fresh QEMU opens the chain libvirt describes: the active layer on the base.
    await v.restart();
    expect((await virsh(['domstate', v.dom.name])).trim()).toBe('running');
    await v.expectQemuView();

    // That chain rotates too, as deltas (the layer record survives the restart).
    for (let round = 3; round <= 4; round++) {
      await v.write(roundWrites(120 + round, SIZE));
      const result = await v.snapshot('live-rotate');
      expect(result.snapshot.kind).toBe('delta');
      await v.expectChain();
      await v.expectQemuView();
    }
    await v.restart();
    await v.write(roundWrites(199, SIZE));
    await v.expectChain();
    await v.expectQemuView();
  });

  it('a live-rotate delta on top of an offline full snapshot taken while the VM was stopped', async () => {
    const v = await newVolume('afteroff.qcow2');
    await virsh(['destroy', v.dom.name]);
    await v.write(roundWrites(140, SIZE), false);
    const full = await v.snapshot('offline');
    expect(full.snapshot.kind).toBe('full');
    await v.expectChain(false);

    await virsh(['start', v.dom.name]);
    const snap1 = v.storePath('snap-1');
    await v.expectQemuView([snap1]);
    for (let round = 2; round <= 3; round++) {
      await v.write(roundWrites(140 + round, SIZE));
      const delta = await v.snapshot('live-rotate');
      expect(delta.snapshot.kind).toBe('delta');
      expect(delta.snapshot.parent).toBe(`snap-${round - 1}`);
      expect(delta.vmPauseMs).toBe(0);
      await v.expectChain();
      // The base still reads snap-1 from the store (an offline snapshot made it so).
      await v.expectQemuView([snap1]);
    }
    expect((await virsh(['domstate', '--reason', v.dom.name])).trim()).toBe('running (booted)');
  });
});
