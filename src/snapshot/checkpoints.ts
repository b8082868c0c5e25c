// Where a job's steps are, published on a diagnostics channel: `<plan>:<step>:before` (about to
// start), `<plan>:<step>:after` (its end journaled), `<plan>:<step>:during` (its critical moment:
// the VM paused by lvm-cow, right after live-rotate's switch or block-commit start) and
// `<plan>:export:during` (the first export progress between 0 and 100 %). Subscribers run
// synchronously at that exact point; nothing in the agent subscribes. The crash tests do (a
// preload module in the agent's process, test/support/failpoints-preload.ts) and SIGKILL it there.
import { channel } from 'node:diagnostics_channel';

export const CHECKPOINT_CHANNEL = 'clvm-snapshot-agent:checkpoint';

export interface Checkpoint {
  point: string;
}

const checkpoints = channel(CHECKPOINT_CHANNEL);

/** Publishes that a job reached `point` (free when nobody listens). */
export function checkpoint(point: string): void {
  if (checkpoints.hasSubscribers) checkpoints.publish({ point } satisfies Checkpoint);
}
