import { AgentError } from './agent-error.js';

/** qemu-img succeeded but printed something this agent cannot read (unexpected JSON shape or text). */
export class QemuImgOutputError extends AgentError {
  constructor(subcommand: string, message: string, options: { output?: string; cause?: unknown } = {}) {
    super('QEMU_IMG_OUTPUT_INVALID', `qemu-img ${subcommand}: ${message}`, {
      cause: options.cause,
      details: {
        subcommand,
        ...(options.output === undefined ? {} : { output: options.output.slice(0, 2000) }),
      },
    });
  }
}
