// live-rotate with quiesce asked on a VM whose guest-agent channel is defined but where no agent
// answers (the usual state of a guest without qemu-ga running; this guest has no OS at all):
// the snapshot is taken crash-consistent, the result says quiesced 'unavailable', nothing is left
// marked frozen, and the data matches the reference.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createSnapshot } from '../../../src/snapshot/index.js';
import { createQcow2, startTestDomain, virsh } from '../../support/libvirt-fixtures.js';
import { chainCommand, guestWriteRound, libvirtSuite } from '../../support/libvirt-suite.js';
import { differsFromReference, ReferenceDisk } from '../../support/reference-images.js';
import { FileStepJournal, jobContext } from '../../support/snapshot-harness.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const { h, cleanup } = libvirtSuite('lrquiesce');

describe('live-rotate quiesce without an answering guest agent', () => {
  it('reports quiesced unavailable and leaves nothing frozen', async () => {
    const active = join(h.pool, 'vol.qcow2');
    await createQcow2(active, SIZE / MiB);
    const dom = await startTestDomain(cleanup, {
      label: 'lrquiesce',
      disk: { type: 'file', path: active },
      guestAgentChannel: true,
    });
    expect(await virsh(['dumpxml', dom.name])).toContain('org.qemu.guest_agent.0');
    const live = await ReferenceDisk.create(join(h.base, 'live.raw'), SIZE);
    const names: string[] = [];
    for (let round = 1; round <= 2; round++) {
      await guestWriteRound(dom, live, 600 + round, SIZE);
      const cmd = chainCommand(h, { dom, file: 'vol.qcow2', dir: 'vol', names }, `snap-${round}`, {
        strategy: 'live-rotate',
        quiesce: true,
      });
      const journal = new FileStepJournal(join(h.base, `${cmd.id}.json`));
      const result = await createSnapshot(jobContext(cmd, journal), h.deps);
      names.push(`snap-${round}`);
      expect(result.strategy.name).toBe('live-rotate');
      expect(result.quiesced).toBe('unavailable');
      expect(result.vmPauseMs).toBe(0);
      const { engine } = journal.read<{ engine: { facts: Record<string, unknown> } }>();
      expect(engine.facts.quiesced).toBe('unavailable');
      expect(engine.facts.frozenByUs ?? null).toBeNull(); // recovery would try to thaw otherwise
      expect(await differsFromReference(result.snapshot.path, live)).toBeNull();
    }
    expect((await virsh(['domstate', '--reason', dom.name])).trim()).toBe('running (booted)');
  });
});
