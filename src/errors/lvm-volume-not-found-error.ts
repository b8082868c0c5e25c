import { AgentError } from './agent-error.js';

/** The logical volume does not exist in the volume group (the volume group itself may exist or not). */
export class LvmVolumeNotFoundError extends AgentError {
  constructor(vg: string, lv: string, options: { cause?: unknown } = {}) {
    super('LVM_VOLUME_NOT_FOUND', `logical volume ${vg}/${lv} does not exist`, {
      cause: options.cause,
      details: { vg, lv },
    });
  }
}
