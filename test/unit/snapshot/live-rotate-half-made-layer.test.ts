// live-rotate after a power cut in create-overlay, with the VM gone: the new layer's LV (or file)
// exists but `qemu-img create` never wrote its header. Its rollback removes it (it holds nothing,
// QEMU never opened it); qemu-img would refuse it ("Image is not in qcow2 format"), which left the
// layer behind and every later command on the volume failing (found by the power-cut matrix).
// A layer with a header and guest data is still kept.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostCommandError } from '../../../src/errors/index.js';
import type { Step } from '../../../src/snapshot/steps.js';
import { strategyOf } from '../../../src/snapshot/strategies/index.js';
import { FileVolumeBackend } from '../../../src/snapshot/volumes.js';
import { createPlan, FakeBlockGraph, fakeDeps, type Log, memoryJournal } from './strategy-fakes.js';

describe('live-rotate: a half-made new layer after a power cut (fakes)', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pclr-half-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  function setup() {
    const log: Log = [];
    const graph = new FakeBlockGraph(log);
    graph.holds = false;
    graph.described = [null]; // the domain is gone
    const base = join(dir, 'vol.qcow2');
    const frozen = join(dir, 'vol.qcow2.lr-a');
    const overlay = join(dir, 'vol.qcow2.lr-b');
    const deps = fakeDeps(log, graph);
    (deps.filePool as unknown as { exists: () => Promise<boolean> }).exists = async () => true;
    // As qemu-img answers for a file with no QCOW2 header.
    (deps.qemuImg as unknown as { allocatedBytes: () => Promise<number> }).allocatedBytes = async () => {
      throw new HostCommandError('failed', 'qemu-img map failed: Image is not in qcow2 format', {
        command: 'qemu-img',
        args: ['map'],
        exitCode: 1,
      });
    };
    const plan = createPlan(dir, {
      strategy: 'live-rotate',
      activePath: frozen,
      stagingName: 'vol.qcow2.lr-b',
      liveLayers: [frozen, base],
    });
    const backend = new FileVolumeBackend(deps, dir, 'vol.qcow2.lr-a');
    const steps = strategyOf('live-rotate').steps(plan, backend, deps, memoryJournal());
    const step = (name: string): Step => steps.steps.find((s) => s.name === name)!;
    return { log, deps, step, overlay };
  }

  it('the switch is not done and the rollback removes a layer with no header', async () => {
    const { log, step, overlay } = setup();
    await writeFile(overlay, Buffer.alloc(4096)); // made, header not yet written (LVs start zeroed)
    expect(await step('switch').isDone!()).toBe(false);
    await step('create-overlay').undo!();
    expect(log).toContain(`filePool.remove ${overlay}`);
  });

  it('a layer with a header is asked for its data as before (and kept when it holds some)', async () => {
    const { log, deps, step, overlay } = setup();
    await rm(overlay, { force: true });
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', overlay, '1M']);
    (deps.qemuImg as unknown as { allocatedBytes: () => Promise<number> }).allocatedBytes = async () => 65536;
    await expect(step('create-overlay').undo!()).rejects.toMatchObject({ code: 'VOLUME_STATE_UNEXPECTED' });
    expect(log.filter((l) => l.startsWith('filePool.remove'))).toEqual([]);
  });
});
