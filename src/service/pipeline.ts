import type { Logger } from '../observability/logger.js';

/**
 * One stage of the service (rascal style: small tasks composed into pipelines). `start` builds
 * the stage's part of the context; `stop` undoes it. Stages stop in reverse start order.
 */
export interface Stage<C> {
  name: string;
  start(ctx: C): Promise<void>;
  stop?(ctx: C): Promise<void>;
}

/**
 * Runs the start tasks in order. When one fails, the stages already started are stopped (in
 * reverse) and the start error is rethrown: a half-started agent never stays up.
 * Returns the stop pipeline for the caller to run at shutdown.
 */
export async function startPipeline<C>(
  stages: readonly Stage<C>[],
  ctx: C,
  logger: Logger,
): Promise<() => Promise<Error[]>> {
  const started: Stage<C>[] = [];
  const stop = () => stopStages(started, ctx, logger);
  for (const stage of stages) {
    const t0 = performance.now();
    try {
      await stage.start(ctx);
    } catch (error) {
      logger.error({ err: error, stage: stage.name }, 'start-up stage failed; stopping what started');
      await stop();
      throw error;
    }
    started.push(stage);
    logger.debug({ stage: stage.name, ms: Math.round(performance.now() - t0) }, 'stage started');
  }
  return stop;
}

/** Stops stages in reverse order; a failing stop is logged and the others still run. */
async function stopStages<C>(started: Stage<C>[], ctx: C, logger: Logger): Promise<Error[]> {
  const errors: Error[] = [];
  while (started.length > 0) {
    const stage = started.pop()!;
    if (!stage.stop) continue;
    const t0 = performance.now();
    try {
      await stage.stop(ctx);
      logger.debug({ stage: stage.name, ms: Math.round(performance.now() - t0) }, 'stage stopped');
    } catch (error) {
      logger.error({ err: error, stage: stage.name }, 'shutdown stage failed');
      errors.push(error instanceof Error ? error : new Error(String(error)));
    }
  }
  return errors;
}
