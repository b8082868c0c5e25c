import { AgentError } from './agent-error.js';

/** The agent died while the job ran; start-up recovery rolled it back. Retryable: send it again. */
export class JobInterruptedError extends AgentError {
  constructor(step: string | null) {
    super(
      'JOB_INTERRUPTED',
      step === null
        ? 'the agent stopped before the job started any step'
        : `the agent stopped during step ${step}; recovery rolled the job back`,
      { retryable: true, details: { step } },
    );
  }
}
