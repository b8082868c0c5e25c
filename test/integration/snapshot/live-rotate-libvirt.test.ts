// Issue 15: after live rotations libvirt tells the truth. One running type='qemu' domain on a plain
// file pool, five live-rotate snapshots, then in sequence the operations that follow in real life,
// each followed by a check that libvirt's description is the chain QEMU really reads, a read-back
// of the whole disk through the (new) QEMU compared with an independent raw reference, and the next
// snapshot (a delta holding exactly the disk of its moment):
//   domblkinfo + dumpxml → blockresize (grow while running) → managedsave + start (what
//   libvirt-guests does at host shutdown) → save + restore → destroy + start → live migration to a
//   second libvirtd and back.
import { copyFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { deleteSnapshot, revertSnapshot } from '../../../src/snapshot/index.js';
import { checkExitCode, infoOf } from '../../support/images.js';
import { guestFlush, guestWrite, virsh } from '../../support/libvirt-fixtures.js';
import { guestWriteRound, libvirtSuite, runningVolume } from '../../support/libvirt-suite.js';
import { SecondLibvirtd } from '../../support/libvirt2.js';
import { differsFromReference, type ReferenceDisk } from '../../support/reference-images.js';
import {
  command,
  FileStepJournal,
  fileSnapshotCommand,
  jobContext,
  runCreate,
} from '../../support/snapshot-harness.js';
import { qemuChain, readBackThroughQemu } from '../../support/vm-watch.js';

const MiB = 1024 * 1024;
const { h, cleanup } = libvirtSuite('lrtruth');
let second: SecondLibvirtd | null = null;
afterAll(async () => {
  await second?.stop();
}, 120_000);

/** Oracle: two raw files hold the same bytes (`qemu-img compare`, sizes may differ by zeros). */
async function rawDiffers(a: string, b: string): Promise<string | null> {
  const r = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', a, b], {
    reject: false,
    timeout: 120_000,
  });
  if (r.exitCode === 0) return null;
  if (r.exitCode === 1) return `${a} vs ${b}: ${r.stdout}`;
  throw new Error(`qemu-img compare failed: ${r.stderr}`);
}

describe('live-rotate leaves libvirt telling the truth (file pool)', () => {
  it('after 5 rotations: domblkinfo, dumpxml, blockresize, managedsave, save/restore, restart, migration and back; each next snapshot right', async () => {
    let size = 32 * MiB;
    const {
      active: base,
      dom,
      live,
    } = await runningVolume(h, cleanup, {
      label: 'lrtruth',
      file: 'vol.qcow2',
      sizeBytes: size,
      reference: 'live.raw',
      referenceBytes: 64 * MiB,
    });
    const names: string[] = [];
    const refs: string[] = [];
    let current = base;
    let round = 0;

    const write = async (): Promise<void> => {
      round += 1;
      await guestWriteRound(dom, live, round, size);
    };
    // Reads the whole disk through QEMU (the given daemon's) and compares it with the reference.
    const readBack = async (uri?: string): Promise<void> => {
      const out = join(h.base, `readback-${round}-${uri === undefined ? 1 : 2}.raw`);
      await readBackThroughQemu(dom.name, out, size, uri);
      expect(await rawDiffers(out, live.path)).toBeNull();
    };
    // libvirt's description of the disk is the chain QEMU reads, and domblkinfo its real size.
    const libvirtIsTruthful = async (run: (args: string[]) => Promise<string> = virsh, uri?: string) => {
      const xml = await run(['dumpxml', dom.name]);
      const disk = /<disk[\s\S]*?<\/disk>/.exec(xml)![0];
      const described = [...disk.matchAll(/<source file='([^']+)'/g)].map((m) => m[1]);
      expect(described).toEqual([current, base]);
      expect((await qemuChain(dom.name, uri)).map((l) => l.filename)).toEqual(described);
      expect(await run(['domblkinfo', dom.name, 'vda'])).toMatch(new RegExp(`Capacity:\\s+${size}\\b`));
    };
    const snapshot = async (label: string): Promise<void> => {
      const name = `snap-${names.length + 1}`;
      // Any of the volume's names finds its active layer (the base name on even snapshots).
      const file = names.length % 2 === 0 ? 'vol.qcow2' : current.slice(h.pool.length + 1);
      const result = await runCreate(
        h,
        fileSnapshotCommand(h, { file, vm: dom.name, dir: 'vol', parents: names, snapshot: name }),
      );
      expect(result.strategy.name, label).toBe('live-rotate');
      expect(result.snapshot.kind, `${label}: ${result.snapshot.fullReason}`).toBe(
        names.length === 0 ? 'full' : 'delta',
      );
      expect(result.snapshot.virtualSize).toBe(size);
      expect(result.activePath).toBe(current);
      current = result.volumePath!;
      names.push(name);
      const ref = join(h.base, `ref-${name}.raw`);
      await copyFile(live.path, ref);
      refs.push(ref);
      const path = join(h.storeRoot, 'vol', name);
      expect(await checkExitCode(path)).toBe(0);
      expect(await differsFromReference(path, { path: ref } as ReferenceDisk), label).toBeNull();
      expect((await virsh(['domstate', dom.name])).trim()).toBe('running');
      expect((await readdir(h.pool)).filter((f) => !f.startsWith('.')).sort()).toEqual(
        ['vol.qcow2', current.slice(h.pool.length + 1)].sort(),
      );
    };
    const afterOperation = async (label: string): Promise<void> => {
      await libvirtIsTruthful();
      await readBack();
      await write();
      await snapshot(label);
      await guestFlush(dom);
      await libvirtIsTruthful();
    };

    for (let i = 0; i < 5; i++) {
      await write();
      await snapshot(`rotation ${i + 1}`);
    }
    await libvirtIsTruthful();
    await readBack();

    // Grow the volume while the VM runs, through libvirt: the top layer grows; the next commit
    // grows the base; the snapshot has the new size; the guest writes past the old end.
    await virsh(['blockresize', dom.name, 'vda', '48M']);
    size = 48 * MiB;
    await guestWrite(dom, 0x7e, 40 * MiB, MiB);
    await live.apply([{ pattern: 0x7e, offset: 40 * MiB, length: MiB }]);
    await afterOperation('blockresize');
    expect((await infoOf(base))['virtual-size']).toBe(size);

    // What libvirt-guests does at host shutdown: managedsave; then start restores it.
    await virsh(['managedsave', dom.name]);
    await virsh(['start', dom.name]);
    await afterOperation('managedsave + start');

    const saved = join(h.base, 'saved.img');
    await virsh(['save', dom.name, saved]);
    await virsh(['restore', saved]);
    await afterOperation('save + restore');

    await virsh(['destroy', dom.name]);
    await virsh(['start', dom.name]);
    await afterOperation('destroy + start');

    // Live migration to a second libvirtd (shared storage: the same files) and back.
    second = await SecondLibvirtd.start();
    await virsh(['migrate', '--live', '--unsafe', dom.name, second.uri]);
    await libvirtIsTruthful((args) => second!.virsh(args), second.uri);
    await readBack(second.uri);
    await execa('virsh', ['-c', second.uri, 'migrate', '--live', '--unsafe', dom.name, 'qemu:///system'], {
      timeout: 120_000,
    });
    await afterOperation('migration and back');

    // Every snapshot still equals the disk of its moment.
    for (const [i, name] of names.entries()) {
      expect(
        await differsFromReference(join(h.storeRoot, 'vol', name), { path: refs[i]! } as ReferenceDisk),
      ).toBeNull();
    }

    // A retention policy deletes the oldest snapshot of the running VM: a store-only merge (the VM
    // reads none of the store), by the volume's first name.
    const run = (type: 'snapshot.delete' | 'snapshot.revert', params: unknown) => {
      const cmd = command(type, params);
      const ctx = jobContext(cmd, new FileStepJournal(join(h.base, `${cmd.id}.json`)));
      return type === 'snapshot.delete'
        ? deleteSnapshot(ctx as never, h.deps)
        : revertSnapshot(ctx as never, h.deps);
    };
    const volume = { kind: 'file', pool: h.pool, file: 'vol.qcow2' };
    const store = { root: h.storeRoot, dir: 'vol' };
    await run('snapshot.delete', { volume, vm: dom.name, store, chain: names, snapshot: 'snap-1' });
    expect(
      await differsFromReference(join(h.storeRoot, 'vol', 'snap-2'), { path: refs[1]! } as ReferenceDisk),
    ).toBeNull();
    await libvirtIsTruthful();
    await readBack();

    // Stopped, the defined domain's description pins the layer's chain: a revert (a new image
    // under the layer's name) is refused before anything changes, naming the way out.
    await virsh(['destroy', dom.name]);
    await expect(
      run('snapshot.revert', { volume, vm: dom.name, store, chain: names.slice(1), snapshot: 'snap-2' }),
    ).rejects.toMatchObject({
      code: 'VOLUME_STATE_UNEXPECTED',
      message: expect.stringMatching(/virsh edit/),
    });
    await virsh(['start', dom.name]);
    await readBack();
  }, 300_000); // one domain through every operation in sequence (~70-100 s on this shared machine)
});
