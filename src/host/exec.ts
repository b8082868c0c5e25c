import { spawn } from 'node:child_process';
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

/** How long the pipes may stay open after the tool exited (held by a process it left behind). */
const EXIT_DRAIN_MS = 2_000;

/** What one finished child process left: its output and how it ended. */
interface Finished {
  stdout: string;
  stderr: string;
  exitCode: number | undefined;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  cancelled: boolean;
  /** The pid of a tool that outlived SIGKILL (stuck in the kernel): abandoned, not waited for. */
  unkillable: number | undefined;
  spawnError: NodeJS.ErrnoException | undefined;
}

/**
 * Spawns the tool (no shell) and waits until it exited and its pipes closed. A timeout or an abort
 * sends SIGTERM, then SIGKILL after `killGraceMs`; a tool still there `killGraceMs` after SIGKILL
 * is abandoned (it is in uninterruptible sleep; it goes when the kernel lets it). node:child_process directly rather than execa:
 * execa's module graph alone cost ~12 MB of the agent's RSS (issue 13) for what fits here.
 */
function spawnTool(file: string, args: readonly string[], options: RunOptions): Promise<Finished> {
  return new Promise((resolve) => {
    const child = spawn(file, args, {
      env: options.env ? { ...process.env, ...options.env } : process.env,
      // Tools must not wait on a terminal or read the agent's stdin.
      stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe', ...(options.passFds ?? [])],
    });
    if (options.onSpawn && child.pid !== undefined) options.onSpawn(child.pid);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    let cancelled = false;
    let unkillable = false;
    let spawnError: NodeJS.ErrnoException | undefined;
    let killTimer: NodeJS.Timeout | undefined;
    let abandonTimer: NodeJS.Timeout | undefined;
    const stop = () => {
      if (child.exitCode !== null || child.signalCode !== null || killTimer) return;
      const grace = options.killGraceMs ?? 5_000;
      child.kill('SIGTERM');
      killTimer = setTimeout(() => {
        child.kill('SIGKILL');
        // A process blocked in the kernel (a hard NFS mount whose server is gone) cannot be reaped
        // until the kernel lets go: the call must not wait for it.
        abandonTimer = setTimeout(() => {
          unkillable = true;
          child.stdout?.destroy();
          child.stderr?.destroy();
          finish(null, 'SIGKILL');
        }, grace);
      }, grace);
    };
    const timer = setTimeout(() => {
      timedOut = true;
      stop();
    }, options.timeoutMs);
    const onAbort = () => {
      cancelled = true;
      stop();
    };
    if (options.signal?.aborted) onAbort();
    else options.signal?.addEventListener('abort', onAbort, { once: true });
    child.stdout!.on('data', (chunk: Buffer) => {
      out.push(chunk);
      options.onStdout?.(chunk.toString('utf8'));
    });
    child.stderr!.on('data', (chunk: Buffer) => {
      err.push(chunk);
      options.onStderr?.(chunk.toString('utf8'));
    });
    if (child.stdin) {
      // A tool that exits without reading its input must not fail the call with EPIPE.
      child.stdin.on('error', () => undefined);
      child.stdin.end(options.input);
    }
    let settled = false;
    const finish = (exitCode: number | null, signal: NodeJS.Signals | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(killTimer);
      clearTimeout(abandonTimer);
      options.signal?.removeEventListener('abort', onAbort);
      resolve({
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        exitCode: exitCode ?? undefined,
        signal,
        timedOut,
        cancelled,
        unkillable: unkillable ? child.pid : undefined,
        spawnError,
      });
    };
    child.once('error', (error: NodeJS.ErrnoException) => {
      spawnError = error;
      // Not started at all (ENOENT, EACCES): no 'close' follows.
      if (child.pid === undefined) finish(null, null);
    });
    child.once('close', finish);
    // A grandchild that inherited the pipes (a killed tool's helper, a daemon) must not hold the
    // call open: after the exit, the output gets a moment to drain, then the pipes are dropped.
    child.once('exit', (code, signal) => {
      const drain = timedOut || cancelled ? 0 : EXIT_DRAIN_MS;
      setTimeout(() => {
        child.stdout?.destroy();
        child.stderr?.destroy();
        finish(code, signal);
      }, drain).unref();
    });
  });
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
  const result = await spawnTool(file, args, options);
  const durationMs = Math.round(performance.now() - started);
  const { stdout, stderr } = result;
  options.logger?.debug(
    { command: file, args, exitCode: result.exitCode, durationMs },
    'host command finished',
  );

  const stuck =
    result.unkillable === undefined
      ? ''
      : `; pid ${result.unkillable} did not exit after SIGKILL (blocked in the kernel, e.g. on an unreachable NFS store) and was left behind`;
  if (result.unkillable !== undefined) {
    options.logger?.error(
      { command: file, args, pid: result.unkillable },
      'host command did not exit after SIGKILL',
    );
  }
  if (result.cancelled) {
    throw new HostCommandError('aborted', `${file} was cancelled${stuck}`, {
      ...info,
      stderr,
      cause: options.signal?.reason,
    });
  }
  if (result.timedOut) {
    throw new HostCommandError('timeout', `${file} timed out after ${options.timeoutMs} ms${stuck}`, {
      ...info,
      stderr,
    });
  }
  if (result.exitCode === undefined && result.spawnError?.code === 'ENOENT') {
    throw new HostCommandError('tool-missing', `${file} is not installed (not found on PATH)`, {
      ...info,
      cause: result.spawnError,
    });
  }
  const exitCode = result.exitCode ?? -1;
  const ok = options.okExitCodes ?? [0];
  if (!ok.includes(exitCode)) {
    throw failedToolError(file, args, stderr, exitCode, result.signal ?? result.spawnError?.message);
  }
  return { stdout, stderr, exitCode, durationMs };
}

/** The error of a tool call that ran and failed: classified from stderr, its last line as the reason. */
export function failedToolError(
  file: string,
  args: readonly string[],
  stderr: string,
  exitCode: number,
  otherwise?: string,
): HostCommandError {
  const why = lastLine(stderr) || otherwise || `exit code ${exitCode}`;
  return new HostCommandError(
    classifyFailure(stderr),
    `${file} ${args[0] ?? ''} failed: ${why}`.replace(/\s+/g, ' ').trim(),
    { command: file, args, exitCode, stderr },
  );
}
