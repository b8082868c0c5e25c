// Oracles on a running libvirt domain that do not go through the agent's adapters: a lifecycle
// event watcher (`virsh event --loop`), a run-state poller (libvirt's domstate and QEMU's own
// query-status), a read-back of the disk through the domain's QEMU (blockdev-backup to a raw file),
// and a census of QEMU's block nodes and fdsets (leaked layers or descriptors).
import { type ChildProcess, spawn } from 'node:child_process';
import { readdir, readFile, readlink } from 'node:fs/promises';
import { execa } from 'execa';
import { LIBVIRT_URI, virsh } from './libvirt-fixtures.js';

/** Sends one QMP command through `virsh qemu-monitor-command` (another daemon: `uri`); throws on a QMP error. */
export async function qmp<T>(
  domain: string,
  execute: string,
  args?: Record<string, unknown>,
  uri?: string,
): Promise<T> {
  const request = [
    'qemu-monitor-command',
    domain,
    JSON.stringify(args === undefined ? { execute } : { execute, arguments: args }),
  ];
  const text =
    uri === undefined
      ? await virsh(request)
      : (await execa('virsh', ['-c', uri, ...request], { timeout: 60_000 })).stdout;
  const reply = JSON.parse(text) as { return?: T; error?: { class: string; desc: string } };
  if (reply.error) throw new Error(`QMP ${execute}: ${reply.error.class}: ${reply.error.desc}`);
  return reply.return as T;
}

/** Every lifecycle event libvirt emits for one domain, from a background `virsh event --loop`. */
export class LifecycleWatch {
  private output = '';

  private constructor(
    private readonly child: ChildProcess,
    private readonly exited: Promise<void>,
  ) {}

  /** Starts watching; resolves once virsh is connected and listening (it prints nothing before events). */
  static async start(domain: string): Promise<LifecycleWatch> {
    const child = spawn(
      'virsh',
      ['-c', LIBVIRT_URI, 'event', '--domain', domain, '--loop', '--event', 'lifecycle'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
    const watch = new LifecycleWatch(child, exited);
    child.stdout?.on('data', (chunk: Buffer) => {
      watch.output += chunk.toString('utf8');
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      watch.output += chunk.toString('utf8');
    });
    // virsh registers the callback right after connecting; give it a moment, then prove it is alive.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    if (child.exitCode !== null) throw new Error(`virsh event exited: ${watch.output}`);
    return watch;
  }

  /** The event lines seen so far, e.g. "event 'lifecycle' for domain 'x': Suspended Paused". */
  lines(): string[] {
    return this.output
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l.startsWith('event '));
  }

  /** Waits until a line matches (events arrive asynchronously), up to `ms`. */
  async waitFor(pattern: RegExp, ms = 10_000): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      if (this.lines().some((l) => pattern.test(l))) return true;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    return false;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGTERM');
    await this.exited;
  }
}

/**
 * Polls the domain's run state in the background until stopped: libvirt's `domstate --reason` and
 * QEMU's `query-status` alternately (QEMU's own answer catches a pause libvirt would not report).
 */
export class StatePoller {
  readonly seen = new Map<string, number>();
  private stopped = false;
  private readonly loop: Promise<void>;

  constructor(private readonly domain: string) {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      const state = (await virsh(['domstate', '--reason', this.domain])).trim();
      this.count(`libvirt: ${state}`);
      const status = await qmp<{ status: string; running: boolean }>(this.domain, 'query-status');
      this.count(`qemu: ${status.status}`);
    }
  }

  private count(key: string): void {
    this.seen.set(key, (this.seen.get(key) ?? 0) + 1);
  }

  /** Stops polling and returns the states seen (with how often). */
  async stop(): Promise<Map<string, number>> {
    this.stopped = true;
    await this.loop;
    return this.seen;
  }
}

interface QmpBlockImage {
  filename: string;
  'backing-image'?: QmpBlockImage;
}

/** The pid of the domain's QEMU process (libvirt's pid file). */
export async function qemuPid(domain: string): Promise<number> {
  return Number((await readFile(`/run/libvirt/qemu/${domain}.pid`, 'utf8')).trim());
}

/**
 * The file QEMU really has open for a layer: a `/dev/fdset/N` name is resolved through
 * the fdset's descriptors in QEMU's process (/proc/<pid>/fd follows renames); a path stays as is.
 */
async function resolveInQemu(domain: string, reported: string): Promise<string> {
  // A layer whose backing changed at run time is reported as "json:{...}": its own file is `file.filename`.
  const filename = reported.startsWith('json:')
    ? (JSON.parse(reported.slice(5)) as { file: { filename: string } }).file.filename
    : reported;
  const match = /^\/dev\/fdset\/(\d+)$/.exec(filename);
  if (match === null) return filename;
  const sets = await qmp<Array<{ 'fdset-id': number; fds: Array<{ fd: number }> }>>(domain, 'query-fdsets');
  const fds = sets.find((s) => s['fdset-id'] === Number(match[1]))?.fds ?? [];
  const pid = await qemuPid(domain);
  const paths = new Set(await Promise.all(fds.map((f) => readlink(`/proc/${pid}/fd/${f.fd}`))));
  if (paths.size !== 1)
    throw new Error(`${filename} of ${domain} holds ${[...paths].join(', ') || 'no file'}`);
  return [...paths][0]!;
}

interface QmpBlockImage {
  filename: string;
  'backing-image'?: QmpBlockImage;
}

/** Files under `dir` the domain's QEMU process holds open (a removed one shows as "... (deleted)"). */
export async function qemuOpenFilesUnder(domain: string, dir: string): Promise<string[]> {
  const pid = await qemuPid(domain);
  const fds = await readdir(`/proc/${pid}/fd`);
  const targets = await Promise.all(fds.map((fd) => readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')));
  return [...new Set(targets.filter((t) => t.startsWith(dir)))].sort();
}

/**
 * The image chain QEMU reads for the domain's one disk (query-block), top first: each layer's
 * filename as QEMU reports it, the file it really has open (`path`), and the top's node name.
 */
export async function qemuChain(
  domain: string,
  uri?: string,
): Promise<Array<{ filename: string; path: string; nodeName: string }>> {
  const blocks = await qmp<Array<{ inserted?: { 'node-name': string; image: QmpBlockImage } }>>(
    domain,
    'query-block',
    undefined,
    uri,
  );
  const inserted = blocks.find((b) => b.inserted !== undefined)?.inserted;
  if (inserted === undefined) throw new Error(`no disk inserted in ${domain}`);
  const chain: Array<{ filename: string; path: string; nodeName: string }> = [];
  for (let image: QmpBlockImage | undefined = inserted.image; image; image = image['backing-image']) {
    chain.push({
      filename: image.filename,
      path: uri === undefined ? await resolveInQemu(domain, image.filename) : image.filename,
      nodeName: chain.length === 0 ? inserted['node-name'] : '',
    });
  }
  return chain;
}

/**
 * Reads the whole disk through the domain's QEMU: blockdev-backup (sync full) of the disk's top
 * node into a new raw file, which the caller then compares with a reference.
 */
export async function readBackThroughQemu(
  domain: string,
  outFile: string,
  sizeBytes: number,
  uri?: string,
): Promise<void> {
  await execa('truncate', ['-s', String(sizeBytes), outFile], { timeout: 30_000 });
  const [top] = await qemuChain(domain, uri);
  const tag = `rb${process.pid}${Date.now().toString(36)}`;
  const call = <T>(execute: string, args?: Record<string, unknown>) => qmp<T>(domain, execute, args, uri);
  await call('blockdev-add', {
    'node-name': tag,
    driver: 'raw',
    file: { driver: 'file', filename: outFile },
  });
  try {
    await call('blockdev-backup', {
      'job-id': tag,
      device: top!.nodeName,
      target: tag,
      sync: 'full',
      'auto-dismiss': false,
    });
    const deadline = Date.now() + 60_000;
    for (;;) {
      const jobs = await call<Array<{ id: string; status: string; error?: string }>>('query-jobs');
      const job = jobs.find((j) => j.id === tag);
      if (job === undefined) throw new Error(`backup job ${tag} disappeared`);
      if (job.status === 'concluded') {
        await call('job-dismiss', { id: tag });
        if (job.error !== undefined) throw new Error(`backup job failed: ${job.error}`);
        break;
      }
      if (Date.now() > deadline) throw new Error(`backup job ${tag} still ${job.status} after 60 s`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  } finally {
    await call('blockdev-del', { 'node-name': tag });
  }
}

/**
 * What QEMU holds open: the qcow2 nodes (each one image layer), the depth of the disk's chain,
 * and the fdsets (with those a node still reads through /dev/fdset/N). A layer or fdset not in
 * the chain is a leak.
 */
export async function blockCensus(domain: string): Promise<{
  qcow2Nodes: string[];
  chainDepth: number;
  fdsets: number[];
  fdsetsInUse: number[];
}> {
  const nodes = await qmp<Array<{ 'node-name': string; drv: string; file: string }>>(
    domain,
    'query-named-block-nodes',
    { flat: true },
  );
  const fdsets = await qmp<Array<{ 'fdset-id': number }>>(domain, 'query-fdsets');
  const inUse = new Set<number>();
  for (const node of nodes) {
    const match = /^\/dev\/fdset\/(\d+)$/.exec(node.file);
    if (match) inUse.add(Number(match[1]));
  }
  return {
    qcow2Nodes: nodes.filter((n) => n.drv === 'qcow2').map((n) => n['node-name']),
    chainDepth: (await qemuChain(domain)).length,
    fdsets: fdsets.map((f) => f['fdset-id']).sort((a, b) => a - b),
    fdsetsInUse: [...inUse].sort((a, b) => a - b),
  };
}
