// The shape every snapshot job shares (create, delete, revert): plan everything and journal the
// plan before the first step; on recovery release a VM we paused or froze, then roll the steps
// back or finish them from the journaled plan.
import { JobInterruptedError } from '../errors/index.js';
import type { JobContext } from '../jobs/types.js';
import type { SnapshotDeps } from './deps.js';
import { EngineJournal, type GuestFacts } from './journal.js';
import { jobRunEnv, runOrRecoverSteps, type StepPlan, withOutcome } from './steps.js';
import { resumeIfPausedByUs, thawIfFrozenByUs } from './vm.js';

export interface PlannedJob<Plan, Facts extends GuestFacts, Result> {
  /** Decides everything before the first step; a failure here leaves nothing to undo. */
  plan(): Promise<Plan>;
  /** The step list of a plan: the same one again when recovery rebuilds it from the journal. */
  steps(plan: Plan, journal: EngineJournal<Plan, Facts>): Promise<StepPlan>;
  /** The `succeeded` result, once every step is done. */
  result(plan: Plan, journal: EngineJournal<Plan, Facts>, steps: StepPlan): Promise<Result>;
  /** Completes a failure of the steps with what the caller must know (create: where the volume is). */
  failure?(error: unknown, plan: Plan, journal: EngineJournal<Plan, Facts>): unknown;
}

type RunContext = Pick<JobContext, 'journal' | 'recovering' | 'signal' | 'progress' | 'logger'>;

/** Runs (or, with `ctx.recovering`, recovers) one planned job. */
export async function runPlannedJob<Plan, Facts extends GuestFacts, Result>(
  ctx: RunContext,
  deps: SnapshotDeps,
  job: PlannedJob<Plan, Facts, Result>,
): Promise<Result> {
  const journal = new EngineJournal<Plan, Facts>(ctx.journal);
  let plan = journal.get().plan;
  try {
    if (plan === null) {
      // Nothing was done before the plan was journaled: an interrupted job is simply not done.
      if (ctx.recovering) throw new JobInterruptedError(null);
      plan = await job.plan();
      await journal.setPlan(plan);
    }
  } catch (error) {
    throw withOutcome(error, { rolledBack: true, step: null });
  }
  const steps = await job.steps(plan, journal);
  try {
    if (ctx.recovering) {
      // Invariant 4: a VM we paused (or froze) is released before anything else.
      await resumeIfPausedByUs(deps.libvirt, journal);
      await thawIfFrozenByUs(deps.libvirt, journal);
    }
  } catch (error) {
    throw withOutcome(error, { rolledBack: false, step: null });
  }
  try {
    await runOrRecoverSteps(steps, jobRunEnv(ctx, journal), ctx.recovering);
  } catch (error) {
    throw job.failure ? job.failure(error, plan, journal) : error;
  }
  return job.result(plan, journal, steps);
}
