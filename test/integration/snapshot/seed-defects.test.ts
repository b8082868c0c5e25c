// The seed's known defects (docs/architecture.md), each with a test that fails on the seed's behaviour.
import { cp, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { runTool } from '../../../src/host/exec.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { removeIfUnreferenced } from '../../../src/snapshot/chain.js';
import { createSnapshot } from '../../../src/snapshot/index.js';
import { checkExitCode, infoOf, makeQcow2 } from '../../support/images.js';
import { guestWrite, startTestDomain } from '../../support/libvirt-fixtures.js';
import { libvirtSuite } from '../../support/libvirt-suite.js';
import { differsFromReference, ReferenceDisk } from '../../support/reference-images.js';
import { command, FileStepJournal, jobContext } from '../../support/snapshot-harness.js';

const MiB = 1024 * 1024;
const { h, cleanup } = libvirtSuite('seed', { reflink: true });

function snapshotCommand(file: string, dir: string, parents: string[], snapshot: string, extra: object = {}) {
  return command('snapshot.create', {
    volume: { kind: 'file', pool: h.pool, file },
    vm: null,
    store: { root: h.storeRoot, dir },
    parents,
    snapshot,
    ...extra,
  });
}

async function qemuIo(image: string, cmd: string): Promise<void> {
  await execa('qemu-io', ['-f', 'qcow2', '-c', cmd, image]);
}

describe('seed defect 1: a failure after the old active is gone must not undo (staging lost)', () => {
  it('keeps the promoted staging volume and the snapshot when a later step fails', async () => {
    const active = join(h.pool, 'd1.qcow2');
    await makeQcow2(active, 16 * MiB);
    await qemuIo(active, 'write -P 0x41 0 1M');
    const ref = await ReferenceDisk.create(join(h.base, 'd1.raw'), 16 * MiB);
    await ref.apply([{ pattern: 0x41, offset: 0, length: MiB }]);
    // The step after the point of no return fails (as the seed's answer-building did).
    const failingPool = Object.create(h.deps.filePool) as typeof h.deps.filePool;
    failingPool.remove = async (path: string) => {
      if (path.includes('.old-')) throw new Error('injected failure after the point of no return');
      return h.deps.filePool.remove(path);
    };
    const cmd = snapshotCommand('d1.qcow2', 'd1', [], 'snap-1');
    const ctx = jobContext(cmd, new FileStepJournal(join(h.base, `${cmd.id}.json`)));
    const error = await createSnapshot(ctx, { ...h.deps, filePool: failingPool }).catch((e: unknown) => e);
    expect(error).toMatchObject({ details: { rolledBack: false, step: 'remove-retired' } });
    // The seed's error handler deleted the staging volume here: the volume would not open any more.
    expect((await infoOf(active))['backing-filename']).toBe(join(h.storeRoot, 'd1', 'snap-1'));
    expect(await checkExitCode(active)).toBe(0);
    expect(await differsFromReference(active, ref)).toBeNull();
    expect(await differsFromReference(join(h.storeRoot, 'd1', 'snap-1'), ref)).toBeNull();
  });
});

describe('seed defect 2: a backing layer is removed only after proving nothing references it', () => {
  it('never touches the active image backing (a template) and refuses to remove a referenced layer', async () => {
    const template = join(h.pool, 'template.qcow2');
    await makeQcow2(template, 16 * MiB);
    await qemuIo(template, 'write -P 0x11 0 2M');
    const active = join(h.pool, 'd2.qcow2');
    await makeQcow2(active, undefined, { backing: template });
    await qemuIo(active, 'write -P 0x22 1M 1M');
    const ref = await ReferenceDisk.create(join(h.base, 'd2.raw'), 16 * MiB);
    await ref.apply([
      { pattern: 0x11, offset: 0, length: 2 * MiB },
      { pattern: 0x22, offset: MiB, length: MiB },
    ]);
    const cmd = snapshotCommand('d2.qcow2', 'd2', [], 'snap-1');
    const result = await createSnapshot(
      jobContext(cmd, new FileStepJournal(join(h.base, `${cmd.id}.json`))),
      h.deps,
    );
    expect(result.snapshot).toMatchObject({ kind: 'full', fullReason: expect.stringMatching(/no parent/) });
    // The template is still there and intact (the seed removed non-template /dev backings blindly).
    expect(await checkExitCode(template)).toBe(0);
    expect(await differsFromReference(active, ref)).toBeNull();
    expect(await differsFromReference(join(h.storeRoot, 'd2', 'snap-1'), ref)).toBeNull();

    const snap = join(h.storeRoot, 'd2', 'snap-1');
    const refused = await removeIfUnreferenced(h.deps.store, snap, [active]).catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: 'CHAIN_INVALID' });
    expect(await checkExitCode(snap)).toBe(0);
  });
});

describe('seed defect 4: backing names between store files are relative (the store may be mounted elsewhere)', () => {
  it('a chain moved to another mount point still opens and reads the same data', async () => {
    const active = join(h.pool, 'd4.qcow2');
    await makeQcow2(active, 16 * MiB);
    const names: string[] = [];
    for (let n = 1; n <= 3; n++) {
      await qemuIo(active, `write -P ${0x30 + n} ${n}M 1M`);
      const cmd = snapshotCommand('d4.qcow2', 'd4', names, `snap-${n}`);
      await createSnapshot(jobContext(cmd, new FileStepJournal(join(h.base, `${cmd.id}.json`))), h.deps);
      names.push(`snap-${n}`);
    }
    const before = join(h.base, 'd4-snap3.qcow2');
    await execa('qemu-img', ['convert', '-O', 'qcow2', join(h.storeRoot, 'd4', 'snap-3'), before]);
    expect((await infoOf(join(h.storeRoot, 'd4', 'snap-3')))['backing-filename']).toBe('snap-2');
    // "Remount" the store elsewhere: with the seed's absolute names the chain would not open.
    const moved = join(h.base, 'remounted');
    await cp(join(h.storeRoot, 'd4'), moved, { recursive: true });
    await rename(join(h.storeRoot, 'd4'), join(h.storeRoot, 'd4-gone'));
    expect(await checkExitCode(join(moved, 'snap-3'))).toBe(0);
    const { exitCode } = await execa('qemu-img', ['compare', join(moved, 'snap-3'), before], {
      reject: false,
    });
    expect(exitCode).toBe(0);
    await rename(join(h.storeRoot, 'd4-gone'), join(h.storeRoot, 'd4'));
  });
});

describe('seed defect 5: never qemu-img rebase -u on an image a running QEMU holds', () => {
  it('re-points a running VM through QMP; qemu-img rebase runs only when the VM is stopped', async () => {
    const active = join(h.pool, 'd5.qcow2');
    await makeQcow2(active, 16 * MiB);
    const calls: string[][] = [];
    const recording = new QemuImg({
      timeoutMs: 60_000,
      exportTimeoutMs: 60_000,
      run: (file, args, options) => {
        calls.push([...args]);
        return runTool(file, args, options);
      },
    });
    const deps = { ...h.deps, qemuImg: recording };
    const dom = await startTestDomain(cleanup, { label: 'seed5', disk: { type: 'file', path: active } });
    await guestWrite(dom, 0x55, 0, MiB);
    const names: string[] = [];
    // Both running-VM strategies: lvm-cow (asked for), then live-rotate (what auto picks here).
    for (const [n, strategy] of [
      [1, 'lvm-cow'],
      [2, 'auto'],
    ] as const) {
      const cmd = snapshotCommand('d5.qcow2', 'd5', names, `snap-${n}`, { options: { strategy } });
      cmd.params.vm = dom.name;
      const result = await createSnapshot(
        jobContext(cmd, new FileStepJournal(join(h.base, `${cmd.id}.json`))),
        deps,
      );
      expect(result.strategy.name).toBe(n === 1 ? 'lvm-cow' : 'live-rotate');
      names.push(`snap-${n}`);
      // lvm-cow re-points the volume at its snapshot; live-rotate puts a new layer on it.
      expect((await infoOf(active))['backing-filename']).toBe(join(h.storeRoot, 'd5', 'snap-1'));
      if (n === 2) expect((await infoOf(result.volumePath!))['backing-filename']).toBe(active);
    }
    const layer = `${active}.lr-a`;
    const rebasesOfActive = calls.filter(
      (a) => a[0] === 'rebase' && (a.includes(active) || a.includes(layer)),
    );
    expect(rebasesOfActive).toEqual([]);

    // The same strategy on the stopped VM would use rebase -u (so this test can tell the
    // difference), but libvirt now pins the layer's chain in the domain's description (it tracked
    // the rotation): a header change behind it is refused before anything runs.
    await execa('virsh', ['-c', 'qemu:///system', 'destroy', dom.name]);
    const cmd = snapshotCommand('d5.qcow2', 'd5', names, 'snap-3', { options: { strategy: 'lvm-cow' } });
    cmd.params.vm = dom.name;
    await expect(
      createSnapshot(jobContext(cmd, new FileStepJournal(join(h.base, `${cmd.id}.json`))), deps),
    ).rejects.toMatchObject({
      code: 'STRATEGY_UNAVAILABLE',
      message: expect.stringMatching(/pins the chain/),
    });
    expect(calls.filter((a) => a[0] === 'rebase')).toEqual([]);

    // A domain that pins nothing (its description names the image alone): rebase -u, only now.
    const other = join(h.pool, 'd5b.qcow2');
    await makeQcow2(other, 16 * MiB);
    const stopped = await startTestDomain(cleanup, { label: 'seed5b', disk: { type: 'file', path: other } });
    await execa('virsh', ['-c', 'qemu:///system', 'destroy', stopped.name]);
    for (const n of [1, 2]) {
      const off = snapshotCommand('d5b.qcow2', 'd5b', n === 1 ? [] : ['snap-1'], `snap-${n}`, {
        options: { strategy: 'lvm-cow' },
      });
      off.params.vm = stopped.name;
      await createSnapshot(jobContext(off, new FileStepJournal(join(h.base, `${off.id}.json`))), deps);
    }
    expect(calls.filter((a) => a[0] === 'rebase' && a.includes('-u') && a.includes(other))).toHaveLength(2);
  });
});
