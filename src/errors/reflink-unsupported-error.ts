import { AgentError } from './agent-error.js';

/**
 * The filesystem under a file pool cannot make a reflink (copy-on-write) clone: ext4, tmpfs, NFS
 * before 4.2, or source and target on different filesystems. The agent never falls back to a full
 * copy silently: a strategy that needs an instant clone must fail or choose another way.
 */
export class ReflinkUnsupportedError extends AgentError {
  constructor(path: string, reason: string, options: { cause?: unknown } = {}) {
    super('REFLINK_UNSUPPORTED', `cannot make a reflink clone in ${path}: ${reason}`, {
      cause: options.cause,
      details: { path, reason },
    });
  }
}
