import { AgentError } from './agent-error.js';

/** `lvs`/`vgs` printed a report this agent cannot read (unexpected JSON shape or a size that is not bytes). */
export class LvmReportError extends AgentError {
  constructor(message: string, options: { cause?: unknown; output?: string } = {}) {
    super('LVM_REPORT_INVALID', message, {
      cause: options.cause,
      details: options.output === undefined ? {} : { output: options.output.slice(0, 2000) },
    });
  }
}
