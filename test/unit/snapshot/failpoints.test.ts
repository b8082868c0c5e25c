// The test-only failpoints (test/support/failpoints.ts) and the engine's checkpoints they hang on.
import { describe, expect, it } from 'vitest';
import type { StepJournal } from '../../../src/jobs/types.js';
import { silentLogger } from '../../../src/observability/logger.js';
import { EngineJournal } from '../../../src/snapshot/journal.js';
import { runSteps } from '../../../src/snapshot/steps.js';
import { Failpoints } from '../../support/failpoints.js';

describe('Failpoints', () => {
  it('hang on the checkpoints the step runner publishes, before and after each step', async () => {
    const facts: Record<string, unknown> = {};
    const journal: StepJournal = {
      read: <T extends Record<string, unknown>>() => structuredClone(facts) as T,
      write: async (patch) => void Object.assign(facts, structuredClone(patch)),
    };
    const log: string[] = [];
    const step = (name: string) => ({ name, run: async () => void log.push(`run ${name}`) });
    const hit = Failpoints.parse('fake:b:before,fake:b:after,fake:c:before').arm((point) => log.push(point));
    try {
      await runSteps(
        { kind: 'fake', pointOfNoReturn: 'c', steps: ['a', 'b', 'c'].map(step) },
        {
          journal: new EngineJournal(journal),
          signal: new AbortController().signal,
          progress: () => {},
          logger: silentLogger(),
        },
      );
    } finally {
      hit();
    }
    expect(log).toEqual(['run a', 'fake:b:before', 'run b', 'fake:b:after', 'fake:c:before', 'run c']);
  });
  it("the export rate in bytes per second, with qemu-img's suffixes", () => {
    expect(Failpoints.parse('export-rate=1M').exportBytesPerSecond).toBe(1024 * 1024);
    expect(Failpoints.parse('export-rate=4096').exportBytesPerSecond).toBe(4096);
    expect(Failpoints.none.exportBytesPerSecond).toBeNull();
  });
  it('is inert unless set, and reads points and the export rate', () => {
    expect(Failpoints.parse(undefined).active).toBe(false);
    const fp = Failpoints.parse('offline:export:before, lvm-cow:export:during,export-rate=4M');
    expect(fp.active).toBe(true);
    expect(fp.exportRate).toBe('4M');
    expect(() => Failpoints.parse('rm -rf')).toThrow(/cannot read/);
  });
  it('adds -r to qemu-img convert only', async () => {
    const calls: string[][] = [];
    const run = Failpoints.parse('export-rate=1M').wrapRunner(async (_file, args) => {
      calls.push([...args]);
      return { stdout: '', stderr: '', exitCode: 0, durationMs: 0 };
    });
    await run('qemu-img', ['convert', '-f', 'qcow2'], { timeoutMs: 1 });
    await run('qemu-img', ['info', 'x'], { timeoutMs: 1 });
    expect(calls).toEqual([
      ['convert', '-r', '1M', '-f', 'qcow2'],
      ['info', 'x'],
    ]);
  });
});
