// lvm-cow's step list with a fake block graph and libvirt: what runs inside the VM's pause and in
// which order, how repoint attaches a backing node only where QEMU needs one, and its undo/isDone.
// (The real thing: test/integration/snapshot/lvm-cow-chain.test.ts, crash-lvm-cow.test.ts.)
import { describe, expect, it } from 'vitest';
import type { Step } from '../../../src/snapshot/steps.js';
import { strategyOf } from '../../../src/snapshot/strategies/index.js';
import type { VolumeBackend } from '../../../src/snapshot/volumes.js';
import {
  createPlan,
  FakeBlockGraph,
  fakeDeps,
  io,
  type Log,
  layer,
  memoryJournal,
} from './strategy-fakes.js';

const dir = '/nonexistent/h16-lvm-cow';

function setup(over: Parameters<typeof createPlan>[1] = {}, backing: Record<string, string | null> = {}) {
  const log: Log = [];
  const graph = new FakeBlockGraph(log);
  const deps = fakeDeps(log, graph, { backing });
  const plan = createPlan(dir, { strategy: 'lvm-cow', ...over });
  const backend = {
    kind: 'file',
    activePath: plan.activePath,
    activeName: 'vol.qcow2',
    pathOf: (name: string) => `${dir}/${name}`,
    remove: async (name: string) => {
      log.push(`backend.remove ${name}`);
      return true;
    },
    cowClone: async (name: string, opts?: { whilePaused?: boolean }) => {
      log.push(`backend.cowClone ${name}${opts?.whilePaused ? ' whilePaused' : ''}`);
    },
    settleClone: async (name: string) => {
      log.push(`backend.settleClone ${name}`);
    },
  } as unknown as VolumeBackend;
  const journal = memoryJournal();
  const steps = strategyOf('lvm-cow').steps(plan, backend, deps, journal);
  const step = (name: string): Step => steps.steps.find((s) => s.name === name)!;
  return { log, graph, plan, journal, steps, step };
}

describe('lvm-cow steps (fakes)', () => {
  it('has repoint as its point of no return', () => {
    expect(setup().steps.pointOfNoReturn).toBe('repoint');
  });

  it('clone: only the clone between suspend and resume; the freeze around the pause', async () => {
    const { log, step, journal } = setup({ quiesce: true });
    await step('clone').run(io);
    expect(log).toEqual([
      'backend.remove vol.qcow2.cow-t1',
      'graph.freeze',
      'libvirt.suspend h16-vm',
      'backend.cowClone vol.qcow2.cow-t1 whilePaused',
      'libvirt.resume h16-vm',
      'graph.thaw',
      'backend.settleClone vol.qcow2.cow-t1',
    ]);
    expect(journal.get()).toMatchObject({ pausedByUs: null, facts: { frozenByUs: null, quiesced: 'yes' } });
  });

  it('clone of a stopped VM: no pause, no freeze', async () => {
    const { log, step } = setup({ vmRunning: false, quiesce: true });
    await step('clone').run(io);
    expect(log).toEqual(['backend.remove vol.qcow2.cow-t1', 'backend.cowClone vol.qcow2.cow-t1']);
  });

  it('repoint of a one-layer disk: opens snap-N before the pause, attaches it and writes the name inside', async () => {
    const { log, graph, plan, step } = setup();
    graph.chainNow = [layer('libvirt-1-format', plan.activePath)];
    await step('repoint').run(io);
    expect(log).toEqual([
      'graph.chain h16-vm/vdb',
      `graph.openLayer snap-t1 ${plan.snapshotPath}`,
      'libvirt.suspend h16-vm',
      'graph.attachBacking libvirt-1-format snap-t1',
      `graph.writeBackingName libvirt-1-format ${plan.snapshotPath}`,
      'libvirt.resume h16-vm',
    ]);
  });

  it('repoint of a disk that has a backing: only the name, inside the pause', async () => {
    const { log, graph, plan, step } = setup();
    graph.chainNow = [layer('top', plan.activePath, plan.parentPath), layer('snap1', plan.parentPath!)];
    await step('repoint').run(io);
    expect(log).toEqual([
      'graph.chain h16-vm/vdb',
      'libvirt.suspend h16-vm',
      `graph.writeBackingName top ${plan.snapshotPath}`,
      'libvirt.resume h16-vm',
    ]);
  });

  it('repoint resumes the VM when QEMU refuses inside the pause, and undo closes the node it opened', async () => {
    const { log, graph, plan, step, journal } = setup();
    graph.chainNow = [layer('top', plan.activePath)];
    graph.failOn = 'writeBackingName';
    await expect(step('repoint').run(io)).rejects.toThrow(/fake failure/);
    expect(log.slice(-2)).toEqual([
      `graph.writeBackingName top ${plan.snapshotPath}`,
      'libvirt.resume h16-vm',
    ]);
    expect(journal.get().pausedByUs).toBeNull();
    log.length = 0;
    await step('repoint').undo!();
    expect(log).toEqual(['graph.holdsDisks h16-vm', 'graph.closeDetachedLayer vdb snap-t1']);
  });

  it('repoint does nothing once the header names snap-N; isDone reads the header, then QEMU', async () => {
    const done = setup({}, { [`${dir}/vol.qcow2`]: `${dir}/store/snap-2` });
    await done.step('repoint').run(io);
    expect(await done.step('repoint').isDone!()).toBe(true);
    expect(done.log).toEqual([]);

    const open = setup();
    open.graph.chainNow = [layer('top', open.plan.activePath), layer('snap-t1', open.plan.snapshotPath)];
    expect(await open.step('repoint').isDone!()).toBe(true);
    open.graph.chainNow = [layer('top', open.plan.activePath)];
    expect(await open.step('repoint').isDone!()).toBe(false);
    open.graph.holds = false;
    open.log.length = 0;
    expect(await open.step('repoint').isDone!()).toBe(false);
    expect(open.log).toEqual(['graph.holdsDisks h16-vm']);
  });

  it('repoint of a stopped VM rewrites the header with qemu-img, no graph', async () => {
    const { log, step, plan } = setup({ vmRunning: false });
    await step('repoint').run(io);
    expect(log).toEqual([`qemuImg.rebase ${plan.activePath}`]);
  });
});
