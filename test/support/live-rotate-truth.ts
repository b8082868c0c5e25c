// The checks of the "live-rotate leaves libvirt telling the truth" suites (file pool, and block
// devices named like LVs): after each rotation and each libvirt operation, libvirt's description is
// the chain QEMU really reads and `domblkinfo` its size, the whole disk read back through the
// (new) QEMU equals an independent raw reference, and the next snapshot is a delta holding exactly
// the disk of its moment.

import { copyFile, mkdir } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { execa } from 'execa';
import { expect } from 'vitest';
import type { VolumeRef } from '../../src/protocol/index.js';
import type { SnapshotDeps } from '../../src/snapshot/index.js';
import { checkExitCode } from './images.js';
import { type Cleanup, guestFlush, type TestDomain, virsh } from './libvirt-fixtures.js';
import { guestWriteRound, runningVolume } from './libvirt-suite.js';
import type { SecondLibvirtd } from './libvirt2.js';
import { LoopLvm } from './loop-lvm.js';
import { differsFromReference, type ReferenceDisk } from './reference-images.js';
import { command, type Harness, runCreate } from './snapshot-harness.js';
import { qemuChain, readBackThroughQemu } from './vm-watch.js';

/** Oracle: two raw files hold the same bytes (`qemu-img compare`, sizes may differ by zeros). */
export async function rawDiffers(a: string, b: string): Promise<string | null> {
  const r = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', a, b], {
    reject: false,
    timeout: 120_000,
  });
  if (r.exitCode === 0) return null;
  if (r.exitCode === 1) return `${a} vs ${b}: ${r.stdout}`;
  throw new Error(`qemu-img compare failed: ${r.stderr}`);
}

/** Where a rotated volume's layers live: files of a pool, or LVs (or stand-ins) of a VG. */
export interface RotatedPool {
  /** libvirt's `<source>` attribute of this kind of disk. */
  sourceAttribute: 'file' | 'dev';
  /** The volume's first name (its base layer). */
  baseName: string;
  pathOf(name: string): string;
  /** The command's volume reference, naming the volume by `name` (any of its names). */
  volumeRef(name: string): VolumeRef;
  /** Names of the volume's layers that exist now. */
  layers(): Promise<string[]>;
}

/** One running domain's rotations and the checks after each of them. */
export class RotationChecks {
  readonly names: string[] = [];
  readonly refs: string[] = [];
  current: string;
  private round = 0;

  constructor(
    private readonly h: Harness,
    private readonly deps: SnapshotDeps,
    readonly dom: TestDomain,
    readonly live: ReferenceDisk,
    private readonly pool: RotatedPool,
    /** The disk's virtual size (a test that grows it sets it). */
    public size: number,
  ) {
    this.current = this.base;
  }

  get base(): string {
    return this.pool.pathOf(this.pool.baseName);
  }

  /** A round of guest writes, mirrored into the live reference. */
  async write(): Promise<void> {
    this.round += 1;
    await guestWriteRound(this.dom, this.live, this.round, this.size);
  }

  /** Reads the whole disk through QEMU (the given daemon's) and compares it with the reference. */
  async readBack(uri?: string): Promise<void> {
    const out = join(this.h.base, `readback-${this.round}-${uri === undefined ? 1 : 2}.raw`);
    await readBackThroughQemu(this.dom.name, out, this.size, uri);
    expect(await rawDiffers(out, this.live.path)).toBeNull();
  }

  /** libvirt's description of the disk is the chain QEMU reads, and domblkinfo its real size. */
  async libvirtIsTruthful(run: (args: string[]) => Promise<string> = virsh, uri?: string): Promise<void> {
    const xml = await run(['dumpxml', this.dom.name]);
    const disk = /<disk[\s\S]*?<\/disk>/.exec(xml)![0];
    const attribute = new RegExp(`<source ${this.pool.sourceAttribute}='([^']+)'`, 'g');
    const described = [...disk.matchAll(attribute)].map((m) => m[1]);
    expect(described).toEqual(this.current === this.base ? [this.base] : [this.current, this.base]);
    expect((await qemuChain(this.dom.name, uri)).map((l) => l.filename)).toEqual(described);
    expect(await run(['domblkinfo', this.dom.name, 'vda'])).toMatch(
      new RegExp(`Capacity:\\s+${this.size}\\b`),
    );
  }

  /** The next live-rotate snapshot through the engine, and everything it must leave behind. */
  async snapshot(label: string): Promise<void> {
    const name = `snap-${this.names.length + 1}`;
    // Any of the volume's names finds its active layer: the base name on even snapshots.
    const by = this.names.length % 2 === 0 ? this.pool.baseName : basename(this.current);
    const result = await runCreate(
      this.h,
      command('snapshot.create', {
        volume: this.pool.volumeRef(by),
        vm: this.dom.name,
        store: { root: this.h.storeRoot, dir: 'vol' },
        parents: this.names,
        snapshot: name,
      }),
      this.deps,
    );
    expect(result.strategy.name, label).toBe('live-rotate');
    expect(result.snapshot.kind, `${label}: ${result.snapshot.fullReason}`).toBe(
      this.names.length === 0 ? 'full' : 'delta',
    );
    expect(result.snapshot.virtualSize).toBe(this.size);
    expect(result.activePath).toBe(this.current);
    this.current = result.volumePath!;
    this.names.push(name);
    const ref = join(this.h.base, `ref-${name}.raw`);
    await copyFile(this.live.path, ref);
    this.refs.push(ref);
    const path = join(this.h.storeRoot, 'vol', name);
    expect(await checkExitCode(path)).toBe(0);
    expect(await differsFromReference(path, { path: ref } as ReferenceDisk), label).toBeNull();
    expect((await virsh(['domstate', this.dom.name])).trim()).toBe('running');
    expect((await this.pool.layers()).sort()).toEqual([this.pool.baseName, basename(this.current)].sort());
  }

  /** After a libvirt operation: libvirt truthful, the disk reads right, the next snapshot is right. */
  async afterOperation(label: string): Promise<void> {
    await this.libvirtIsTruthful();
    await this.readBack();
    await this.write();
    await this.snapshot(label);
    await guestFlush(this.dom);
    await this.libvirtIsTruthful();
  }

  /**
   * The libvirt operations that follow in real life, each followed by afterOperation: managedsave +
   * start (what libvirt-guests does at host shutdown), save + restore, destroy + start, and live
   * migration to a second libvirtd (`startSecond`; shared storage) and back.
   */
  async throughLibvirtOperations(startSecond: () => Promise<SecondLibvirtd>): Promise<void> {
    const dom = this.dom.name;
    await virsh(['managedsave', dom]);
    await virsh(['start', dom]);
    await this.afterOperation('managedsave + start');

    const saved = join(this.h.base, 'saved.img');
    await virsh(['save', dom, saved]);
    await virsh(['restore', saved]);
    await this.afterOperation('save + restore');

    await virsh(['destroy', dom]);
    await virsh(['start', dom]);
    await this.afterOperation('destroy + start');

    const second = await startSecond();
    await virsh(['migrate', '--live', '--unsafe', dom, second.uri]);
    await this.libvirtIsTruthful((args) => second.virsh(args), second.uri);
    await this.readBack(second.uri);
    await execa('virsh', ['-c', second.uri, 'migrate', '--live', '--unsafe', dom, 'qemu:///system'], {
      timeout: 120_000,
    });
    await this.afterOperation('migration and back');
  }

  /** Every snapshot still equals the disk of its moment. */
  async snapshotsStillRight(): Promise<void> {
    for (const [i, name] of this.names.entries()) {
      const path = join(this.h.storeRoot, 'vol', name);
      expect(await differsFromReference(path, { path: this.refs[i]! } as ReferenceDisk), name).toBeNull();
    }
  }
}

/**
 * A running domain on a QCOW2 volume `vol` of `sizeBytes` on a LoopLvm "VG" (block devices named
 * like LVs, in the harness's base directory), the engine's deps using that VG, and the rotation
 * checks of its disk. The reference is `referenceBytes` long (default: the volume's size).
 */
export async function rotatingLoopLvmVolume(
  h: Harness,
  cleanup: Cleanup,
  opts: { label: string; sizeBytes: number; referenceBytes?: number },
) {
  const lvDir = join(h.base, 'lvs');
  await mkdir(lvDir);
  const vg = await LoopLvm.create(cleanup, lvDir, 1024 * 1024 * 1024);
  const deps: SnapshotDeps = { ...h.deps, lvm: vg.asLvm() };
  const { fullyAllocatedBytes } = await h.deps.qemuImg.measure({ sizeBytes: opts.sizeBytes });
  await vg.createVolume({ vg: vg.vg, name: 'vol', sizeBytes: fullyAllocatedBytes });
  const { dom, live } = await runningVolume(h, cleanup, {
    label: opts.label,
    device: vg.pathOf('vol'),
    sizeBytes: opts.sizeBytes,
    reference: 'live.raw',
    ...(opts.referenceBytes === undefined ? {} : { referenceBytes: opts.referenceBytes }),
  });
  const pool: RotatedPool = {
    sourceAttribute: 'dev',
    baseName: 'vol',
    pathOf: (name) => vg.pathOf(name),
    volumeRef: (name) => ({ kind: 'lvm', vg: vg.vg, lv: name }),
    layers: async () => (await vg.listVolumes(vg.vg)).map((lv) => lv.name),
  };
  return { vg, deps, dom, live, pool, r: new RotationChecks(h, deps, dom, live, pool, opts.sizeBytes) };
}
