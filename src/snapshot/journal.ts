import type { StepJournal } from '../jobs/types.js';

/** Where one step is; written before and after it runs (and around its undo). */
export type StepState = 'started' | 'done' | 'undoing' | 'undone';

/** Facts any job's steps may record: a guest frozen by us (recovery thaws it) and the outcome of the freeze. */
export interface GuestFacts {
  frozenByUs?: string | null;
  quiesced?: 'yes' | 'unavailable';
}

/** The engine's part of a job journal: everything recovery needs after `kill -9`. */
export interface EngineRecord<Plan = unknown, Facts extends GuestFacts = GuestFacts> {
  /** The decisions of the planner (strategy, names, paths): recovery rebuilds the same steps from it. */
  plan: Plan | null;
  steps: Record<string, StepState>;
  /** Milliseconds each finished step took. */
  timings: Record<string, number>;
  /** A VM this job paused and has not resumed yet: recovery resumes it (invariant 4). */
  pausedByUs: string | null;
  /** Milliseconds the VM was paused so far. */
  pauseMs: number;
  /** Other facts steps record for the result or for recovery (e.g. a guest frozen by us). */
  facts: Facts;
  phase: 'running' | 'rolling-back' | 'rolled-back' | 'finished';
}

const KEY = 'engine';

function empty<Plan, Facts extends GuestFacts>(): EngineRecord<Plan, Facts> {
  return {
    plan: null,
    steps: {},
    timings: {},
    pausedByUs: null,
    pauseMs: 0,
    facts: {} as Facts,
    phase: 'running',
  };
}

/**
 * Typed access to the engine record inside the job layer's StepJournal. Every change rewrites the
 * whole record under one key (so merge depth does not matter) and is fsynced before it returns.
 */
export class EngineJournal<Plan = unknown, Facts extends GuestFacts = GuestFacts> {
  constructor(private readonly journal: StepJournal) {}

  /** The record as last written (an empty one for a new job). */
  get(): EngineRecord<Plan, Facts> {
    const stored = this.journal.read<Record<string, unknown>>()[KEY] as
      | Partial<EngineRecord<Plan, Facts>>
      | undefined;
    return { ...empty<Plan, Facts>(), ...(stored ?? {}) };
  }

  async update(change: (record: EngineRecord<Plan, Facts>) => void): Promise<EngineRecord<Plan, Facts>> {
    const record = this.get();
    change(record);
    await this.journal.write({ [KEY]: record });
    return record;
  }

  async setPlan(plan: Plan): Promise<void> {
    await this.update((r) => {
      r.plan = plan;
    });
  }

  async setStep(name: string, state: StepState, durationMs?: number): Promise<void> {
    await this.update((r) => {
      r.steps[name] = state;
      if (durationMs !== undefined) r.timings[name] = durationMs;
    });
  }
}
