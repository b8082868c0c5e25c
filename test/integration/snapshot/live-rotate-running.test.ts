// live-rotate on a running VM, watched from outside while it runs (plain file pool, the export slowed
// to 1 MiB/s with the export-rate failpoint so it lasts seconds):
// - the domain never enters the paused state: libvirt's lifecycle events (`virsh event --loop`)
//   and the run state polled from libvirt and from QEMU itself, throughout three snapshots; a
//   suspend/resume before them proves both watchers see a pause;
// - the guest keeps writing during the export, and every write made before, during and after is
//   where it should be: the snapshot holds the disk as it was at the switch, the live disk holds all.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { ProgressUpdate } from '../../../src/jobs/types.js';
import { createSnapshot } from '../../../src/snapshot/index.js';
import { checkExitCode } from '../../support/images.js';
import { guestFlush, guestWrite, type TestDomain, virsh } from '../../support/libvirt-fixtures.js';
import { libvirtSuite, runningVolume } from '../../support/libvirt-suite.js';
import {
  differsFromReference,
  type PatternWrite,
  type ReferenceDisk,
  roundWrites,
} from '../../support/reference-images.js';
import { FileStepJournal, fileSnapshotCommand, jobContext } from '../../support/snapshot-harness.js';
import { LifecycleWatch, StatePoller } from '../../support/vm-watch.js';

const MiB = 1024 * 1024;
const KiB = 1024;
const SIZE = 32 * MiB;
const { h, cleanup } = libvirtSuite('lrrun', { failpoints: 'export-rate=1M' });

async function newVolume(file: string): Promise<{ active: string; dom: TestDomain; live: ReferenceDisk }> {
  return runningVolume(h, cleanup, { label: 'lrrun', file });
}

async function write(dom: TestDomain, live: ReferenceDisk, writes: PatternWrite[]): Promise<void> {
  for (const w of writes) await guestWrite(dom, w.pattern, w.offset, w.length);
  await live.apply(writes);
}

function snapshotCommand(file: string, vm: string, parents: string[], name: string) {
  return fileSnapshotCommand(h, { file, vm, parents, snapshot: name, options: { strategy: 'live-rotate' } });
}

describe('live-rotate watched while it runs', () => {
  it('never pauses the domain: no lifecycle event, libvirt and QEMU report running throughout', async () => {
    const { dom, live } = await newVolume('nopause.qcow2');
    const watch = await LifecycleWatch.start(dom.name);
    cleanup.add('lifecycle watch', () => watch.stop());

    // Control first: both watchers see a real pause (so the event watcher is live before the jobs).
    await virsh(['suspend', dom.name]);
    const control = new StatePoller(dom.name);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const controlSeen = await control.stop();
    await virsh(['resume', dom.name]);
    expect(controlSeen.has('qemu: paused')).toBe(true);
    expect([...controlSeen.keys()].some((k) => k.startsWith('libvirt: paused'))).toBe(true);
    expect(await watch.waitFor(/Suspended/)).toBe(true);
    expect(await watch.waitFor(/Resumed/)).toBe(true);
    const controlEvents = watch.lines().length;

    const poller = new StatePoller(dom.name);
    const names: string[] = [];
    try {
      for (let round = 1; round <= 3; round++) {
        // 2 MiB more each round: the slowed export keeps the job running for seconds.
        await write(dom, live, [
          ...roundWrites(40 + round, SIZE),
          { pattern: 0x30 + round, offset: (4 + 2 * round) * MiB, length: 2 * MiB },
        ]);
        const cmd = snapshotCommand('nopause.qcow2', dom.name, names, `snap-${round}`);
        const result = await createSnapshot(
          jobContext(cmd, new FileStepJournal(join(h.base, `${cmd.id}.json`))),
          h.deps,
        );
        expect(result.strategy.name).toBe('live-rotate');
        expect(result.vmPauseMs).toBe(0);
        names.push(`snap-${round}`);
      }
    } finally {
      await poller.stop();
    }
    const seen = poller.seen;
    // "unpaused": the reason libvirt keeps since the control's resume.
    expect([...seen.keys()].sort()).toEqual(['libvirt: running (unpaused)', 'qemu: running']);
    expect(seen.get('qemu: running')).toBeGreaterThanOrEqual(5); // it really polled during the jobs
    // No lifecycle event since the control: a pause would be "Suspended", its end "Resumed".
    expect(watch.lines().slice(controlEvents)).toEqual([]);
  });

  it('the guest writes during the export: the snapshot is the disk at the switch, the live disk has every write', async () => {
    const file = 'writes.qcow2';
    const { active, dom, live } = await newVolume(file);
    const watch = await LifecycleWatch.start(dom.name);
    cleanup.add('lifecycle watch', () => watch.stop());
    const refs: ReferenceDisk[] = [];
    const names: string[] = [];

    for (let round = 1; round <= 2; round++) {
      // Before: a 4 MiB region (the export needs ~4 s) and some scattered writes.
      const region = { pattern: 0x10 + round, offset: 12 * MiB, length: 4 * MiB };
      await write(dom, live, [region, ...roundWrites(60 + round, SIZE)]);
      const atSwitch = await live.freeze(join(h.base, `${file}.ref-${round}.raw`));

      // During: from the moment the export step starts, the guest keeps writing, over the region
      // being exported and elsewhere, until the job ends.
      let step = '';
      const cmd = snapshotCommand(file, dom.name, names, `snap-${round}`);
      const ctx = jobContext(cmd, new FileStepJournal(join(h.base, `${cmd.id}.json`)), {
        onProgress: (u: ProgressUpdate) => {
          step = u.step ?? step;
        },
      });
      let jobDone = false;
      const job = createSnapshot(ctx, h.deps).finally(() => {
        jobDone = true;
      });
      job.catch(() => {}); // awaited below; this only keeps a failure from being reported as unhandled
      const during: PatternWrite[] = [];
      let whileExporting = 0;
      while (!jobDone && during.length < 60) {
        if (step !== 'export' && during.length === 0) {
          await new Promise((resolve) => setTimeout(resolve, 20));
          continue;
        }
        const i = during.length;
        const w = {
          pattern: 0x80 + ((round * 16 + i) % 100),
          // Alternate: inside the region being exported, and elsewhere on the disk.
          offset:
            i % 2 === 0 ? region.offset + ((i * 192 * KiB) % region.length) : (i * 448 * KiB) % (8 * MiB),
          length: 64 * KiB * (1 + (i % 3)),
        };
        await guestWrite(dom, w.pattern, w.offset, w.length);
        during.push(w);
        if (step === 'export') whileExporting++;
      }
      const result = await job;
      await live.apply(during);
      expect(whileExporting).toBeGreaterThanOrEqual(3);

      // After.
      await write(dom, live, roundWrites(80 + round, SIZE));
      names.push(`snap-${round}`);
      refs.push(atSwitch);

      expect(result.strategy.name).toBe('live-rotate');
      expect(result.snapshot.kind).toBe(round === 1 ? 'full' : 'delta');
      for (const [i, ref] of refs.entries()) {
        const path = join(h.storeRoot, file, `snap-${i + 1}`);
        expect(await checkExitCode(path)).toBe(0);
        expect(await differsFromReference(path, ref)).toBeNull();
      }
      await guestFlush(dom);
      // The volume's active layer is now the one the result names (on the base `active`).
      expect(result.activePath).toBe(round === 1 ? active : `${active}.lr-a`);
      const now = result.volumePath!;
      expect(now).toBe(`${active}.lr-${round === 1 ? 'a' : 'b'}`);
      expect(await checkExitCode(now)).toBe(0);
      expect(await differsFromReference(now, live)).toBeNull();
    }
    expect((await virsh(['domstate', '--reason', dom.name])).trim()).toBe('running (booted)');
    expect(watch.lines()).toEqual([]);
  });
});
