// The step runner with fake steps (pure logic): journal order, rollback before the point of no
// return, no undo after it (seed defect 1), cancel at a safe point, and start-up recovery.
import { describe, expect, it } from 'vitest';
import { AgentError } from '../../../src/errors/index.js';
import type { StepJournal } from '../../../src/jobs/types.js';
import { silentLogger } from '../../../src/observability/logger.js';
import { EngineJournal } from '../../../src/snapshot/journal.js';
import { type RunEnv, recoverSteps, runSteps, type StepPlan } from '../../../src/snapshot/steps.js';

class MemoryJournal implements StepJournal {
  facts: Record<string, unknown> = {};
  history: string[] = [];
  read<T extends Record<string, unknown>>(): T {
    return structuredClone(this.facts) as T;
  }
  async write(patch: Record<string, unknown>): Promise<void> {
    this.facts = { ...this.facts, ...structuredClone(patch) };
    const steps = (this.facts.engine as { steps: Record<string, string> }).steps;
    this.history.push(JSON.stringify(steps));
  }
}

function fakePlan(
  log: string[],
  opts: { failAt?: string; doneCheck?: boolean; abortAt?: AbortController } = {},
): StepPlan {
  const step = (name: string) => ({
    name,
    run: async () => {
      log.push(`run ${name}`);
      if (opts.abortAt && name === 'b') opts.abortAt.abort();
      if (name === opts.failAt) throw new Error(`${name} broke`);
    },
    undo: async () => {
      log.push(`undo ${name}`);
    },
    isDone: async () => opts.doneCheck ?? false,
  });
  return { kind: 'fake', pointOfNoReturn: 'c', steps: ['a', 'b', 'c', 'd'].map(step) };
}

function env(
  journal: StepJournal,
  signal = new AbortController().signal,
): RunEnv & { progress: RunEnv['progress'] } {
  return {
    journal: new EngineJournal(journal),
    signal,
    progress: () => {},
    logger: silentLogger(),
  };
}

describe('runSteps', () => {
  it('when an undo fails, reports the failure that started the rollback, with the undo error beside it', async () => {
    // The nfs-store lab suite: the export failed on a store that went away, then the part file's
    // unlink failed EBUSY; the caller must see the store failure (and that the rollback stopped).
    const journal = new MemoryJournal();
    const busy = Object.assign(new Error('EBUSY: resource busy or locked, unlink'), { code: 'EBUSY' });
    const eio = Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
    const plan: StepPlan = {
      kind: 'fake',
      pointOfNoReturn: 'c',
      steps: [
        { name: 'a', run: async () => {}, undo: async () => Promise.reject(busy) },
        { name: 'b', run: async () => Promise.reject(eio) },
        { name: 'c', run: async () => {} },
      ],
    };
    const error = (await runSteps(plan, env(journal)).catch((e: unknown) => e)) as AgentError;
    expect(error).toBeInstanceOf(AgentError);
    expect([error.code, error.retryable, error.details.rolledBack, error.details.step]).toEqual([
      'HOST_IO_ERROR',
      true,
      false,
      'a',
    ]);
    expect(error.details.undoError).toEqual({ code: 'HOST_BUSY', message: busy.message });
  });

  it('runs every step in order and journals start and end of each before the next', async () => {
    const log: string[] = [];
    const journal = new MemoryJournal();
    await runSteps(fakePlan(log), env(journal));
    expect(log).toEqual(['run a', 'run b', 'run c', 'run d']);
    expect(journal.history.slice(0, 4)).toEqual([
      '{"a":"started"}',
      '{"a":"done"}',
      '{"a":"done","b":"started"}',
      '{"a":"done","b":"done"}',
    ]);
    expect(new EngineJournal(journal).get().phase).toBe('finished');
  });

  it('rolls back every step done, in reverse, when a step before the point of no return fails', async () => {
    const log: string[] = [];
    const journal = new MemoryJournal();
    const error = await runSteps(fakePlan(log, { failAt: 'b' }), env(journal)).catch((e: unknown) => e);
    expect(log).toEqual(['run a', 'run b', 'undo b', 'undo a']);
    expect(error).toMatchObject({ message: 'b broke', details: { rolledBack: true, step: 'b' } });
    expect(new EngineJournal(journal).get()).toMatchObject({
      phase: 'rolled-back',
      steps: { a: 'undone', b: 'undone' },
    });
  });

  it('never undoes anything after the point of no return (seed defect 1): the failure says rolledBack false', async () => {
    const log: string[] = [];
    const error = await runSteps(fakePlan(log, { failAt: 'd' }), env(new MemoryJournal())).catch(
      (e: unknown) => e,
    );
    expect(log).toEqual(['run a', 'run b', 'run c', 'run d']);
    expect(error).toMatchObject({ details: { rolledBack: false, step: 'd' } });
  });

  it('a failing point-of-no-return step rolls back only when its effect is not in place', async () => {
    const notDone: string[] = [];
    await runSteps(fakePlan(notDone, { failAt: 'c', doneCheck: false }), env(new MemoryJournal())).catch(
      () => {},
    );
    expect(notDone).toEqual(['run a', 'run b', 'run c', 'undo c', 'undo b', 'undo a']);
    const done: string[] = [];
    const error = await runSteps(
      fakePlan(done, { failAt: 'c', doneCheck: true }),
      env(new MemoryJournal()),
    ).catch((e: unknown) => e);
    expect(done).toEqual(['run a', 'run b', 'run c']);
    expect(error).toMatchObject({ details: { rolledBack: false } });
  });

  it('asks the point-of-no-return check again when it cannot answer (the fault that failed the step is gone)', async () => {
    // The lab fault matrix: EIO on the LVM pool during promote-staging; lvs failed in the check too, the job
    // said "cannot tell" and left the volume's LV under its retired name.
    const log: string[] = [];
    const plan = fakePlan(log, { failAt: 'c' });
    let checks = 0;
    plan.steps[2]!.isDone = async () => {
      checks++;
      if (checks < 3) throw new Error('lvs: read failed: Input/output error');
      return false;
    };
    const error = await runSteps(plan, {
      ...env(new MemoryJournal()),
      isDoneRetry: { attempts: 4, delayMs: 1 },
    }).catch((e: unknown) => e);
    expect(checks).toBe(3);
    expect(log).toEqual(['run a', 'run b', 'run c', 'undo c', 'undo b', 'undo a']);
    expect(error).toMatchObject({ details: { rolledBack: true, step: 'c' } });

    // Never answers: nothing is touched, and the failure says so.
    const untouched: string[] = [];
    const stuck = fakePlan(untouched, { failAt: 'c' });
    stuck.steps[2]!.isDone = async () => {
      throw new Error('still failing');
    };
    const stuckError = await runSteps(stuck, {
      ...env(new MemoryJournal()),
      isDoneRetry: { attempts: 2, delayMs: 1 },
    }).catch((e: unknown) => e);
    expect(untouched).toEqual(['run a', 'run b', 'run c']);
    expect(stuckError).toMatchObject({ details: { rolledBack: false, step: 'c' } });
  });

  it('stops at the next safe point when cancelled and rolls back (JOB_CANCELLED)', async () => {
    const log: string[] = [];
    const controller = new AbortController();
    const error = await runSteps(
      fakePlan(log, { abortAt: controller }),
      env(new MemoryJournal(), controller.signal),
    ).catch((e: unknown) => e);
    expect(log).toEqual(['run a', 'run b', 'undo b', 'undo a']);
    expect(error).toMatchObject({ code: 'JOB_CANCELLED', details: { rolledBack: true } });
  });
});

describe('recoverSteps', () => {
  async function crashedAfter(steps: Record<string, string>): Promise<MemoryJournal> {
    const journal = new MemoryJournal();
    await new EngineJournal(journal).update((r) => {
      r.plan = {};
      r.steps = steps as never;
    });
    return journal;
  }

  it('rolls back a job that died before the point of no return (JOB_INTERRUPTED, rolledBack)', async () => {
    const log: string[] = [];
    const journal = await crashedAfter({ a: 'done', b: 'started' });
    const error = await recoverSteps(fakePlan(log), env(journal)).catch((e: unknown) => e);
    expect(log).toEqual(['undo b', 'undo a']);
    expect(error).toMatchObject({
      code: 'JOB_INTERRUPTED',
      retryable: true,
      details: { rolledBack: true, step: 'b' },
    });
  });

  it('finishes a job that died after the point of no return', async () => {
    const log: string[] = [];
    await recoverSteps(
      fakePlan(log),
      env(await crashedAfter({ a: 'done', b: 'done', c: 'done', d: 'started' })),
    );
    expect(log).toEqual(['run d']);
  });

  it('asks the point-of-no-return step whether it took effect when it died inside it', async () => {
    const forward: string[] = [];
    await recoverSteps(
      fakePlan(forward, { doneCheck: true }),
      env(await crashedAfter({ a: 'done', b: 'done', c: 'started' })),
    );
    expect(forward).toEqual(['run d']);
    const back: string[] = [];
    await expect(
      recoverSteps(
        fakePlan(back, { doneCheck: false }),
        env(await crashedAfter({ a: 'done', b: 'done', c: 'started' })),
      ),
    ).rejects.toMatchObject({ code: 'JOB_INTERRUPTED', details: { rolledBack: true, step: 'c' } });
    expect(back).toEqual(['undo c', 'undo b', 'undo a']);
  });

  it('continues an interrupted rollback', async () => {
    const log: string[] = [];
    const journal = await crashedAfter({ a: 'done', b: 'undone' });
    await new EngineJournal(journal).update((r) => {
      r.phase = 'rolling-back';
    });
    await expect(recoverSteps(fakePlan(log), env(journal))).rejects.toMatchObject({
      code: 'JOB_INTERRUPTED',
      details: { rolledBack: true },
    });
    expect(log).toEqual(['undo a']);
  });
});
