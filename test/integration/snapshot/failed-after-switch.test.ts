// live-rotate failing after its point of no return (the store refuses the export): nothing is
// undone, the VM keeps running on a three-layer chain that opens whole, no write is lost; the next
// snapshot of the volume is a full one and removes the frozen layer the failed job left behind.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AgentError, HostCommandError } from '../../../src/errors/index.js';
import type { QemuImg } from '../../../src/host/qemu-img.js';
import { checkExitCode, infoOf } from '../../helpers/images.js';
import {
  createQcow2,
  guestFlush,
  guestWrite,
  startTestDomain,
  virsh,
} from '../../helpers/libvirt-fixtures.js';
import { differsFromReference, ReferenceDisk, roundWrites } from '../../helpers/reference-images.js';
import { qemuOpenFilesUnder } from '../../helpers/vm-watch.js';
import { fileSnapshotCommand, runCreate } from './harness.js';
import { libvirtSuite } from './suite.js';

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
    const active = join(h.pool, 'vol1.qcow2');
    await createQcow2(active, SIZE / MiB);
    const dom = await startTestDomain(cleanup, { label: 'lrfail', disk: { type: 'file', path: active } });
    const live = await ReferenceDisk.create(join(h.base, 'ref-live.raw'), SIZE);
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
      const writes = roundWrites(round, SIZE);
      for (const w of writes) await guestWrite(dom, w.pattern, w.offset, w.length);
      await live.apply(writes);
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
    expect((failure as AgentError).details).toMatchObject({ rolledBack: false, step: 'export' });

    // The VM writes on; the volume path opens overlay → frozen layer → snap-1, all of it.
    await write(3);
    await guestFlush(dom);
    expect((await virsh(['domstate', dom.name])).trim()).toBe('running');
    expect(await checkExitCode(active)).toBe(0);
    expect(await differsFromReference(active, live)).toBeNull();
    const pool = await readdir(h.pool);
    expect(pool).toHaveLength(2);
    expect(pool.some((f) => /^vol1\.qcow2\.old-[0-9a-f]{10}$/.test(f))).toBe(true);

    // The next snapshot copies the whole chain (the active no longer backs onto snap-1) and
    // removes both frozen layers.
    const next = await snapshot('snap-3', ['snap-1']);
    expect(next.snapshot.kind).toBe('full');
    expect(next.snapshot.fullReason).toMatch(/does not back onto parent snap-1/);
    const reference = await live.freeze(join(h.base, 'ref-3.raw'));
    expect(await differsFromReference(next.snapshot.path, reference)).toBeNull();
    expect(await readdir(h.pool)).toEqual(['vol1.qcow2']);
    expect((await infoOf(active))['backing-filename']).toBe(next.snapshot.path);
    // QEMU let go of every frozen layer (an fdset left behind would keep a removed file open).
    expect(await qemuOpenFilesUnder(dom.name, h.pool)).toEqual([active]);
    expect(await qemuOpenFilesUnder(dom.name, h.storeRoot)).toEqual([next.snapshot.path]);
    await write(4);
    await guestFlush(dom);
    expect(await differsFromReference(active, live)).toBeNull();
    expect((await virsh(['domstate', dom.name])).trim()).toBe('running');
  });
});
