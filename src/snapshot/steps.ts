import {
  AgentError,
  HostCommandError,
  JobCancelledError,
  JobInterruptedError,
  toAgentError,
} from '../errors/index.js';
import type { JobContext, ProgressUpdate } from '../jobs/types.js';
import type { Logger } from '../observability/logger.js';
import { retrying } from '../timing.js';
import { checkpoint } from './checkpoints.js';
import type { EngineJournal } from './journal.js';

/** What a running step may report and watch. */
export interface StepIO {
  /** Aborted on job.cancel/shutdown; never aborted for steps at or after the point of no return. */
  signal: AbortSignal;
  /** Percent/bytes of the current step (the runner adds step name and index). */
  progress(update: {
    percent?: number;
    bytesDone?: number;
    bytesTotal?: number;
    bytesPerSecond?: number;
  }): void;
}

/**
 * One step of a strategy. `run` is idempotent: it checks whether its effect is already there
 * (a crash may have happened right after it) before acting. `undo` is idempotent too and must work
 * whether `run` finished, stopped half-way or never started.
 */
export interface Step {
  name: string;
  run(io: StepIO): Promise<void>;
  undo?(): Promise<void>;
  /** For the point-of-no-return step: whether its effect is in place (recovery then rolls forward). */
  isDone?(): Promise<boolean>;
}

/** A strategy as an explicit step list with its point of no return. */
export interface StepPlan {
  /** Checkpoint prefix and log name: offline, lvm-cow, live-rotate, delete, revert. */
  kind: string;
  steps: Step[];
  /** The step after which the job is finished forward instead of rolled back. */
  pointOfNoReturn: string;
}

export interface RunEnv {
  journal: EngineJournal;
  signal: AbortSignal;
  progress(update: ProgressUpdate): void;
  logger: Logger;
  /**
   * How often the point-of-no-return check is asked again when it cannot answer (default 4 tries,
   * 2 s apart): the failure that stopped the step (a disk or store error) is often what stops the
   * check too, and "cannot tell" leaves the volume as it is, possibly without its name.
   */
  isDoneRetry?: { attempts: number; delayMs: number };
}

const NEVER = new AbortController().signal;

/** Adds the outcome to a failure: whether everything done was undone, and at which step. */
export function withOutcome(
  error: unknown,
  outcome: { rolledBack: boolean; step: string | null },
): AgentError {
  const agentError = toAgentError(error);
  return new AgentError(agentError.code, agentError.message, {
    cause: error,
    retryable: agentError.retryable,
    details: { ...agentError.details, rolledBack: outcome.rolledBack, step: outcome.step },
  });
}

function ponrIndex(plan: StepPlan): number {
  const index = plan.steps.findIndex((s) => s.name === plan.pointOfNoReturn);
  if (index < 0) throw new Error(`plan ${plan.kind}: no step named ${plan.pointOfNoReturn}`);
  return index;
}

/**
 * Runs the steps in order, journaling each start and end. A failure (or cancel) before the point
 * of no return undoes every step done, in reverse, then throws with rolledBack: true; a failure
 * after it undoes nothing (seed defect 1) and throws with rolledBack: false.
 */
export async function runSteps(plan: StepPlan, env: RunEnv, from = 0): Promise<void> {
  const ponr = ponrIndex(plan);
  const total = plan.steps.length;
  for (let i = from; i < total; i++) {
    const step = plan.steps[i]!;
    if (i <= ponr && env.signal.aborted) {
      await rollBack(plan, env, i - 1);
      throw withOutcome(new JobCancelledError(step.name), { rolledBack: true, step: step.name });
    }
    checkpoint(`${plan.kind}:${step.name}:before`);
    await env.journal.setStep(step.name, 'started');
    env.progress({ step: step.name, stepIndex: i, stepCount: total });
    const started = performance.now();
    const io: StepIO = {
      signal: i < ponr ? env.signal : NEVER,
      progress: (p) => env.progress({ step: step.name, stepIndex: i, stepCount: total, ...p }),
    };
    try {
      await step.run(io);
    } catch (error) {
      let committed: boolean;
      try {
        committed = i > ponr || (i === ponr && (await isDoneRetrying(step, env)));
      } catch (checkError) {
        // Cannot tell whether the point of no return was passed: touch nothing, say so.
        env.logger.error({ err: checkError, step: step.name }, 'cannot tell whether the step took effect');
        throw withOutcome(error, { rolledBack: false, step: step.name });
      }
      if (committed) {
        env.logger.error({ err: error, step: step.name }, 'step after the point of no return failed');
        throw withOutcome(error, { rolledBack: false, step: step.name });
      }
      const cancelled = env.signal.aborted && error instanceof HostCommandError && error.kind === 'aborted';
      env.logger.warn({ err: error, step: step.name, cancelled }, 'step failed; rolling back');
      const failure = cancelled ? new JobCancelledError(step.name) : error;
      await rollBack(plan, env, i, failure);
      throw withOutcome(failure, { rolledBack: true, step: step.name });
    }
    await env.journal.setStep(step.name, 'done', Math.round(performance.now() - started));
    checkpoint(`${plan.kind}:${step.name}:after`);
  }
  await env.journal.update((r) => {
    r.phase = 'finished';
  });
}

/**
 * Start-up recovery of a job the agent was running when it died: before the point of no return
 * every step started is undone (then JobInterruptedError, rolledBack: true); after it the
 * remaining steps run (each checks what is already done) and this returns normally.
 */
export async function recoverSteps(plan: StepPlan, env: RunEnv): Promise<void> {
  const record = env.journal.get();
  const ponr = ponrIndex(plan);
  const started = plan.steps.map((s) => record.steps[s.name]).filter((s) => s !== undefined).length;
  const lastName = started === 0 ? null : (plan.steps[started - 1]?.name ?? null);
  if (record.phase === 'finished') return;
  const rollback = async (): Promise<never> => {
    await rollBack(plan, env, plan.steps.length - 1);
    throw withOutcome(new JobInterruptedError(lastName), { rolledBack: true, step: lastName });
  };
  if (record.phase === 'rolling-back' || record.phase === 'rolled-back') return rollback();

  const ponrStep = plan.steps[ponr]!;
  const ponrState = record.steps[ponrStep.name];
  const committed = ponrState === 'done' || (ponrState === 'started' && (await isDone(ponrStep)));
  env.logger.info({ plan: plan.kind, lastStep: lastName, committed }, 'recovering job');
  if (!committed) return rollback();
  if (ponrState === 'started') await env.journal.setStep(ponrStep.name, 'done');
  const next = plan.steps.findIndex((s, i) => i > ponr && env.journal.get().steps[s.name] !== 'done');
  if (next < 0) {
    await env.journal.update((r) => {
      r.phase = 'finished';
    });
    return;
  }
  await runSteps(plan, env, next);
}

/**
 * Undoes steps `last` down to 0 that were started, journaling each undo. When an undo fails, the
 * job fails with the error that started the rollback (`cause`, what the caller can act on: a store
 * that went away), rolledBack: false at the step whose undo failed, and the undo's error beside it.
 */
async function rollBack(plan: StepPlan, env: RunEnv, last: number, cause?: unknown): Promise<void> {
  await env.journal.update((r) => {
    r.phase = 'rolling-back';
  });
  for (let i = last; i >= 0; i--) {
    const step = plan.steps[i]!;
    const state = env.journal.get().steps[step.name];
    if (state === undefined || state === 'undone') continue;
    await env.journal.setStep(step.name, 'undoing');
    try {
      await step.undo?.();
    } catch (error) {
      env.logger.error({ err: error, step: step.name }, 'undo failed; the job is left half done');
      if (cause === undefined) throw withOutcome(error, { rolledBack: false, step: step.name });
      const failed = withOutcome(cause, { rolledBack: false, step: step.name });
      const undo = toAgentError(error);
      failed.details.undoError = { code: undo.code, message: undo.message };
      throw failed;
    }
    await env.journal.setStep(step.name, 'undone');
  }
  await env.journal.update((r) => {
    r.phase = 'rolled-back';
  });
}

async function isDone(step: Step): Promise<boolean> {
  return step.isDone ? step.isDone() : false;
}

/** isDone, asked again a few times when it throws; throws the last error when it never answers. */
async function isDoneRetrying(step: Step, env: RunEnv): Promise<boolean> {
  const { attempts, delayMs } = env.isDoneRetry ?? { attempts: 4, delayMs: 2_000 };
  return retrying(() => isDone(step), {
    attempts,
    delayMs,
    onRetry: (error, attempt) =>
      env.logger.warn(
        { err: error, step: step.name, attempt },
        'cannot tell whether the step took effect; asking again',
      ),
  });
}

/** The run environment of a job's steps, from its JobContext. */
export function jobRunEnv(
  ctx: Pick<JobContext, 'signal' | 'progress' | 'logger'>,
  journal: EngineJournal,
): RunEnv {
  return {
    journal,
    signal: ctx.signal,
    progress: (u) => ctx.progress(u),
    logger: ctx.logger,
  };
}

/**
 * Runs a job's steps, or (after a crash) recovers them from the journal. Every failure leaves
 * saying whether it was rolled back; one the runner did not classify is reported as not rolled back.
 */
export async function runOrRecoverSteps(plan: StepPlan, env: RunEnv, recovering: boolean): Promise<void> {
  try {
    if (recovering) await recoverSteps(plan, env);
    else await runSteps(plan, env);
  } catch (error) {
    if (error instanceof AgentError && typeof error.details.rolledBack === 'boolean') throw error;
    throw withOutcome(error, { rolledBack: false, step: null });
  }
}
