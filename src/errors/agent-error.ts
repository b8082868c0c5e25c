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

/**
 * System call failures (node's fs errors) that say what happened to the disk or the store, with
 * the same codes as a host tool failing for the same reason (HostCommandError). An fsync or rename
 * on a failing store is not an internal error of the agent.
 */
const SYSTEM_ERRORS: Readonly<Record<string, { code: string; retryable: boolean }>> = {
  EIO: { code: 'HOST_IO_ERROR', retryable: true },
  ESTALE: { code: 'HOST_IO_ERROR', retryable: true },
  EROFS: { code: 'HOST_IO_ERROR', retryable: true },
  ETIMEDOUT: { code: 'HOST_TIMEOUT', retryable: true },
  // NFS refuses to unlink a file whose silly-rename is still pending (its last opener just went).
  EBUSY: { code: 'HOST_BUSY', retryable: true },
  ENOSPC: { code: 'HOST_NO_SPACE', retryable: false },
  EDQUOT: { code: 'HOST_NO_SPACE', retryable: false },
};

/** Wraps anything thrown into an AgentError without losing it (kept as `cause`). */
export function toAgentError(error: unknown, fallbackCode = 'INTERNAL'): AgentError {
  if (error instanceof AgentError) return error;
  const errno = (error as NodeJS.ErrnoException | null)?.code;
  const system = typeof errno === 'string' ? SYSTEM_ERRORS[errno] : undefined;
  if (system !== undefined) {
    const { syscall, path } = error as NodeJS.ErrnoException;
    return new AgentError(system.code, (error as Error).message, {
      cause: error,
      retryable: system.retryable,
      details: { errno, ...(syscall ? { syscall } : {}), ...(path ? { path } : {}) },
    });
  }
  return new AgentError(fallbackCode, messageOf(error), { cause: error });
}

/** The message of anything thrown. */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
