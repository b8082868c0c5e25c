import type { AgentConfig } from '../config/index.js';
import { HostCommandError } from '../errors/index.js';
import type { Logger } from '../observability/logger.js';
import { type RunOptions, type RunResult, runTool } from './exec.js';
import type { ReflinkSupport } from './file-pool.js';

/**
 * What this host has, for `agent.ping`: each strategy reads what it needs from it (src/snapshot/strategies/).
 * Every probe is independent: a missing or broken tool yields null (and a line in `problems`), never a throw.
 */
export interface Capabilities {
  probedAt: string;
  /** Versions found on the host; null when the tool is missing or does not answer. */
  tools: {
    qemuImg: string | null;
    /** QEMU as libvirt reports it (`virsh version`), else from the QEMU binary's QMP greeting. */
    qemu: string | null;
    libvirt: string | null;
    lvm: string | null;
  };
  /** QMP commands of the host's QEMU binary; null when it could not be asked. */
  qmp: {
    commands: string[] | null;
    /** Stable `blockdev-reopen` (QEMU ≥ 6.1, and present when the command list is known). */
    blockdevReopen: boolean;
    changeBackingFile: boolean;
  };
  /** Reflink per configured file pool root (probed by cloning a scratch file there). */
  reflink: Array<{ root: string } & ReflinkSupport>;
  /** Why something above is null or false, in the tools' words. */
  problems: string[];
}

/** The adapters the probe asks; structural so that Libvirt, Lvm and FilePool instances fit. */
export interface CapabilityDeps {
  qemuImg: { version(): Promise<string> };
  libvirt?: { versions(): Promise<{ libvirt: string; qemu: string | null }> } | null;
  lvm?: { version(): Promise<string> } | null;
  filePool?: { supportsReflink(dir: string): Promise<ReflinkSupport> } | null;
  /** QEMU binary probe (default: probeQemuBinary with `qemu-system-x86_64`); null to skip it. */
  qemuBinary?: (() => Promise<QemuBinaryInfo>) | null;
  logger?: Logger;
}

/** Version and QMP command list of a QEMU binary, asked without a VM. */
export interface QemuBinaryInfo {
  version: string;
  qmpCommands: string[];
}

/** QEMU ≥ 6.1 has a stable `blockdev-reopen` (before: `x-blockdev-reopen`). */
export function hasStableBlockdevReopen(version: string | null): boolean {
  const match = version === null ? null : /^(\d+)\.(\d+)/.exec(version);
  if (!match) return false;
  const major = Number(match[1]);
  const minor = Number(match[2]);
  return major > 6 || (major === 6 && minor >= 1);
}

/**
 * Starts the QEMU binary with no machine (`-machine none -S`), asks `query-commands` over QMP on
 * stdio and quits: the host's QMP capabilities without a running VM (~50 ms). A running VM's QEMU
 * may be older than the installed binary: for one VM, ask libvirt's qmpCommands(domain).
 */
export async function probeQemuBinary(
  opts: {
    binary?: string;
    timeoutMs?: number;
    logger?: Logger;
    run?: (file: string, args: readonly string[], options: RunOptions) => Promise<RunResult>;
  } = {},
): Promise<QemuBinaryInfo> {
  const run = opts.run ?? runTool;
  const input = ['qmp_capabilities', 'query-commands', 'quit'].map((c) => `{"execute":"${c}"}\n`).join('');
  const args = ['-machine', 'none', '-nodefaults', '-nographic', '-no-user-config', '-S', '-qmp', 'stdio'];
  const binary = opts.binary ?? 'qemu-system-x86_64';
  const { stdout } = await run(binary, args, {
    timeoutMs: opts.timeoutMs ?? 10_000,
    input,
    logger: opts.logger,
  });
  let version: string | undefined;
  let commands: string[] | undefined;
  for (const line of stdout.split('\n')) {
    const message = parseLine(line);
    if (message === undefined) continue;
    const v = message.QMP?.version?.qemu;
    if (v) version = `${v.major}.${v.minor}.${v.micro}`;
    if (Array.isArray(message.return)) commands = message.return.map((c: { name: string }) => c.name).sort();
  }
  if (version === undefined || commands === undefined) {
    throw new HostCommandError('failed', `${binary} gave no QMP greeting or command list`, {
      command: binary,
      args,
      stderr: stdout.slice(0, 2000),
    });
  }
  return { version, qmpCommands: commands };
}

interface QmpLine {
  QMP?: { version?: { qemu?: { major: number; minor: number; micro: number } } };
  return?: unknown;
}

/** One QMP message per line; other lines (warnings) are skipped. */
function parseLine(line: string): QmpLine | undefined {
  if (!line.trim().startsWith('{')) return undefined;
  try {
    return JSON.parse(line) as QmpLine;
  } catch {
    return undefined;
  }
}

/** Runs a probe; a failure becomes null plus a line in `problems`. */
async function attempt<T>(
  what: string,
  problems: string[],
  logger: Logger | undefined,
  fn: () => Promise<T>,
) {
  try {
    return await fn();
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    problems.push(`${what}: ${message}`);
    logger?.debug({ err: error, probe: what }, 'capability probe failed');
    return null;
  }
}

/**
 * Probes tool versions, QMP commands and reflink per file pool root in parallel. Never throws.
 * Cache the result: it starts several processes.
 */
export async function probeCapabilities(
  deps: CapabilityDeps,
  config: { pools: Pick<AgentConfig['pools'], 'fileRoots'> },
): Promise<Capabilities> {
  const problems: string[] = [];
  const log = deps.logger;
  const qemuBinary = deps.qemuBinary === undefined ? () => probeQemuBinary({ logger: log }) : deps.qemuBinary;
  const missing = (what: string) => () => Promise.reject(new Error(`no ${what} adapter configured`));

  const [qemuImg, virt, lvm, binary, reflink] = await Promise.all([
    attempt('qemu-img', problems, log, () => deps.qemuImg.version()),
    attempt('libvirt', problems, log, deps.libvirt ? () => deps.libvirt!.versions() : missing('libvirt')),
    attempt('lvm2', problems, log, deps.lvm ? () => deps.lvm!.version() : missing('lvm2')),
    attempt('qemu binary', problems, log, qemuBinary ?? missing('QEMU binary probe')),
    Promise.all(
      config.pools.fileRoots.map(async (root) => {
        const support = await attempt(`reflink in ${root}`, problems, log, () =>
          deps.filePool ? deps.filePool.supportsReflink(root) : missing('file pool')(),
        );
        return {
          root,
          supported: support?.supported ?? false,
          reason: support ? support.reason : 'probe failed',
        };
      }),
    ),
  ]);

  const qemu = virt?.qemu ?? binary?.version ?? null;
  const commands = binary?.qmpCommands ?? null;
  const has = (name: string) => commands === null || commands.includes(name);
  const blockdevReopen = hasStableBlockdevReopen(qemu) && has('blockdev-reopen');
  const changeBackingFile = qemu !== null && has('change-backing-file');
  return {
    probedAt: new Date().toISOString(),
    tools: { qemuImg, qemu, libvirt: virt?.libvirt ?? null, lvm },
    qmp: { commands, blockdevReopen, changeBackingFile },
    reflink,
    problems,
  };
}
