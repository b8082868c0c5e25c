import { execa, type Options } from 'execa';
import { HostCommandError, type HostCommandFailureKind } from '../errors/index.js';
import type { Logger } from '../observability/logger.js';

/** How to run one host tool. Every call has a timeout; there is no shell, only argument arrays. */
export interface RunOptions {
  timeoutMs: number;
  /** Aborting sends SIGTERM, then SIGKILL after `killGraceMs`. */
  signal?: AbortSignal;
  killGraceMs?: number;
  input?: string;
  /** Raw chunks as they arrive (progress parsers use stderr/stdout chunks, which may end in `\r`). */
  onStdout?: (chunk: string) => void;
  onStderr?: (chunk: string) => void;
  logger?: Logger;
  env?: Record<string, string>;
  /** Exit codes that count as success (qemu-img compare exits 1 for "images differ"). */
  okExitCodes?: readonly number[];
  /** Open file descriptors of this process handed to the child as its fds 3, 4, ... (in order). */
  passFds?: readonly number[];
  /** Called with the child's pid once it is spawned (the export bandwidth turns stop/continue it). */
  onSpawn?: (pid: number) => void;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  exitCode: number;
  durationMs: number;
}

const PATTERNS: ReadonlyArray<[HostCommandFailureKind, RegExp]> = [
  // First: a failing disk or a dead NFS server also makes lvm say "not found" (it cannot read its labels).
  ['io-error', /Input\/output error|\bEIO\b|Stale (NFS )?file handle|\bESTALE\b/i],
  ['no-space', /No space left|Insufficient free space|ENOSPC|not enough free space|Disk quota exceeded/i],
  [
    'busy',
    /Failed to get "?\w+"? lock|is in use|in use\b|Device or resource busy|EBUSY|Is another process using the image|lock(ed)? by|Can't (get|acquire) lock/i,
  ],
  [
    'not-found',
    /No such file|not found|does not exist|Failed to find|no domain with matching|failed to get domain|Volume group ".*" not found/i,
  ],
  ['transient', /Connection refused|Temporary failure|Resource temporarily unavailable|EAGAIN|try again/i],
  [
    'invalid-argument',
    /Invalid argument|invalid option|unrecognized option|Unknown option|usage:|Invalid parameter|is invalid/i,
  ],
];

/** Classifies a failure from stderr; the first matching pattern wins. */
export function classifyFailure(stderr: string): HostCommandFailureKind {
  for (const [kind, pattern] of PATTERNS) if (pattern.test(stderr)) return kind;
  return 'failed';
}

function lastLine(text: string): string {
  const lines = text.trim().split(/[\r\n]+/);
  return lines[lines.length - 1] ?? '';
}

/**
 * Runs `file` with `args` and resolves with its output, or rejects with a classified
 * HostCommandError (command, exit code, stderr). Only the adapters in src/host call this.
 */
export async function runTool(
  file: string,
  args: readonly string[],
  options: RunOptions,
): Promise<RunResult> {
  const started = performance.now();
  const info = { command: file, args };
  const subprocess = execa(file, args, {
    timeout: options.timeoutMs,
    cancelSignal: options.signal,
    forceKillAfterDelay: options.killGraceMs ?? 5_000,
    input: options.input,
    reject: false,
    stripFinalNewline: false,
    env: options.env,
    extendEnv: true,
    // Tools must not wait on a terminal or read the agent's stdin.
    stdio: [
      options.input === undefined ? 'ignore' : 'pipe',
      'pipe',
      'pipe',
      ...(options.passFds ?? []),
    ] as Options['stdio'],
  });
  if (options.onSpawn && subprocess.pid !== undefined) options.onSpawn(subprocess.pid);
  if (options.onStdout) subprocess.stdout?.on('data', (c: Buffer) => options.onStdout?.(c.toString('utf8')));
  if (options.onStderr) subprocess.stderr?.on('data', (c: Buffer) => options.onStderr?.(c.toString('utf8')));
  const result = await subprocess;
  const durationMs = Math.round(performance.now() - started);
  const stdout = String(result.stdout ?? '');
  const stderr = String(result.stderr ?? '');
  options.logger?.debug(
    { command: file, args, exitCode: result.exitCode, durationMs },
    'host command finished',
  );

  if (result.isCanceled) {
    throw new HostCommandError('aborted', `${file} was cancelled`, { ...info, stderr, cause: result.cause });
  }
  if (result.timedOut) {
    throw new HostCommandError('timeout', `${file} timed out after ${options.timeoutMs} ms`, {
      ...info,
      stderr,
    });
  }
  const spawnError = result.cause as NodeJS.ErrnoException | undefined;
  if (result.exitCode === undefined && spawnError?.code === 'ENOENT') {
    throw new HostCommandError('tool-missing', `${file} is not installed (not found on PATH)`, {
      ...info,
      cause: spawnError,
    });
  }
  const exitCode = result.exitCode ?? -1;
  const ok = options.okExitCodes ?? [0];
  if (!ok.includes(exitCode)) {
    const kind = classifyFailure(stderr);
    const why = lastLine(stderr) || result.signal || `exit code ${exitCode}`;
    throw new HostCommandError(kind, `${file} ${args[0] ?? ''} failed: ${why}`.replace(/\s+/g, ' ').trim(), {
      ...info,
      exitCode,
      stderr,
    });
  }
  return { stdout, stderr, exitCode, durationMs };
}
