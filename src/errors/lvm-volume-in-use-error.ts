import { AgentError } from './agent-error.js';

/**
 * An LV is open (a VM, qemu-nbd or another process holds it: `lvs` attr[5] == 'o'), so it must not be
 * removed (invariant 3). Retryable: the holder may let go later.
 */
export class LvmVolumeInUseError extends AgentError {
  constructor(vg: string, lv: string, options: { cause?: unknown } = {}) {
    super('LVM_VOLUME_IN_USE', `logical volume ${vg}/${lv} is open (in use); refusing to remove it`, {
      cause: options.cause,
      retryable: true,
      details: { vg, lv },
    });
  }
}
