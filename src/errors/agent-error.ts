/** Options shared by every error the agent raises. */
export interface AgentErrorOptions {
  cause?: unknown;
  /** True when the same command could succeed if sent again later. */
  retryable?: boolean;
  details?: Record<string, unknown>;
}

/**
 * Base of every error the agent raises on purpose. `code` is stable and machine-readable:
 * it is what `failed` and `rejected` events carry.
 */
export class AgentError extends Error {
  readonly code: string;
  readonly retryable: boolean;
  readonly details: Record<string, unknown>;

  constructor(code: string, message: string, options: AgentErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = options.retryable ?? false;
    this.details = options.details ?? {};
  }

  toJSON(): { code: string; message: string; retryable: boolean; details: Record<string, unknown> } {
    return { code: this.code, message: this.message, retryable: this.retryable, details: this.details };
  }
}

/** Wraps anything thrown into an AgentError without losing it (kept as `cause`). */
export function toAgentError(error: unknown, fallbackCode = 'INTERNAL'): AgentError {
  if (error instanceof AgentError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new AgentError(fallbackCode, message, { cause: error });
}
