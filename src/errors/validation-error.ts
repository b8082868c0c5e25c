import { AgentError } from './agent-error.js';

/**
 * Input refused before anything ran (bad name, path outside the roots, schema violation...).
 * `code` is specific (e.g. INVALID_NAME, PATH_OUTSIDE_ROOTS); `field` says where.
 */
export class ValidationError extends AgentError {
  readonly field: string | undefined;

  constructor(code: string, message: string, options: { field?: string; cause?: unknown } = {}) {
    super(code, message, { cause: options.cause, details: options.field ? { field: options.field } : {} });
    this.field = options.field;
  }
}
