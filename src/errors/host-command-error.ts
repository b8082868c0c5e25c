import { AgentError } from './agent-error.js';

/** What went wrong with a host tool, as far as its exit code and stderr tell. */
export type HostCommandFailureKind =
  | 'tool-missing'
  | 'not-found'
  | 'busy'
  | 'no-space'
  | 'io-error'
  | 'invalid-argument'
  | 'transient'
  | 'timeout'
  | 'aborted'
  | 'failed';

const CODES: Record<HostCommandFailureKind, string> = {
  'tool-missing': 'HOST_TOOL_MISSING',
  'not-found': 'HOST_NOT_FOUND',
  busy: 'HOST_BUSY',
  'no-space': 'HOST_NO_SPACE',
  'io-error': 'HOST_IO_ERROR',
  'invalid-argument': 'HOST_INVALID_ARGUMENT',
  transient: 'HOST_TRANSIENT',
  timeout: 'HOST_TIMEOUT',
  aborted: 'HOST_ABORTED',
  failed: 'HOST_COMMAND_FAILED',
};

// io-error: the job is rolled back and a store or disk that failed (an NFS server restarting) may be back.
const RETRYABLE: ReadonlySet<HostCommandFailureKind> = new Set(['busy', 'transient', 'timeout', 'io-error']);

/** A host tool (qemu-img, virsh, lvm...) failed; carries the command line, exit code and stderr. */
export class HostCommandError extends AgentError {
  readonly kind: HostCommandFailureKind;
  readonly command: string;
  readonly args: readonly string[];
  readonly exitCode: number | undefined;
  readonly stderr: string;

  constructor(
    kind: HostCommandFailureKind,
    message: string,
    info: { command: string; args: readonly string[]; exitCode?: number; stderr?: string; cause?: unknown },
  ) {
    super(CODES[kind], message, {
      cause: info.cause,
      retryable: RETRYABLE.has(kind),
      details: {
        command: info.command,
        args: [...info.args],
        exitCode: info.exitCode,
        stderr: info.stderr ?? '',
      },
    });
    this.kind = kind;
    this.command = info.command;
    this.args = info.args;
    this.exitCode = info.exitCode;
    this.stderr = info.stderr ?? '';
  }
}
