// One long-lived `virsh` interactive shell per libvirt URI: a command written into it costs ~1 ms
// instead of the ~16 ms of a new virsh process (connect, authenticate, exit). The libvirt adapter
// sends every domain query and QMP/HMP command through it; only what must hand over a file
// descriptor (`qemu-monitor-command --pass-fds`) still starts a process.
//
// Framing: each command is followed by `echo --err <mark>` and `echo <mark>`, <mark> unique per
// command. virsh runs its input line by line, so the command's stderr ends where `error: <mark>`
// appears on stderr, its stdout where virsh's echo of `echo --err <mark>` appears on stdout (readline
// echoes every input line after the prompt). A command failed when its stderr holds an `error:` line.
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { HostCommandError } from '../errors/index.js';
import type { Logger } from '../observability/logger.js';
import { failedToolError, type RunResult } from './exec.js';

const PROMPT = 'virsh # ';
/** How long starting virsh (and its connection) may take before the session counts as dead. */
const START_TIMEOUT_MS = 15_000;
/** How long `quit` may take at close before the shell is killed. */
const CLOSE_GRACE_MS = 2_000;

/**
 * Quotes one argument for virsh's own command-line parser (vshCommandStringGetArg): inside single
 * quotes every character is literal except the single quote itself, which is closed, written as
 * `\'` (a backslash escapes one character outside quotes) and reopened. Control characters cannot be
 * written into the shell (readline would act on a tab, a newline ends the command): those return null.
 */
export function quoteVirshArg(arg: string): string | null {
  if (/\p{Cc}/u.test(arg)) return null;
  return `'${arg.replaceAll("'", "'\\''")}'`;
}

/** The command line for `args`, or null when an argument cannot be written into the shell. */
export function virshCommandLine(args: readonly string[]): string | null {
  const quoted = args.map(quoteVirshArg);
  return quoted.some((q) => q === null) ? null : quoted.join(' ');
}

interface Pending {
  mark: string;
  line: string;
  resolve: (output: { stdout: string; stderr: string }) => void;
  reject: (error: Error) => void;
}

export interface VirshSessionOptions {
  uri: string;
  logger?: Logger;
  /** The virsh binary (tests point this elsewhere). */
  virsh?: string;
}

/** Counters for benchmarks and tests. */
export interface VirshSessionStats {
  /** virsh processes started (the first, and one after each death or kill). */
  starts: number;
  commands: number;
}

/**
 * A persistent `virsh -q -c <uri>` shell. Commands run one at a time in arrival order (a queue):
 * concurrent jobs never interleave inside it. Each has a timeout; a command that times out, is
 * aborted, or finds the shell dead fails, the shell is killed, and the next command starts a new one.
 */
export class VirshSession {
  readonly uri: string;
  readonly stats: VirshSessionStats = { starts: 0, commands: 0 };
  private readonly logger: Logger | undefined;
  private readonly binary: string;
  private readonly nonce = randomBytes(6).toString('hex');
  private seq = 0;
  private child: ChildProcessWithoutNullStreams | null = null;
  private stdout = '';
  private stderr = '';
  private pending: Pending | null = null;
  private tail: Promise<unknown> = Promise.resolve();
  private closed = false;

  /** The shell's pid while it runs. */
  get pid(): number | null {
    return this.child?.pid ?? null;
  }

  constructor(opts: VirshSessionOptions) {
    this.uri = opts.uri;
    this.logger = opts.logger;
    this.binary = opts.virsh ?? 'virsh';
  }

  /**
   * Runs one virsh command (an argument array, quoted here) and resolves with its output, or
   * rejects with a HostCommandError classified from its `error:` lines, as a virsh process would.
   */
  run(
    args: readonly string[],
    opts: { timeoutMs: number; signal?: AbortSignal; logger?: Logger },
  ): Promise<RunResult> {
    const line = virshCommandLine(args);
    if (line === null) {
      return Promise.reject(
        new HostCommandError('invalid-argument', 'a virsh argument holds a control character', {
          command: 'virsh',
          args,
        }),
      );
    }
    const queued = this.tail.then(() => this.runNow(args, line, opts));
    this.tail = queued.catch(() => undefined);
    return queued;
  }

  /** Ends the shell (`quit`, then SIGKILL after a grace period); later commands start a new one. */
  async close(): Promise<void> {
    this.closed = true;
    await this.tail;
    const child = this.child;
    if (child === null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.stdin.end('quit\n');
    const timer = setTimeout(() => child.kill('SIGKILL'), CLOSE_GRACE_MS);
    await exited;
    clearTimeout(timer);
  }

  private async runNow(
    args: readonly string[],
    line: string,
    opts: { timeoutMs: number; signal?: AbortSignal; logger?: Logger },
  ): Promise<RunResult> {
    if (this.closed)
      throw new HostCommandError('aborted', 'the virsh session is closed', { command: 'virsh', args });
    const logger = opts.logger ?? this.logger;
    const info = { command: 'virsh', args };
    if (opts.signal?.aborted) {
      throw new HostCommandError('aborted', 'virsh was cancelled', { ...info, cause: opts.signal.reason });
    }
    const started = performance.now();
    if (this.child === null) await this.start(args, Math.min(START_TIMEOUT_MS, opts.timeoutMs));
    let outcome = 'ok' as 'ok' | 'timeout' | 'aborted';
    let output: { stdout: string; stderr: string };
    const timers: { timer?: NodeJS.Timeout; onAbort?: () => void } = {};
    try {
      output = await new Promise((resolve, reject) => {
        const fail = (kind: 'timeout' | 'aborted') => {
          outcome = kind;
          this.kill();
        };
        timers.timer = setTimeout(() => fail('timeout'), opts.timeoutMs);
        timers.onAbort = () => fail('aborted');
        opts.signal?.addEventListener('abort', timers.onAbort, { once: true });
        this.send(line, resolve, reject);
      });
    } catch (error) {
      const durationMs = Math.round(performance.now() - started);
      logger?.debug({ command: 'virsh', args, session: true, durationMs, outcome }, 'host command failed');
      if (outcome === 'timeout') {
        throw new HostCommandError('timeout', `virsh ${args[0] ?? ''} timed out after ${opts.timeoutMs} ms`, {
          ...info,
          stderr: this.stderr,
        });
      }
      if (outcome === 'aborted') {
        throw new HostCommandError('aborted', 'virsh was cancelled', { ...info, cause: opts.signal?.reason });
      }
      throw error;
    } finally {
      clearTimeout(timers.timer);
      if (timers.onAbort) opts.signal?.removeEventListener('abort', timers.onAbort);
    }
    this.stats.commands += 1;
    const durationMs = Math.round(performance.now() - started);
    const failed = /^error: /m.test(output.stderr);
    logger?.debug(
      { command: 'virsh', args, session: true, exitCode: failed ? 1 : 0, durationMs },
      'host command finished',
    );
    if (failed) throw failedToolError('virsh', args, output.stderr, 1);
    return { ...output, exitCode: 0, durationMs };
  }

  /** Writes the command and its two marks; resolves once both marks arrived. */
  private send(
    line: string,
    resolve: (output: { stdout: string; stderr: string }) => void,
    reject: (error: Error) => void,
  ): void {
    const child = this.child;
    if (child === null) {
      reject(this.deadError('the virsh session is not running'));
      return;
    }
    this.seq += 1;
    const mark = `clvm-${this.nonce}-${this.seq}`;
    this.pending = { mark, line, resolve, reject };
    child.stdin.write(`${line}\necho --err ${mark}\necho ${mark}\n`);
  }

  /** Starts virsh and waits for it to answer one `echo` (so a broken binary or URI shows at once). */
  private async start(args: readonly string[], timeoutMs: number): Promise<void> {
    const child = spawn(this.binary, ['-q', '-c', this.uri], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: {
        ...process.env,
        // English messages (the error classifier reads them) and UTF-8 paths passed through as is.
        LC_ALL: 'C.UTF-8',
        // readline: no user key bindings, no terminal escapes; virsh: no history kept, and none
        // written at exit into an operator's ~/.cache/virsh (a cache directory that cannot exist:
        // virsh says so on stderr as it exits, and leaves nothing behind even when we are killed).
        INPUTRC: '/dev/null',
        TERM: 'dumb',
        VIRSH_HISTSIZE: '0',
        XDG_CACHE_HOME: '/dev/null/clvm-virsh',
      },
    });
    this.stats.starts += 1;
    this.child = child;
    this.stdout = '';
    this.stderr = '';
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      this.stdout += chunk;
      this.settle();
    });
    child.stderr.on('data', (chunk: string) => {
      // Between commands only asynchronous notices come (e.g. "Disconnected from ... due to end
      // of file" when libvirtd restarts): they belong to no command and must not fail the next one.
      if (this.pending === null) {
        this.logger?.warn({ uri: this.uri, stderr: chunk.trim() }, 'virsh session notice');
        return;
      }
      this.stderr += chunk;
      this.settle();
    });
    child.stdin.on('error', () => undefined); // a dead shell shows as 'exit'
    child.once('error', (error) => this.onExit(child, `virsh could not start: ${error.message}`, error));
    child.once('exit', (code, signal) =>
      this.onExit(child, `the virsh session ended (${signal ?? `exit code ${code}`})`),
    );
    // An idle session does not keep the agent (or a CLI) alive; a pending command's timer does.
    child.unref();
    for (const stream of [child.stdin, child.stdout, child.stderr])
      (stream as { unref?: () => void }).unref?.();
    this.logger?.debug({ uri: this.uri, pid: child.pid }, 'virsh session started');
    let timer: NodeJS.Timeout | undefined;
    try {
      await new Promise<{ stdout: string; stderr: string }>((resolve, reject) => {
        timer = setTimeout(() => {
          reject(
            new HostCommandError('timeout', `the virsh session did not start within ${timeoutMs} ms`, {
              command: 'virsh',
              args,
            }),
          );
          this.kill();
        }, timeoutMs);
        this.send('echo ready', resolve, reject);
      });
    } finally {
      clearTimeout(timer);
    }
  }

  /** Completes the pending command once both of its marks are in. */
  private settle(): void {
    const p = this.pending;
    if (p === null) return;
    const outEnd = `${PROMPT}echo ${p.mark}\n${p.mark}`;
    const errEnd = `error: ${p.mark}\n`;
    const outAt = this.stdout.indexOf(outEnd);
    const errAt = this.stderr.indexOf(errEnd);
    if (outAt < 0 || errAt < 0) return;
    // stdout: [\n] PROMPT <echo of the command> \n <output> PROMPT echo --err <mark> \n
    const block = this.stdout.slice(0, outAt).replace(/^\n+/, '');
    const echoEnd = block.indexOf('\n');
    const outputEnd = block.lastIndexOf(`${PROMPT}echo --err ${p.mark}\n`);
    const stderr = this.stderr.slice(0, errAt);
    this.stdout = this.stdout.slice(outAt + outEnd.length);
    this.stderr = this.stderr.slice(errAt + errEnd.length);
    this.pending = null;
    if (!block.startsWith(PROMPT) || echoEnd < 0 || outputEnd < echoEnd) {
      this.kill();
      p.reject(
        this.deadError(`the virsh session's output is out of step: ${JSON.stringify(block.slice(0, 200))}`),
      );
      return;
    }
    p.resolve({ stdout: block.slice(echoEnd + 1, outputEnd), stderr });
  }

  private onExit(child: ChildProcessWithoutNullStreams, why: string, cause?: unknown): void {
    if (this.child !== child) return;
    this.child = null;
    const p = this.pending;
    this.pending = null;
    if (p !== null) p.reject(this.deadError(why, cause));
    this.logger?.debug({ uri: this.uri, why }, 'virsh session ended');
  }

  private kill(): void {
    const child = this.child;
    if (child === null) return;
    child.kill('SIGKILL');
    this.onExit(child, 'the virsh session was killed');
  }

  private deadError(why: string, cause?: unknown): HostCommandError {
    // As runTool says it: a virsh that is not installed is not a passing failure.
    const missing = (cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
    return new HostCommandError(
      missing ? 'tool-missing' : 'transient',
      missing ? `${this.binary} is not installed (not found on PATH)` : why,
      {
        command: 'virsh',
        args: [],
        stderr: this.stderr,
        ...(cause === undefined ? {} : { cause }),
      },
    );
  }
}

const shared = new Map<string, VirshSession>();

/** The one session of this process for `uri` (created on first use, the shell started on first command). */
export function sharedVirshSession(uri: string, logger?: Logger): VirshSession {
  let session = shared.get(uri);
  if (session === undefined) {
    session = new VirshSession({ uri, ...(logger === undefined ? {} : { logger }) });
    shared.set(uri, session);
  }
  return session;
}

/** Ends every shared session (agent stop). */
export async function closeVirshSessions(): Promise<void> {
  const sessions = [...shared.values()];
  shared.clear();
  await Promise.all(sessions.map((s) => s.close()));
}
