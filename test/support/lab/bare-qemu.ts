// A running VM for the lab suites, which have no libvirtd: a bare QEMU (`-machine none`, TCG) with a
// QMP socket, whose disk is a QCOW2 chain on LVs. The engine talks to it as its Libvirt adapter: the
// methods live-rotate and volume.resize call, done over QMP the way libvirt does them
// (blockdev-add + blockdev-snapshot for `snapshot-create-as --reuse-external`, a block-commit job then
// blockdev-del of the merged nodes for `blockcommit`, block_resize for `blockresize`).
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { failedToolError } from '../../../src/host/exec.js';
import type { BlockNode } from '../../../src/host/libvirt.js';
import {
  type BlockdevOptions,
  chainFromGraph,
  type QmpBlockDeviceInfo,
  type QmpBlockGraph,
} from '../../../src/host/qmp.js';
import type { ReferenceDisk } from '../reference-images.js';
import { QmpClient } from './lab.js';

/**
 * A running VM for the engine: a bare QEMU whose disk is the chain under node `top`, driven over
 * QMP with the Libvirt adapter's methods (the ones live-rotate and volume.resize call).
 */
export class BareQemu {
  private top = 'fmt';
  /** Layers opened by the monitor (command line or blockdev-add), by filename: closed with blockdev-del. */
  private readonly owned = new Map<string, Pick<BlockNode, 'nodeName' | 'fileNodeName'>>();
  private nextNode = 1;

  private constructor(
    private readonly process: ResultPromise,
    private readonly client: QmpClient,
    /** Where its sockets go (QMP, the read-back NBD export). */
    private readonly dir: string,
    /** Every layer opened O_DIRECT (libvirt's cache='none'); else through the host page cache (cache='default'). */
    private readonly cacheDirect: boolean,
  ) {}

  /**
   * Starts QEMU on the chain whose top layer is `topPath` (the lower layers from its header, which
   * inherit its cache mode); sockets in `dir`. `cacheDirect`: as libvirt's cache='none'.
   */
  static async start(topPath: string, dir: string, opts: { cacheDirect?: boolean } = {}): Promise<BareQemu> {
    const socket = join(dir, `vm-${Date.now()}.qmp`);
    const cacheDirect = opts.cacheDirect ?? false;
    const blockdev = {
      driver: 'qcow2',
      'node-name': 'fmt',
      file: { driver: 'host_device', filename: topPath, 'node-name': 'file', 'auto-read-only': true },
      ...(cacheDirect ? { cache: { direct: true } } : {}),
    };
    const process = execa(
      'qemu-system-x86_64',
      ['-machine', 'none', '-nodefaults', '-display', 'none', '-accel', 'tcg', '-qmp'].concat([
        `unix:${socket},server=on,wait=off`,
        '-blockdev',
        JSON.stringify(blockdev),
      ]),
      { reject: false, timeout: 15 * 60_000 },
    );
    const qemu = new BareQemu(process, await QmpClient.connect(socket), dir, cacheDirect);
    qemu.owned.set(topPath, { nodeName: 'fmt', fileNodeName: 'file' });
    return qemu;
  }

  get pid(): number | undefined {
    return this.process.pid;
  }

  async quit(): Promise<void> {
    await this.client.execute('quit');
    await this.process;
    this.client.close();
  }

  async kill(): Promise<void> {
    this.client.close();
    this.process.kill('SIGKILL');
    await this.process.catch(() => undefined);
  }

  // --- the Libvirt adapter's methods -------------------------------------------------------------
  async domainState() {
    return { state: 'running', reason: 'booted' };
  }
  async isRunning() {
    return true;
  }
  async disks() {
    const [top] = await this.diskChain();
    return [{ type: 'block', device: 'disk', target: 'vda', source: top!.filename }];
  }
  async diskChain(): Promise<BlockNode[]> {
    const graph = (await this.client.execute('x-debug-query-block-graph')) as QmpBlockGraph;
    const nodes = (await this.client.execute('query-named-block-nodes', {
      flat: true,
    })) as QmpBlockDeviceInfo[];
    return chainFromGraph('lab', this.top, graph, nodes);
  }
  async diskSources(): Promise<string[]> {
    return (await this.diskChain()).map((n) => n.filename);
  }
  /** `snapshot-create-as --disk-only --reuse-external --diskspec vda,stype=block,file=<file>` */
  async externalSnapshot(_domain: string, opts: { target: string; file: string; sourceType: string }) {
    await this.asVirsh('snapshot-create-as', () => this.switchTo(opts));
  }
  private async switchTo(opts: { file: string; sourceType: string }) {
    if (opts.sourceType !== 'block')
      throw new Error(`a bare QEMU takes LVs only, not a ${opts.sourceType} layer`);
    const node = `ov${this.nextNode++}`;
    const fileNode = `${node}-file`;
    await this.client.execute('blockdev-add', {
      driver: 'qcow2',
      'node-name': node,
      backing: null,
      file: { driver: 'host_device', filename: opts.file, 'node-name': fileNode },
      ...(this.cacheDirect ? { cache: { direct: true } } : {}),
    });
    try {
      await this.client.execute('blockdev-snapshot', { node: this.top, overlay: node });
    } catch (error) {
      await this.close({ nodeName: node, fileNodeName: fileNode }); // libvirt closes what it opened too
      throw error;
    }
    this.owned.set(opts.file, { nodeName: node, fileNodeName: fileNode });
    this.top = node;
  }
  /** `blockcommit --top <top> --base <base>` (a non-active commit); waitForBlockJob finishes it. */
  async startBlockCommit(_domain: string, opts: { target: string; top: string; base: string }) {
    await this.asVirsh('blockcommit', () => this.commit(opts));
  }
  private async commit(opts: { top: string; base: string }) {
    const chain = await this.diskChain();
    const node = (path: string) => chain.find((n) => n.filename === path)!.nodeName;
    await this.client.execute('block-commit', {
      'job-id': 'commit',
      // Kept after it ends, so waitForBlockJob can read its error (libvirt gets it from the event).
      'auto-dismiss': false,
      device: this.top,
      'top-node': node(opts.top),
      'base-node': node(opts.base),
      'backing-file': opts.base, // libvirt names the base by its path in the overlay's header
    });
  }
  async blockJobRunning(): Promise<boolean> {
    const jobs = (await this.client.execute('query-jobs')) as Array<{ status: string }>;
    return jobs.some((j) => j.status !== 'concluded' && j.status !== 'null');
  }
  /**
   * Waits for the job, then closes the layers it dropped from the chain (libvirt does that too). A
   * job that ended with an error (BLOCK_JOB_COMPLETED's `error`) fails it as virsh's blockjob would.
   */
  async waitForBlockJob(): Promise<void> {
    while (await this.blockJobRunning()) await new Promise((r) => setTimeout(r, 100));
    const jobs = (await this.client.execute('query-jobs')) as Array<{
      id: string;
      status: string;
      error?: string;
    }>;
    const ended = jobs.find((j) => j.id === 'commit' && j.status === 'concluded');
    if (ended !== undefined) {
      await this.client.execute('job-dismiss', { id: 'commit' });
      if (ended.error !== undefined) {
        throw failedToolError('virsh', ['blockjob'], `error: block commit failed: ${ended.error}`, 1);
      }
    }
    const inChain = new Set(await this.diskSources());
    // Newest first: a commit that merged two layers (one left by a failed rotation) dropped both,
    // and the older one is the backing of the newer one until that is closed.
    for (const [path, node] of [...this.owned].reverse()) {
      if (inChain.has(path)) continue;
      await this.close(node);
      this.owned.delete(path);
    }
  }
  private async close(node: Pick<BlockNode, 'nodeName' | 'fileNodeName'>): Promise<void> {
    await this.client.execute('blockdev-del', { 'node-name': node.nodeName });
    const nodes = (await this.client.execute('query-named-block-nodes', {
      flat: true,
    })) as QmpBlockDeviceInfo[];
    if (nodes.some((n) => n['node-name'] === node.fileNodeName))
      await this.client.execute('blockdev-del', { 'node-name': node.fileNodeName });
  }
  /** QMP blockdev-reopen (sealLayer's read-only reopen): QEMU's refusal is the QmpError the adapter throws too. */
  async blockdevReopen(_domain: string, options: BlockdevOptions[]) {
    await this.client.execute('blockdev-reopen', { options });
  }
  /** `blockresize` */
  async blockResize(_domain: string, _target: string, sizeBytes: number) {
    await this.asVirsh('blockresize', () =>
      this.client.execute('block_resize', { 'node-name': this.top, size: sizeBytes }),
    );
  }

  /** A QMP failure as the Libvirt adapter reports virsh's (classified from its message: EIO → HOST_IO_ERROR). */
  private async asVirsh(command: string, run: () => Promise<unknown>): Promise<void> {
    try {
      await run();
    } catch (error) {
      throw failedToolError('virsh', [command], `error: ${(error as Error).message}`, 1);
    }
  }

  // --- the guest -----------------------------------------------------------------------------------
  async guestWrite(pattern: number, offset: number, length: number): Promise<void> {
    await this.client.hmp(`qemu-io ${this.top} "write -P ${pattern} ${offset} ${length}"`);
    await this.client.hmp(`qemu-io ${this.top} "flush"`);
  }
  /** What the guest reads, through QEMU: its disk exported over NBD, compared with the reference. */
  async readBackDiffers(reference: ReferenceDisk): Promise<string | null> {
    const socket = join(this.dir, `rb-${Date.now()}.sock`);
    await this.client.execute('nbd-server-start', { addr: { type: 'unix', data: { path: socket } } });
    await this.client.execute('block-export-add', {
      type: 'nbd',
      id: 'rb',
      'node-name': this.top,
      name: 'vda',
    });
    try {
      const r = await execa(
        'qemu-img',
        ['compare', '-f', 'raw', '-F', 'raw', `nbd+unix:///vda?socket=${socket}`, reference.path],
        { reject: false, timeout: 120_000 },
      );
      if (r.exitCode === 0) return null;
      if (r.exitCode === 1) return r.stdout;
      throw new Error(`qemu-img compare over NBD failed: ${r.stderr}`);
    } finally {
      await this.client.execute('block-export-del', { id: 'rb' });
      await this.client.execute('nbd-server-stop');
    }
  }
  async virtualSize(): Promise<number> {
    const nodes = (await this.client.execute('query-named-block-nodes', {
      flat: true,
    })) as Array<QmpBlockDeviceInfo & { image: { 'virtual-size': number } }>;
    return nodes.find((n) => n['node-name'] === this.top)!.image['virtual-size'];
  }
}
