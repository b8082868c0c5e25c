// The template of create, delete and revert (pure logic, a fake libvirt): the plan is journaled
// before any step; recovery without a plan is "interrupted, nothing done"; recovery releases a VM
// the job paused or froze before it touches the steps.
import { describe, expect, it } from 'vitest';
import type { StepJournal } from '../../../src/jobs/types.js';
import { silentLogger } from '../../../src/observability/logger.js';
import type { SnapshotDeps } from '../../../src/snapshot/deps.js';
import { EngineJournal } from '../../../src/snapshot/journal.js';
import { type PlannedJob, runPlannedJob } from '../../../src/snapshot/planned-job.js';
import type { StepPlan } from '../../../src/snapshot/steps.js';

class MemoryJournal implements StepJournal {
  facts: Record<string, unknown> = {};
  read<T extends Record<string, unknown>>(): T {
    return structuredClone(this.facts) as T;
  }
  async write(patch: Record<string, unknown>): Promise<void> {
    this.facts = { ...this.facts, ...structuredClone(patch) };
  }
}

function setup(calls: string[]) {
  const journal = new MemoryJournal();
  const ctx = (recovering: boolean) => ({
    journal,
    recovering,
    signal: new AbortController().signal,
    progress: () => {},
    logger: silentLogger(),
  });
  const libvirt = {
    domainState: async (vm: string) => {
      calls.push(`state ${vm}`);
      return { state: 'paused' };
    },
    resume: async (vm: string) => void calls.push(`resume ${vm}`),
    guestThaw: async (vm: string) => void calls.push(`thaw ${vm}`),
  };
  const deps = { libvirt } as unknown as SnapshotDeps;
  const job: PlannedJob<{ name: string }, { frozenByUs?: string | null }, { done: string }> = {
    plan: async () => {
      calls.push('plan');
      return { name: 'p1' };
    },
    steps: async (plan): Promise<StepPlan> => ({
      kind: 'fake',
      pointOfNoReturn: 'b',
      steps: ['a', 'b'].map((name) => ({
        name,
        run: async () => void calls.push(`run ${name} of ${plan.name}`),
        isDone: async () => true,
      })),
    }),
    result: async (plan) => ({ done: plan.name }),
  };
  return { journal, ctx, deps, job };
}

describe('runPlannedJob', () => {
  it('journals the plan before the first step and returns the result', async () => {
    const calls: string[] = [];
    const { journal, ctx, deps, job } = setup(calls);
    expect(await runPlannedJob(ctx(false), deps, job)).toEqual({ done: 'p1' });
    expect(calls).toEqual(['plan', 'run a of p1', 'run b of p1']);
    expect(new EngineJournal(journal).get().plan).toEqual({ name: 'p1' });
  });

  it('recovering without a journaled plan: interrupted, rolled back, nothing planned or run', async () => {
    const calls: string[] = [];
    const { ctx, deps, job } = setup(calls);
    await expect(runPlannedJob(ctx(true), deps, job)).rejects.toMatchObject({
      code: 'JOB_INTERRUPTED',
      details: { rolledBack: true, step: null },
    });
    expect(calls).toEqual([]);
  });

  it('recovering: resumes the VM it paused and thaws the guest it froze before the steps', async () => {
    const calls: string[] = [];
    const { journal, ctx, deps, job } = setup(calls);
    await new EngineJournal(journal).update((r) => {
      r.plan = { name: 'p1' };
      r.steps = { a: 'done', b: 'started' };
      r.pausedByUs = 'vm1';
      r.facts = { frozenByUs: 'vm1' };
    });
    expect(await runPlannedJob(ctx(true), deps, job)).toEqual({ done: 'p1' });
    expect(calls).toEqual(['state vm1', 'resume vm1', 'thaw vm1']);
    const record = new EngineJournal(journal).get();
    expect(record).toMatchObject({ pausedByUs: null, facts: { frozenByUs: null }, phase: 'finished' });
  });
});
