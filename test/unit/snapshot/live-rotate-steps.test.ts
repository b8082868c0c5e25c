// live-rotate's step list with a fake block graph: the switch (and the freeze around it), the
// commit only while QEMU runs on the new layer, and which merged layers are removed.
// (The real thing: test/integration/snapshot/live-rotate-*.test.ts.)
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QmpError } from '../../../src/errors/index.js';
import { refuseUnmergedLayers, unmergedLayers } from '../../../src/snapshot/live-layers.js';
import type { Step } from '../../../src/snapshot/steps.js';
import { strategyOf } from '../../../src/snapshot/strategies/index.js';
import { FileVolumeBackend } from '../../../src/snapshot/volumes.js';
import { createPlan, FakeBlockGraph, fakeDeps, io, type Log, memoryJournal } from './strategy-fakes.js';

describe('live-rotate steps (fakes)', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'h16-lr-steps-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  function setup(
    over: Parameters<typeof createPlan>[1] = {},
    fakes: Omit<NonNullable<Parameters<typeof fakeDeps>[2]>, 'chains'> = {},
  ) {
    const log: Log = [];
    const graph = new FakeBlockGraph(log);
    const base = join(dir, 'vol.qcow2');
    const frozen = join(dir, 'vol.qcow2.lr-a');
    const overlay = join(dir, 'vol.qcow2.lr-b');
    const deps = fakeDeps(log, graph, { chains: { [overlay]: [overlay, base] }, ...fakes });
    const plan = createPlan(dir, {
      strategy: 'live-rotate',
      activePath: frozen,
      stagingName: 'vol.qcow2.lr-b',
      liveLayers: [frozen, base],
      ...over,
    });
    const backend = new FileVolumeBackend(deps, dir, 'vol.qcow2.lr-a');
    const journal = memoryJournal();
    const steps = strategyOf('live-rotate').steps(plan, backend, deps, journal);
    const step = (name: string): Step => steps.steps.find((s) => s.name === name)!;
    return { log, graph, journal, steps, step, base, frozen, overlay, deps, backend };
  }

  it('has switch as its point of no return', () => {
    expect(setup().steps.pointOfNoReturn).toBe('switch');
  });

  it('switch: libvirt puts the overlay on top, the guest frozen around it; the time is journaled', async () => {
    const { log, graph, step, journal, frozen, base, overlay } = setup({ quiesce: true });
    graph.described = [[frozen, base]];
    await step('switch').run(io);
    expect(log).toEqual([
      'graph.describedChain vdb live',
      'graph.freeze',
      `graph.switchToOverlay vdb ${overlay}`,
      'graph.thaw',
    ]);
    expect(journal.get().facts).toMatchObject({ frozenByUs: null, quiesced: 'yes' });
    expect(typeof journal.get().facts.switchMs).toBe('number');
  });

  it('switch again after a crash: nothing when libvirt already lists the overlay on top', async () => {
    const { log, graph, step, overlay, base, frozen } = setup();
    graph.described = [[overlay, frozen, base]];
    await step('switch').run(io);
    expect(await step('switch').isDone!()).toBe(true);
    expect(log.filter((l) => l.includes('switchToOverlay'))).toEqual([]);
  });

  it('switch isDone with the domain gone: only an overlay holding data counts', async () => {
    const { graph, step } = setup();
    graph.described = [null];
    expect(await step('switch').isDone!()).toBe(false);
  });

  it('commit-frozen: merges the old top into the base and waits until libvirt drops it', async () => {
    const { log, graph, step, journal, frozen, base, overlay } = setup();
    graph.described = [
      [overlay, frozen, base],
      [overlay, frozen, base],
      [overlay, base],
    ];
    await step('commit-frozen').run(io);
    expect(log).toEqual([
      'graph.holdsDisks h16-vm',
      'graph.holdsDisks h16-vm',
      'graph.describedChain vdb live',
      // Before the commit's first write: to the base, and (as it completes) to the overlay's header.
      `filePool.flushHandle ${base}`,
      `filePool.flushHandle ${overlay}`,
      `graph.startCommit ${frozen} ${base}`,
      'graph.waitForBlockJob vdb',
      'graph.describedChain vdb live',
      'graph.waitForBlockJob vdb',
      'graph.describedChain vdb live',
    ]);
    expect(journal.get().facts.commitStarted).toBe(true);
  });

  it('commit-frozen stops, keeping every layer, when the VM runs on the old top again', async () => {
    const { log, graph, step, frozen, base } = setup();
    graph.described = [[frozen, base]];
    await expect(step('commit-frozen').run(io)).rejects.toMatchObject({ code: 'VOLUME_STATE_UNEXPECTED' });
    expect(log.some((l) => l.startsWith('graph.startCommit'))).toBe(false);
  });

  it('commit-frozen: nothing on the first rotation (the old top is the base) or with the VM stopped', async () => {
    const first = setup({ liveLayers: [join(dir, 'vol.qcow2.lr-a')] });
    await first.step('commit-frozen').run(io);
    await first.step('remove-frozen').run(io); // nothing merged: reads nothing (a pool fault cannot fail it)
    expect(first.log).toEqual([]);
    const stopped = setup();
    stopped.graph.holds = false;
    await stopped.step('commit-frozen').run(io);
    expect(stopped.log).toEqual(['graph.holdsDisks h16-vm']);
  });

  it('remove-frozen removes a merged layer only when neither the headers nor libvirt name it', async () => {
    const merged = setup();
    merged.graph.described = [[merged.overlay, merged.base]];
    await merged.step('remove-frozen').run(io);
    // The base and the overlay flushed first (here through ones opened now: this process did not
    // run the commit).
    expect(merged.log.filter((l) => !l.startsWith('graph.'))).toEqual([
      `filePool.flushHandle ${merged.base}`,
      `flush.sync ${merged.base}`,
      `filePool.flushHandle ${merged.overlay}`,
      `flush.sync ${merged.overlay}`,
      `flush.close ${merged.base}`,
      `flush.close ${merged.overlay}`,
      `filePool.remove ${merged.frozen}`,
    ]);

    const kept = setup();
    kept.graph.described = [[kept.overlay, kept.frozen, kept.base]];
    await kept.step('remove-frozen').run(io);
    expect(kept.log.filter((l) => l.startsWith('filePool.') || l.startsWith('flush.'))).toEqual([]);
  });

  it('commit then remove-frozen: base and overlay are fsynced through the descriptors opened before the commit', async () => {
    const { log, graph, step, frozen, base, overlay } = setup();
    graph.described = [
      [overlay, frozen, base],
      [overlay, frozen, base],
      [overlay, base],
    ];
    await step('commit-frozen').run(io);
    await step('remove-frozen').run(io);
    expect(log.filter((l) => !l.startsWith('graph.'))).toEqual([
      `filePool.flushHandle ${base}`,
      `filePool.flushHandle ${overlay}`,
      `flush.sync ${base}`,
      `flush.sync ${overlay}`,
      `flush.close ${base}`,
      `flush.close ${overlay}`,
      `filePool.remove ${frozen}`,
    ]);
  });

  it('remove-frozen keeps and marks the layer when the overlay (its header, rewritten by the commit) does not flush (P4)', async () => {
    const eio = Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
    const { log, graph, step, journal, frozen, base, overlay } = setup(
      {},
      { flushError: eio, flushFailsOn: join(dir, 'vol.qcow2.lr-b'), existing: [join(dir, 'vol.qcow2.lr-a')] },
    );
    graph.described = [[overlay, base]];
    await expect(step('remove-frozen').run(io)).rejects.toMatchObject({
      code: 'LAYER_MERGE_NOT_DURABLE',
      details: { base, keptLayers: [frozen], marked: [frozen] },
    });
    expect(log.filter((l) => l.startsWith('flush.sync') || l.startsWith('filePool.remove'))).toEqual([
      `flush.sync ${base}`,
      `flush.sync ${overlay}`,
    ]);
    expect(journal.get().facts.mergeNotDurable).toBe(`${overlay}: EIO: i/o error, fsync`);
    await rm(join(dir, '.vol.qcow2.lr-a.clvm-unmerged.json'));
  });

  it('remove-frozen keeps and marks a merged layer when the base does not flush: LAYER_MERGE_NOT_DURABLE', async () => {
    const eio = Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
    const { log, graph, step, frozen, base, overlay, backend } = setup(
      {},
      { flushError: eio, existing: [join(dir, 'vol.qcow2.lr-a')] },
    );
    graph.described = [
      [overlay, frozen, base],
      [overlay, frozen, base],
      [overlay, base],
    ];
    await step('commit-frozen').run(io);
    const failed = step('remove-frozen').run(io);
    await expect(failed).rejects.toMatchObject({
      code: 'LAYER_MERGE_NOT_DURABLE',
      retryable: false,
      details: { base, keptLayers: [frozen], marked: [frozen], markError: null },
    });
    expect(log.some((l) => l.startsWith('filePool.remove'))).toBe(false);
    expect(log.filter((l) => l.startsWith('flush.'))).toEqual([
      `flush.sync ${base}`,
      `flush.close ${base}`,
      `flush.close ${overlay}`,
    ]);
    // The mark: the next snapshot of the volume refuses, naming the kept layer.
    expect(await unmergedLayers(backend)).toEqual([frozen]);
    await expect(refuseUnmergedLayers(backend)).rejects.toMatchObject({
      code: 'LAYER_MERGE_NOT_DURABLE',
      details: { keptLayers: [frozen], base },
    });
    await rm(join(dir, '.vol.qcow2.lr-a.clvm-unmerged.json'));
  });

  it('remove-frozen seals the base in QEMU (read-only reopen: its flush) before the fsync, while QEMU holds it', async () => {
    const { log, graph, step, frozen, base, overlay } = setup();
    graph.described = [[overlay, base]];
    await step('remove-frozen').run(io);
    const order = log.filter(
      (l) => l.startsWith('graph.sealLayer') || l.startsWith('flush.') || l.startsWith('filePool.remove'),
    );
    expect(order).toEqual([
      `graph.sealLayer vdb ${base}`,
      `flush.sync ${base}`,
      `flush.sync ${overlay}`,
      `flush.close ${base}`,
      `flush.close ${overlay}`,
      `filePool.remove ${frozen}`,
    ]);

    const stopped = setup();
    stopped.graph.described = [[stopped.overlay, stopped.base]];
    stopped.graph.holds = false; // QEMU gone: it flushed (or lost) at its exit, the fsync tells
    await stopped.step('remove-frozen').run(io);
    expect(stopped.log.some((l) => l.startsWith('graph.sealLayer'))).toBe(false);
    expect(stopped.log).toContain(`flush.sync ${stopped.base}`);
  });

  it('remove-frozen: QEMU refusing to seal the base (its flush failed) keeps and marks the layer, no fsync', async () => {
    const { log, graph, step, journal, frozen, base, overlay } = setup(
      {},
      { existing: [join(dir, 'vol.qcow2.lr-a')] },
    );
    graph.described = [[overlay, base]];
    graph.sealError = new QmpError({
      domain: 'vm',
      command: 'blockdev-reopen',
      qmpClass: 'GenericError',
      desc: 'Error flushing drive: Input/output error',
    });
    await expect(step('remove-frozen').run(io)).rejects.toMatchObject({
      code: 'LAYER_MERGE_NOT_DURABLE',
      details: { base, keptLayers: [frozen], marked: [frozen] },
    });
    expect(log.some((l) => l.startsWith('flush.sync') || l.startsWith('filePool.remove'))).toBe(false);
    expect(journal.get().facts.mergeNotDurable).toMatch(/Error flushing drive/);
    await rm(join(dir, '.vol.qcow2.lr-a.clvm-unmerged.json'));
  });

  it('remove-frozen: libvirt failing to answer the seal fails the step as it is (nothing marked, nothing removed)', async () => {
    const { log, graph, step, journal, overlay, base, backend } = setup(
      {},
      { existing: [join(dir, 'vol.qcow2.lr-a')] },
    );
    graph.described = [[overlay, base]];
    graph.sealError = new Error('virsh timed out');
    await expect(step('remove-frozen').run(io)).rejects.toThrow('virsh timed out');
    expect(log.some((l) => l.startsWith('flush.sync') || l.startsWith('filePool.remove'))).toBe(false);
    expect(journal.get().facts.mergeNotDurable).toBeUndefined();
    expect(await unmergedLayers(backend)).toEqual([]);
  });

  it('remove-frozen resumed after a failed flush: no second fsync (it would say 0), the layer stays', async () => {
    const { log, graph, step, journal, frozen, base, overlay } = setup(
      {},
      { existing: [join(dir, 'vol.qcow2.lr-a')] },
    );
    graph.described = [[overlay, base]];
    await journal.update((r) => {
      r.facts.mergeNotDurable = 'EIO: i/o error, fsync';
    });
    await expect(step('remove-frozen').run(io)).rejects.toMatchObject({
      code: 'LAYER_MERGE_NOT_DURABLE',
      details: { keptLayers: [frozen], marked: [frozen] },
    });
    expect(log.filter((l) => l.startsWith('filePool.') || l.startsWith('flush.'))).toEqual([]);
    await rm(join(dir, '.vol.qcow2.lr-a.clvm-unmerged.json'));
  });
});
