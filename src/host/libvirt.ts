// The libvirt adapter: every call is a virsh command with a timeout, run in the host's long-lived
// virsh session (src/host/virsh-session.ts); one that hands QEMU a file descriptor runs as a process.
// QMP goes through `virsh qemu-monitor-command` (JSON in, JSON out); QEMU's errors become QmpError.
import { open } from 'node:fs/promises';
import { HostCommandError, ValidationError } from '../errors/index.js';
import type { Logger } from '../observability/logger.js';
import { runTool } from './exec.js';
import {
  type BlockdevOptions,
  type BlockNode,
  blockInfoMatchesAlias,
  chainFromGraph,
  checkHmpOutput,
  parseQmpReply,
  type QmpBlockDeviceInfo,
  type QmpBlockGraph,
  type QmpBlockInfo,
} from './qmp.js';
import { sharedVirshSession, type VirshSession, virshCommandLine } from './virsh-session.js';

export type { BlockCache, BlockdevOptions, BlockNode } from './qmp.js';
export { qcow2Blockdev, reopenWithBacking } from './qmp.js';

/** `virsh domstate` names; libvirt may add more, so any string is accepted. */
export type DomainStateName =
  | 'running'
  | 'paused'
  | 'shut off'
  | 'crashed'
  | 'pmsuspended'
  | 'blocked'
  | 'idle'
  | 'in shutdown'
  | 'shutdown'
  | 'nostate'
  | (string & {});

export interface DomainState {
  state: DomainStateName;
  /** Why it is in that state: booted, user, unpaused, migration, ioerror, destroyed... */
  reason: string;
}

/** One row of `virsh domblklist --details`. */
export interface DomainDisk {
  type: 'file' | 'block' | 'network' | 'volume' | (string & {});
  device: 'disk' | 'cdrom' | (string & {});
  target: string;
  /** Path of the top image; `-` when empty (an ejected cdrom). */
  source: string;
}

/** Result of a guest filesystem freeze/thaw: a count, or why no guest agent could do it. */
export type GuestFreezeResult = { frozen: number } | { unavailable: string };
export type GuestThawResult = { thawed: number } | { unavailable: string };

export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
  package: string;
}

export interface LibvirtOptions {
  /** libvirt connection URI, e.g. qemu:///system. */
  uri: string;
  /** Timeout of each virsh call. */
  timeoutMs: number;
  /** Timeout of calls that copy data (a block commit); default timeoutMs. */
  copyTimeoutMs?: number;
  logger?: Logger;
  /**
   * Where virsh commands run: the process-wide session of the URI (default), a given session, or
   * `'process'` for one virsh process per command (the design before sessions; benchmarks compare).
   */
  session?: VirshSession | 'shared' | 'process';
}

// Errors that mean "no guest agent to talk to", not "the freeze failed".
const AGENT_UNAVAILABLE =
  /guest agent is not configured|guest agent is not responding|guest agent is not connected|guest agent not available|agent is not available|command guest-fs\S* (has been disabled|has not been found)|guest-fs\S* not supported/i;

const TARGET_NAME = /^[a-z]+[a-z0-9]*$/;

/**
 * Talks to libvirt (and through it to QEMU's monitor) for the domains on this host.
 * Domain arguments are libvirt names, ids or UUIDs; disk targets are names like `vda`.
 */
export class Libvirt {
  readonly uri: string;
  readonly timeoutMs: number;
  readonly copyTimeoutMs: number;
  private readonly logger: Logger | undefined;
  private readonly session: VirshSession | null;

  constructor(opts: LibvirtOptions) {
    this.uri = opts.uri;
    this.timeoutMs = opts.timeoutMs;
    this.copyTimeoutMs = opts.copyTimeoutMs ?? opts.timeoutMs;
    this.logger = opts.logger;
    const session = opts.session ?? 'shared';
    this.session =
      session === 'process'
        ? null
        : session === 'shared'
          ? sharedVirshSession(opts.uri, opts.logger)
          : session;
  }

  /** libvirt library version and the hypervisor (QEMU) version; qemu is null if libvirt reports none. */
  async versions(): Promise<{ libvirt: string; qemu: string | null }> {
    const { stdout } = await this.virsh(['version']);
    const libvirt = /Using library: libvirt (\S+)/.exec(stdout)?.[1];
    if (libvirt === undefined) throw this.unexpected(['version'], stdout, 'no "Using library" line');
    const qemu = /Running hypervisor: QEMU (\S+)/.exec(stdout)?.[1] ?? null;
    return { libvirt, qemu };
  }

  /** State and reason, from `virsh domstate --reason`. */
  async domainState(domain: string): Promise<DomainState> {
    const args = ['domstate', '--reason', '--domain', checkDomain(domain)];
    const { stdout } = await this.virsh(args);
    const parsed = parseDomState(stdout);
    if (parsed === null) throw this.unexpected(args, stdout, 'cannot read "state (reason)"');
    return parsed;
  }

  async isRunning(domain: string): Promise<boolean> {
    return (await this.domainState(domain)).state === 'running';
  }

  /** Pauses the guest's vCPUs (QMP stop). */
  async suspend(domain: string): Promise<void> {
    await this.virsh(['suspend', '--domain', checkDomain(domain)]);
  }

  async resume(domain: string): Promise<void> {
    await this.virsh(['resume', '--domain', checkDomain(domain)]);
  }

  /** Disk targets and their current sources, as libvirt knows them. */
  async disks(domain: string): Promise<DomainDisk[]> {
    const args = ['domblklist', '--details', '--domain', checkDomain(domain)];
    const { stdout } = await this.virsh(args);
    return parseDomBlkList(stdout);
  }

  /** libvirt's device alias (= QEMU qdev id) of a disk target, e.g. vda → virtio-disk0. Domain must run. */
  async diskAlias(domain: string, target: string): Promise<string> {
    const { stdout } = await this.virsh(['dumpxml', '--domain', checkDomain(domain)]);
    const alias = diskAliasesFromXml(stdout).get(checkTarget(target));
    if (alias === undefined) {
      throw new ValidationError(
        'DISK_TARGET_NOT_FOUND',
        `domain ${domain} has no disk with target ${target} and a device alias (is it running?)`,
        { field: 'target' },
      );
    }
    return alias;
  }

  /** Runs one QMP command and returns its `return` value; QEMU errors throw QmpError. */
  async qmp<T = unknown>(domain: string, execute: string, args?: object): Promise<T> {
    const request = JSON.stringify(args === undefined ? { execute } : { execute, arguments: args });
    const { stdout } = await this.virsh([
      'qemu-monitor-command',
      '--domain',
      checkDomain(domain),
      '--cmd',
      request,
    ]);
    return parseQmpReply<T>(domain, execute, stdout);
  }

  /** One QMP command with an open file descriptor of this process passed along (`--pass-fds`). */
  private async qmpWithFd<T>(domain: string, execute: string, args: object, fd: number): Promise<T> {
    const { stdout } = await this.virsh(
      [
        'qemu-monitor-command',
        '--domain',
        checkDomain(domain),
        '--pass-fds',
        '3',
        '--cmd',
        JSON.stringify({ execute, arguments: args }),
      ],
      [fd],
    );
    return parseQmpReply<T>(domain, execute, stdout);
  }

  /**
   * Opens `path` here and hands QEMU a read-write and a read-only descriptor of it as a new fdset
   * (QMP add-fd); QEMU then opens `/dev/fdset/<id>` by duplicating the one whose access mode fits.
   * The file is reached without QEMU resolving the path: it works inside libvirt's private /dev for
   * devices created after the VM started, and the node keeps the same file when the path is renamed.
   * Returns the fdset id; `opaque` tags it (query-fdsets shows it).
   */
  async addFdset(domain: string, path: string, opaque: string): Promise<number> {
    const readWrite = await open(path, 'r+');
    const readOnly = await open(path, 'r');
    let fdsetId: number | null = null;
    try {
      fdsetId = (await this.qmpWithFd<{ 'fdset-id': number }>(domain, 'add-fd', { opaque }, readWrite.fd))[
        'fdset-id'
      ];
      await this.qmpWithFd(domain, 'add-fd', { 'fdset-id': fdsetId, opaque }, readOnly.fd);
      return fdsetId;
    } catch (error) {
      if (fdsetId !== null) await this.removeFdset(domain, fdsetId);
      throw error;
    } finally {
      await Promise.all([readWrite.close(), readOnly.close()]);
    }
  }

  /** The fdsets QEMU holds (QMP query-fdsets): id and the opaque tags of their descriptors. */
  async fdsets(domain: string): Promise<Array<{ fdsetId: number; opaque: string[] }>> {
    const sets = await this.qmp<Array<{ 'fdset-id': number; fds: Array<{ fd: number; opaque?: string }> }>>(
      domain,
      'query-fdsets',
    );
    return sets.map((s) => ({
      fdsetId: s['fdset-id'],
      opaque: s.fds.map((f) => f.opaque ?? ''),
    }));
  }

  /** Drops an fdset (QMP remove-fd); QEMU closes its descriptors once no node uses them. */
  async removeFdset(domain: string, fdsetId: number): Promise<void> {
    await this.qmp(domain, 'remove-fd', { 'fdset-id': fdsetId });
  }

  /**
   * Runs a human-monitor (HMP) command line through QMP `human-monitor-command` and returns its
   * output. HMP reports failures as "Error: ..." text; that becomes a QmpError of class HmpError.
   */
  async hmp(domain: string, commandLine: string): Promise<string> {
    const output = await this.qmp<string>(domain, 'human-monitor-command', { 'command-line': commandLine });
    return checkHmpOutput(domain, commandLine, output);
  }

  /** QMP commands the running QEMU accepts (`query-commands`). */
  async qmpCommands(domain: string): Promise<Set<string>> {
    const list = await this.qmp<Array<{ name: string }>>(domain, 'query-commands');
    return new Set(list.map((c) => c.name));
  }

  /** Version of the QEMU process that runs the domain (`query-version`). */
  async qemuVersion(domain: string): Promise<QemuVersion> {
    const v = await this.qmp<{ qemu: { major: number; minor: number; micro: number }; package: string }>(
      domain,
      'query-version',
    );
    return { ...v.qemu, package: v.package };
  }

  /**
   * The chain of a disk target, top first: format node, protocol node, filename, backing name as
   * written in the header, driver, read-only. Walks QEMU's block graph (x-debug-query-block-graph,
   * present since QEMU 4.0) so it stays right after blockdev-snapshot/reopen that libvirt did not see.
   */
  async diskChain(domain: string, target: string): Promise<BlockNode[]> {
    const alias = await this.diskAlias(domain, target);
    const blocks = await this.qmp<QmpBlockInfo[]>(domain, 'query-block');
    const block = blocks.find((b) => blockInfoMatchesAlias(b, alias));
    const top = block?.inserted?.['node-name'];
    if (top === undefined) {
      throw new ValidationError(
        'DISK_TARGET_NOT_FOUND',
        `domain ${domain}: no inserted block node for ${target} (qdev ${alias})`,
        { field: 'target' },
      );
    }
    const graph = await this.qmp<QmpBlockGraph>(domain, 'x-debug-query-block-graph');
    const nodes = await this.qmp<QmpBlockDeviceInfo[]>(domain, 'query-named-block-nodes', { flat: true });
    return chainFromGraph(domain, top, graph, nodes);
  }

  /**
   * Rewrites the backing file name in the header of a running image (QMP change-backing-file).
   * `device` is the root node (top format node name with -blockdev) that owns `imageNodeName`.
   */
  async changeBackingFile(
    domain: string,
    opts: { device: string; imageNodeName: string; backingFile: string },
  ): Promise<void> {
    await this.qmp(domain, 'change-backing-file', {
      device: opts.device,
      'image-node-name': opts.imageNodeName,
      'backing-file': opts.backingFile,
    });
  }

  /**
   * Switches a disk's writes to an overlay the caller already created (reuse-external), through
   * libvirt so the domain XML follows: `snapshot-create-as --disk-only --no-metadata --reuse-external`.
   */
  async externalSnapshot(
    domain: string,
    opts: { target: string; file: string; sourceType: 'file' | 'block' },
  ): Promise<void> {
    // virsh splits diskspec on commas; a literal comma in the path is written twice.
    const diskspec = [
      checkTarget(opts.target),
      'snapshot=external',
      'driver=qcow2',
      `stype=${opts.sourceType}`,
      `file=${opts.file.replaceAll(',', ',,')}`,
    ].join(',');
    await this.virsh([
      'snapshot-create-as',
      '--domain',
      checkDomain(domain),
      '--disk-only',
      '--no-metadata',
      '--reuse-external',
      '--atomic',
      '--diskspec',
      diskspec,
    ]);
  }

  /**
   * Starts merging the layers from `top` down to just above `base` into `base` while the VM runs,
   * through libvirt so its chain follows (`virsh blockcommit --top --base`, a non-active commit:
   * `top` is not the active layer). libvirt finishes the job by itself, also when this process
   * dies, and then drops the merged layers from the domain's chain; their files stay for the caller
   * to remove. Wait for it with waitForBlockJob.
   */
  async startBlockCommit(domain: string, opts: { target: string; top: string; base: string }): Promise<void> {
    await this.virsh([
      'blockcommit',
      '--domain',
      checkDomain(domain),
      '--path',
      checkTarget(opts.target),
      '--top',
      opts.top,
      '--base',
      opts.base,
    ]);
  }

  /**
   * Sets the virtual size of a running disk's active layer (`virsh blockresize`, QMP block_resize
   * on the node libvirt tracks), so the guest sees the new capacity. The layers below keep theirs.
   */
  async blockResize(domain: string, target: string, sizeBytes: number): Promise<void> {
    await this.virsh([
      'blockresize',
      '--domain',
      checkDomain(domain),
      '--path',
      checkTarget(target),
      '--size',
      `${sizeBytes}B`,
    ]);
  }

  /** Whether libvirt runs a block job (commit, copy, pull) on the disk now (`virsh blockjob --info`). */
  async blockJobRunning(domain: string, target: string): Promise<boolean> {
    const { stdout } = await this.virsh([
      'blockjob',
      '--domain',
      checkDomain(domain),
      '--path',
      checkTarget(target),
      '--info',
    ]);
    return !/No current block job/i.test(stdout) && stdout.trim() !== '';
  }

  /**
   * Waits (up to copyTimeoutMs) until no block job runs on the disk, e.g. one a killed client started.
   * Polls from 5 ms, doubling up to `pollMs`: a small commit ends within milliseconds, and each
   * poll (query-block-jobs in QEMU's main loop) stays cheap through the session.
   */
  async waitForBlockJob(domain: string, target: string, pollMs = 200): Promise<void> {
    const deadline = Date.now() + this.copyTimeoutMs;
    let delay = 5;
    while (await this.blockJobRunning(domain, target)) {
      if (Date.now() > deadline) {
        throw new HostCommandError('timeout', `a block job on ${target} of ${domain} still runs`, {
          command: 'virsh',
          args: ['blockjob', domain, target, '--info'],
        });
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, pollMs);
    }
  }

  /**
   * The disk's chain as libvirt describes it (`virsh dumpxml`, `<source>` then each
   * `<backingStore><source>`), top first: what a managedsave, save, migration or restart would
   * open. `inactive`: the persistent definition (a defined domain that is shut off).
   */
  async diskSources(domain: string, target: string, opts: { inactive?: boolean } = {}): Promise<string[]> {
    const args = ['dumpxml', '--domain', checkDomain(domain), ...(opts.inactive ? ['--inactive'] : [])];
    const { stdout } = await this.virsh(args);
    return diskSourcesFromXml(stdout, checkTarget(target));
  }

  /** Opens a new block node (QMP blockdev-add); see qcow2Blockdev for the usual options. */
  async blockdevAdd(domain: string, options: BlockdevOptions): Promise<void> {
    await this.qmp(domain, 'blockdev-add', options);
  }

  /** Puts `overlay` (added with backing: null) on top of `node`; QEMU drains and flushes `node` first. */
  async blockdevSnapshot(domain: string, opts: { node: string; overlay: string }): Promise<void> {
    await this.qmp(domain, 'blockdev-snapshot', { node: opts.node, overlay: opts.overlay });
  }

  /** Reopens nodes with new options (QMP blockdev-reopen, stable since QEMU 6.1); see reopenWithBacking. */
  async blockdevReopen(domain: string, options: BlockdevOptions[]): Promise<void> {
    await this.qmp(domain, 'blockdev-reopen', { options });
  }

  /** Closes a node that nothing uses any more (QMP blockdev-del). */
  async blockdevDel(domain: string, nodeName: string): Promise<void> {
    await this.qmp(domain, 'blockdev-del', { 'node-name': nodeName });
  }

  /**
   * Closes one layer of a chain that nothing uses any more: its format node, then its protocol
   * node if that is still open (libvirt adds the two separately; a protocol node added inline
   * with its format node goes away with it).
   */
  async blockdevDelLayer(domain: string, node: Pick<BlockNode, 'nodeName' | 'fileNodeName'>): Promise<void> {
    await this.blockdevDel(domain, node.nodeName);
    if (node.fileNodeName === null) return;
    const nodes = await this.qmp<QmpBlockDeviceInfo[]>(domain, 'query-named-block-nodes', { flat: true });
    if (nodes.some((n) => n['node-name'] === node.fileNodeName)) {
      await this.blockdevDel(domain, node.fileNodeName);
    }
  }

  /**
   * Freezes the guest's filesystems through the guest agent (`virsh domfsfreeze`).
   * With no agent configured or connected it returns `{ unavailable }` instead of throwing:
   * the caller then takes a crash-consistent snapshot. Any other failure throws.
   */
  async guestFreeze(domain: string): Promise<GuestFreezeResult> {
    const result = await this.agentCall(['domfsfreeze', '--domain', checkDomain(domain)]);
    if ('unavailable' in result) return result;
    return { frozen: parseFsCount(result.stdout, /Froze (\d+) filesystem/) };
  }

  /** Thaws what guestFreeze froze (`virsh domfsthaw`); `{ unavailable }` when no agent answers. */
  async guestThaw(domain: string): Promise<GuestThawResult> {
    const result = await this.agentCall(['domfsthaw', '--domain', checkDomain(domain)]);
    if ('unavailable' in result) return result;
    return { thawed: parseFsCount(result.stdout, /Thawed (\d+) filesystem/) };
  }

  private async agentCall(args: string[]): Promise<{ stdout: string } | { unavailable: string }> {
    try {
      const { stdout } = await this.virsh(args);
      return { stdout };
    } catch (error) {
      if (
        error instanceof HostCommandError &&
        error.kind !== 'timeout' &&
        AGENT_UNAVAILABLE.test(error.stderr)
      ) {
        const reason = lastErrorLine(error.stderr);
        this.logger?.info({ command: args[0], reason }, 'guest agent unavailable');
        return { unavailable: reason };
      }
      throw error;
    }
  }

  /**
   * One virsh command: through the host's virsh session, or as its own process when it hands over
   * a file descriptor (the session's virsh does not hold ours) or when sessions are off.
   */
  private virsh(args: string[], passFds?: number[], timeoutMs?: number) {
    const timeout = timeoutMs ?? this.timeoutMs;
    if (passFds === undefined && this.session !== null && virshCommandLine(args) !== null) {
      return this.session.run(args, { timeoutMs: timeout, ...(this.logger ? { logger: this.logger } : {}) });
    }
    return runTool('virsh', ['-c', this.uri, ...args], {
      timeoutMs: timeout,
      logger: this.logger,
      ...(passFds === undefined ? {} : { passFds }),
    });
  }

  private unexpected(args: string[], stdout: string, why: string): HostCommandError {
    return new HostCommandError('failed', `virsh ${args[0]}: unexpected output (${why})`, {
      command: 'virsh',
      args: ['-c', this.uri, ...args],
      exitCode: 0,
      stderr: stdout,
    });
  }
}

function checkDomain(domain: string): string {
  // Names, ids and UUIDs; never something virsh could read as an option.
  if (domain.length === 0 || domain.length > 255 || domain.startsWith('-') || /[/\p{Cc}]/u.test(domain)) {
    throw new ValidationError(
      'INVALID_DOMAIN_NAME',
      `invalid libvirt domain name: ${JSON.stringify(domain)}`,
      {
        field: 'domain',
      },
    );
  }
  return domain;
}

function checkTarget(target: string): string {
  if (!TARGET_NAME.test(target)) {
    throw new ValidationError('INVALID_DISK_TARGET', `invalid disk target: ${JSON.stringify(target)}`, {
      field: 'target',
    });
  }
  return target;
}

/** "running (booted)" → { state: 'running', reason: 'booted' }; null when unreadable. */
export function parseDomState(text: string): DomainState | null {
  const line = text.trim().split('\n')[0]?.trim() ?? '';
  const match = /^(.+?) \((.+)\)$/.exec(line);
  if (match) return { state: match[1]!, reason: match[2]! };
  return line === '' ? null : { state: line, reason: 'unknown' };
}

/** Rows of `virsh domblklist --details` (header and rule skipped). */
export function parseDomBlkList(text: string): DomainDisk[] {
  const disks: DomainDisk[] = [];
  for (const line of text.split('\n')) {
    const match = /^\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S.*?)\s*$/.exec(line);
    if (!match || line.trimStart().startsWith('Type ') || /^[\s-]+$/.test(line)) continue;
    disks.push({ type: match[1]!, device: match[2]!, target: match[3]!, source: match[4]! });
  }
  return disks;
}

/** target dev → alias name for every `<disk>` of a live domain XML. */
export function diskAliasesFromXml(xml: string): Map<string, string> {
  const aliases = new Map<string, string>();
  for (const disk of xml.matchAll(/<disk\b[\s\S]*?<\/disk>/g)) {
    const target = /<target\b[^>]*\bdev=['"]([^'"]+)['"]/.exec(disk[0])?.[1];
    const alias = /<alias\b[^>]*\bname=['"]([^'"]+)['"]/.exec(disk[0])?.[1];
    if (target !== undefined && alias !== undefined) aliases.set(target, alias);
  }
  return aliases;
}

/** Paths of one disk's chain in a domain XML, top first (`<source file|dev>` of each level). */
export function diskSourcesFromXml(xml: string, target: string): string[] {
  for (const disk of xml.matchAll(/<disk\b[\s\S]*?<\/disk>/g)) {
    const dev = /<target\b[^>]*\bdev=['"]([^'"]+)['"]/.exec(disk[0])?.[1];
    if (dev !== target) continue;
    return [...disk[0].matchAll(/<source\b[^>]*\b(?:file|dev)=['"]([^'"]+)['"]/g)].map((m) => xmlText(m[1]!));
  }
  return [];
}

function xmlText(text: string): string {
  return text
    .replaceAll('&apos;', "'")
    .replaceAll('&quot;', '"')
    .replaceAll('&lt;', '<')
    .replaceAll('&gt;', '>')
    .replaceAll('&amp;', '&');
}

function parseFsCount(stdout: string, pattern: RegExp): number {
  return Number(pattern.exec(stdout)?.[1] ?? 0);
}

function lastErrorLine(stderr: string): string {
  const lines = stderr
    .trim()
    .split('\n')
    .map((l) => l.replace(/^error:\s*/, '').trim());
  return lines[lines.length - 1] ?? stderr.trim();
}
