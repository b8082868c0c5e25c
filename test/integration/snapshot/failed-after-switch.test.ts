// live-rotate failing after its point of no return (the store refuses the export): nothing is
// undone, the failure names the volume's new active layer, the VM keeps running on a three-layer
// chain that libvirt describes as it is, no write is lost; the next snapshot of the volume is a
// full one and merges the layer the failed job left behind into the base.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AgentError, HostCommandError } from '../../../src/errors/index.js';
import type { QemuImg } from '../../../src/host/qemu-img.js';
import { checkExitCode, infoOf } from '../../support/images.js';
import { guestFlush, virsh } from '../../support/libvirt-fixtures.js';
import { guestWriteRound, libvirtSuite, runningVolume } from '../../support/libvirt-suite.js';
import { differsFromReference } from '../../support/reference-images.js';
import { fileSnapshotCommand, runCreate } from '../../support/snapshot-harness.js';
import { qemuChain, qemuOpenFilesUnder } from '../../support/vm-watch.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
const { h, cleanup } = libvirtSuite('lrfail');

/** The real QemuImg, except that every convert fails the way a full store makes it fail. */
function storeFullQemuImg(real: QemuImg): QemuImg {
  return Object.create(real, {
    convert: {
      value: async () => {
        throw new HostCommandError('no-space', 'qemu-img convert failed: No space left on device', {
          command: 'qemu-img',
          args: ['convert'],
          exitCode: 1,
          stderr: 'No space left on device',
        });
      },
    },
  }) as QemuImg;
}

describe('live-rotate failing after the switch', () => {
  it('keeps every write, and the next snapshot is full and cleans up', async () => {
    const { active, dom, live } = await runningVolume(h, cleanup, { label: 'lrfail', file: 'vol1.qcow2' });
    const snapshot = async (name: string, parents: string[], deps = h.deps) => {
      const cmd = fileSnapshotCommand(h, {
        file: 'vol1.qcow2',
        vm: dom.name,
        dir: 'vol1',
        parents,
        snapshot: name,
        options: { strategy: 'live-rotate' },
      });
      return runCreate(h, cmd, deps);
    };
    const write = async (round: number) => {
      await guestWriteRound(dom, live, round, SIZE);
    };

    await write(1);
    await snapshot('snap-1', []);
    await write(2);
    const failure = await snapshot('snap-2', ['snap-1'], {
      ...h.deps,
      qemuImg: storeFullQemuImg(h.deps.qemuImg),
    }).then(
      () => null,
      (error: unknown) => error,
    );
    expect(failure).toBeInstanceOf(AgentError);
    const details = (failure as AgentError).details;
    expect(details).toMatchObject({ rolledBack: false, step: 'export', volumePath: `${active}.lr-b` });

    // The VM writes on; libvirt describes the three layers QEMU reads: lr-b → lr-a → base.
    await write(3);
    await guestFlush(dom);
    expect((await virsh(['domstate', dom.name])).trim()).toBe('running');
    const three = [`${active}.lr-b`, `${active}.lr-a`, active];
    expect((await qemuChain(dom.name)).map((n) => n.path)).toEqual(three);
    expect(await virsh(['domblklist', dom.name])).toContain(`${active}.lr-b`);
    expect(await checkExitCode(three[0]!)).toBe(0);
    expect(await differsFromReference(three[0]!, live)).toBeNull();

    // The next snapshot copies the whole chain (the active layer does not hold exactly the writes
    // since snap-1) and merges both older layers into the base.
    const next = await snapshot('snap-3', ['snap-1']);
    expect(next.snapshot.kind).toBe('full');
    expect(next.snapshot.fullReason).toMatch(/does not back onto parent snap-1/);
    const reference = await live.freeze(join(h.base, 'ref-3.raw'));
    expect(await differsFromReference(next.snapshot.path, reference)).toBeNull();
    const current = next.volumePath!;
    expect(current).toBe(`${active}.lr-c`);
    expect((await readdir(h.pool)).filter((f) => !f.startsWith('.')).sort()).toEqual([
      'vol1.qcow2',
      'vol1.qcow2.lr-c',
    ]);
    expect((await infoOf(current))['backing-filename']).toBe(active);
    // QEMU let go of every merged layer and never opened a store file.
    expect(await qemuOpenFilesUnder(dom.name, h.pool)).toEqual([active, current].sort());
    expect(await qemuOpenFilesUnder(dom.name, h.storeRoot)).toEqual([]);
    await write(4);
    await guestFlush(dom);
    expect(await differsFromReference(current, live)).toBeNull();
    expect((await virsh(['domstate', dom.name])).trim()).toBe('running');
  });
});
