// The QEMU block-graph adapter: every change the strategies make to a running disk's chain, and
// what they read about it, in one place. Through libvirt (src/host/libvirt.ts, its virsh session):
// QMP block-graph commands where the agent changes the graph itself (lvm-cow's repoint), libvirt's
// own operations where libvirt must follow (live-rotate's switch and commit). Strategies hold a
// `BlockGraph` (the interface), so their step lists can be tested with a fake.
import { HostCommandError } from '../errors/index.js';
import type { GuestFreezeResult, Libvirt } from './libvirt.js';
import { type BlockNode, qcow2Blockdev, reopenWithBacking } from './qmp.js';

/** One disk of a domain: libvirt domain name and disk target (e.g. vda). */
export interface DiskRef {
  domain: string;
  target: string;
}

/** Where a guest freeze is recorded, so recovery can thaw a guest a killed job left frozen. */
export interface FreezeRecord {
  /** Before the freeze is asked for (a freeze that half-happened must be thawed too). */
  freezing(): Promise<void>;
  /** The freeze's outcome: frozen, or no guest agent (then nothing is frozen). */
  frozen(result: GuestFreezeResult): Promise<void>;
  /** After the thaw. */
  thawed(): Promise<void>;
}

/** A QCOW2 image to open as a read-only layer with no backing of its own. */
export interface LayerImage {
  nodeName: string;
  filename: string;
  sourceType: 'file' | 'block';
}

/** What the strategies need of a running disk's block graph. */
export interface BlockGraph {
  /** The disk's chain as QEMU has it open, top first: read it once per step and pass it along. */
  chain(disk: DiskRef): Promise<BlockNode[]>;
  /** Whether a QEMU process holds the domain's disks (running or paused); false when it is gone. */
  holdsDisks(domain: string): Promise<boolean>;
  /**
   * libvirt's chain of the disk, top first (the live description while a QEMU process holds it,
   * else the persistent one): what a restart would open. Null when the domain is gone.
   */
  describedChain(disk: DiskRef, opts?: { live?: boolean }): Promise<string[] | null>;
  /** Opens `image` read-only as node `nodeName` unless a node of that name is open already. */
  openLayer(domain: string, image: LayerImage): Promise<void>;
  /** Closes node `nodeName` when it is open but not in the disk's chain (a layer openLayer left). */
  closeDetachedLayer(disk: DiskRef, nodeName: string): Promise<void>;
  /** Makes node `backingNode` the backing of `top` (blockdev-reopen; same data, the guest cannot tell). */
  attachBacking(domain: string, top: BlockNode, backingNode: string): Promise<void>;
  /** Writes `backingFile` as the backing name into `top`'s header (QEMU writes its own header). */
  writeBackingName(domain: string, top: BlockNode, backingFile: string): Promise<void>;
  /**
   * Puts the overlay the caller created on top of the disk through libvirt (external disk-only
   * snapshot, reuse-external): QEMU writes to it, libvirt's descriptions name it.
   */
  switchToOverlay(disk: DiskRef, overlay: { file: string; sourceType: 'file' | 'block' }): Promise<void>;
  /** Starts libvirt's non-active block commit of `top` (and what lies between) into `base`. */
  startCommit(disk: DiskRef, layers: { top: string; base: string }): Promise<void>;
  /**
   * Makes the disk's lower layer `filename` read-only again when QEMU still has it writable, which
   * flushes QEMU's own caches of it (its QCOW2 tables) and reports a failure as a QmpError. A block
   * commit reopens its base read-write and back at its end, and throws away a failure of that
   * reopen: the base then stays writable and no later commit flushes it (reliability.md, L5).
   * Nothing to do when the layer is read-only, the top, or not in the chain.
   */
  sealLayer(disk: DiskRef, filename: string): Promise<void>;
  /** Waits until no block job runs on the disk. */
  waitForBlockJob(disk: DiskRef): Promise<void>;
  /**
   * Runs `fn` with the guest's filesystems frozen through its guest agent, thawed in `finally`.
   * Without a guest agent `fn` runs unfrozen (`fn(false)`): a crash-consistent snapshot.
   */
  withGuestFrozen<T>(domain: string, fn: (frozen: boolean) => Promise<T>, record?: FreezeRecord): Promise<T>;
}

/** The libvirt calls the adapter makes (Libvirt has them; a test can hand in less). */
export type BlockGraphLibvirt = Pick<
  Libvirt,
  | 'diskChain'
  | 'domainState'
  | 'diskSources'
  | 'qmp'
  | 'blockdevAdd'
  | 'blockdevDel'
  | 'blockdevReopen'
  | 'changeBackingFile'
  | 'externalSnapshot'
  | 'startBlockCommit'
  | 'waitForBlockJob'
  | 'guestFreeze'
  | 'guestThaw'
>;

export class QemuBlockGraph implements BlockGraph {
  constructor(private readonly libvirt: BlockGraphLibvirt) {}

  chain(disk: DiskRef): Promise<BlockNode[]> {
    return this.libvirt.diskChain(disk.domain, disk.target);
  }

  async holdsDisks(domain: string): Promise<boolean> {
    try {
      return (await this.libvirt.domainState(domain)).state !== 'shut off';
    } catch (error) {
      if (error instanceof HostCommandError && error.kind === 'not-found') return false;
      throw error;
    }
  }

  async describedChain(disk: DiskRef, opts: { live?: boolean } = {}): Promise<string[] | null> {
    try {
      const live = opts.live ?? (await this.holdsDisks(disk.domain));
      return await this.libvirt.diskSources(disk.domain, disk.target, { inactive: !live });
    } catch (error) {
      if (error instanceof HostCommandError && error.kind === 'not-found') return null;
      throw error;
    }
  }

  async openLayer(domain: string, image: LayerImage): Promise<void> {
    if ((await this.nodeNames(domain)).has(image.nodeName)) return;
    await this.libvirt.blockdevAdd(domain, qcow2Blockdev({ ...image, readOnly: true, backing: null }));
  }

  async closeDetachedLayer(disk: DiskRef, nodeName: string): Promise<void> {
    if (!(await this.nodeNames(disk.domain)).has(nodeName)) return;
    if ((await this.chain(disk)).some((n) => n.nodeName === nodeName)) return;
    await this.libvirt.blockdevDel(disk.domain, nodeName);
  }

  async attachBacking(domain: string, top: BlockNode, backingNode: string): Promise<void> {
    await this.libvirt.blockdevReopen(domain, [reopenWithBacking(top, backingNode)]);
  }

  async writeBackingName(domain: string, top: BlockNode, backingFile: string): Promise<void> {
    await this.libvirt.changeBackingFile(domain, {
      device: top.nodeName,
      imageNodeName: top.nodeName,
      backingFile,
    });
  }

  async switchToOverlay(
    disk: DiskRef,
    overlay: { file: string; sourceType: 'file' | 'block' },
  ): Promise<void> {
    await this.libvirt.externalSnapshot(disk.domain, { target: disk.target, ...overlay });
  }

  async startCommit(disk: DiskRef, layers: { top: string; base: string }): Promise<void> {
    await this.libvirt.startBlockCommit(disk.domain, { target: disk.target, ...layers });
  }

  async sealLayer(disk: DiskRef, filename: string): Promise<void> {
    const chain = await this.chain(disk);
    const at = chain.findIndex((n) => n.filename === filename);
    const node = chain[at];
    if (at <= 0 || node === undefined || node.readOnly) return;
    // The same node with the same backing (a base may have one: a template), read-only.
    const backing = chain[at + 1]?.nodeName ?? null;
    await this.libvirt.blockdevReopen(disk.domain, [reopenWithBacking({ ...node, readOnly: true }, backing)]);
  }

  waitForBlockJob(disk: DiskRef): Promise<void> {
    return this.libvirt.waitForBlockJob(disk.domain, disk.target);
  }

  async withGuestFrozen<T>(
    domain: string,
    fn: (frozen: boolean) => Promise<T>,
    record?: FreezeRecord,
  ): Promise<T> {
    await record?.freezing();
    const result = await this.libvirt.guestFreeze(domain);
    await record?.frozen(result);
    if (!('frozen' in result)) return fn(false);
    try {
      return await fn(true);
    } finally {
      await this.libvirt.guestThaw(domain);
      await record?.thawed();
    }
  }

  /** Names of every node QEMU has open (one query-named-block-nodes). */
  private async nodeNames(domain: string): Promise<Set<string>> {
    const nodes = await this.libvirt.qmp<Array<{ 'node-name': string }>>(domain, 'query-named-block-nodes', {
      flat: true,
    });
    return new Set(nodes.map((n) => n['node-name']));
  }
}
