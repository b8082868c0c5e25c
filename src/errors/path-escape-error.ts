import { AgentError } from './agent-error.js';

/**
 * A path under a configured root resolved, right before a host tool was to use it, to a place
 * outside every root (a component was swapped for a symlink after the command was checked).
 * The step fails; nothing was handed to the tool.
 */
export class PathEscapeError extends AgentError {
  constructor(path: string, resolved: string | null, options: { cause?: unknown } = {}) {
    super(
      'PATH_ESCAPES_ROOTS',
      resolved === null
        ? `${path} now contains a dangling symlink: refused before the host tool ran`
        : `${path} now resolves to ${resolved}, outside the configured roots (a symlink was swapped in): refused before the host tool ran`,
      { cause: options.cause, details: { path, resolved } },
    );
  }
}
