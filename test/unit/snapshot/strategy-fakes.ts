// Fakes for unit tests of a strategy's step list: a block graph and a libvirt that record every call
// in one log (so tests can assert order: what happens inside a pause, around a freeze), an
// in-memory journal, and just enough qemu-img, store and file pool for the steps under test.
import type { BlockGraph, DiskRef, FreezeRecord, LayerImage } from '../../../src/host/block-graph.js';
import type { BlockNode } from '../../../src/host/libvirt.js';
import type { StepJournal } from '../../../src/jobs/types.js';
import type { SnapshotDeps } from '../../../src/snapshot/deps.js';
import { EngineJournal } from '../../../src/snapshot/journal.js';
import type { CreateFacts, CreateJournal, CreatePlan } from '../../../src/snapshot/plan.js';

export type Log = string[];

export function layer(nodeName: string, filename: string, backingFilename: string | null = null): BlockNode {
  return {
    nodeName,
    driver: 'qcow2',
    fileNodeName: `${nodeName}-file`,
    fileDriver: 'file',
    filename,
    backingFilename,
    readOnly: false,
  };
}

/** A block graph whose answers the test sets; every call is logged as `graph.<method> <args>`. */
export class FakeBlockGraph implements BlockGraph {
  chainNow: BlockNode[] = [];
  /** What describedChain answers, in turn (the last one repeats); null: the domain is gone. */
  described: Array<string[] | null> = [];
  holds = true;
  guestAgent = true;
  failOn: string | null = null;
  /** What sealLayer throws (QEMU refusing the read-only reopen); null: it succeeds. */
  sealError: unknown = null;

  constructor(private readonly log: Log) {}

  private call(entry: string): void {
    this.log.push(`graph.${entry}`);
    if (this.failOn !== null && entry.startsWith(this.failOn)) throw new Error(`fake failure in ${entry}`);
  }

  async chain(disk: DiskRef) {
    this.call(`chain ${disk.domain}/${disk.target}`);
    return this.chainNow;
  }
  async holdsDisks(domain: string) {
    this.call(`holdsDisks ${domain}`);
    return this.holds;
  }
  async describedChain(disk: DiskRef, opts: { live?: boolean } = {}) {
    this.call(`describedChain ${disk.target}${opts.live ? ' live' : ''}`);
    return this.described.length > 1 ? this.described.shift()! : (this.described[0] ?? null);
  }
  async openLayer(_domain: string, image: LayerImage) {
    this.call(`openLayer ${image.nodeName} ${image.filename}`);
  }
  async closeDetachedLayer(disk: DiskRef, nodeName: string) {
    this.call(`closeDetachedLayer ${disk.target} ${nodeName}`);
  }
  async attachBacking(_domain: string, top: BlockNode, backingNode: string) {
    this.call(`attachBacking ${top.nodeName} ${backingNode}`);
  }
  async writeBackingName(_domain: string, top: BlockNode, backingFile: string) {
    this.call(`writeBackingName ${top.nodeName} ${backingFile}`);
  }
  async switchToOverlay(disk: DiskRef, overlay: { file: string }) {
    this.call(`switchToOverlay ${disk.target} ${overlay.file}`);
  }
  async startCommit(_disk: DiskRef, layers: { top: string; base: string }) {
    this.call(`startCommit ${layers.top} ${layers.base}`);
  }
  async sealLayer(disk: DiskRef, filename: string) {
    this.call(`sealLayer ${disk.target} ${filename}`);
    if (this.sealError !== null) throw this.sealError;
  }
  async waitForBlockJob(disk: DiskRef) {
    this.call(`waitForBlockJob ${disk.target}`);
  }
  async withGuestFrozen<T>(_domain: string, fn: (frozen: boolean) => Promise<T>, record?: FreezeRecord) {
    await record?.freezing();
    this.call('freeze');
    const result = this.guestAgent ? { frozen: 1 } : { unavailable: 'no agent' };
    await record?.frozen(result);
    if (!this.guestAgent) return fn(false);
    try {
      return await fn(true);
    } finally {
      this.call('thaw');
      await record?.thawed();
    }
  }
}

/** A snapshot.create job journal in memory. */
export function memoryJournal(): CreateJournal {
  let data: Record<string, unknown> = {};
  const store: StepJournal = {
    read: <T extends Record<string, unknown>>() => data as T,
    write: async (patch) => {
      data = { ...data, ...structuredClone(patch) };
    },
  };
  return new EngineJournal<CreatePlan, CreateFacts>(store);
}

/** Deps with the fake graph and logging fakes of the other adapters the steps under test touch. */
export function fakeDeps(
  log: Log,
  graph: FakeBlockGraph,
  opts: {
    backing?: Record<string, string | null>;
    chains?: Record<string, string[]>;
    /** What a flush handle's sync throws (undefined: it succeeds). */
    flushError?: Error;
    /** Only this path's flush fails (default: every path's). */
    flushFailsOn?: string;
    /** Which paths exist (filePool.exists); none by default. */
    existing?: string[];
  } = {},
): SnapshotDeps {
  const backing = opts.backing ?? {};
  return {
    blockGraph: graph,
    libvirt: {
      suspend: async (vm: string) => {
        log.push(`libvirt.suspend ${vm}`);
      },
      resume: async (vm: string) => {
        log.push(`libvirt.resume ${vm}`);
      },
    },
    qemuImg: {
      // Reached for paths with no file (the tests' images do not exist): the header answer.
      info: async (path: string) => ({
        backingFile: backing[path] ?? null,
        fullBackingFile: backing[path] ?? null,
      }),
      allocatedBytes: async () => 0,
      rebase: async (o: { image: string }) => {
        log.push(`qemuImg.rebase ${o.image}`);
      },
    },
    store: {
      readChain: async (top: string) => (opts.chains?.[top] ?? [top]).map((path) => ({ path })),
    },
    filePool: {
      remove: async (path: string) => {
        log.push(`filePool.remove ${path}`);
        return true;
      },
      exists: async (path: string) => opts.existing?.includes(path) ?? false,
      flushHandle: async (path: string) => {
        log.push(`filePool.flushHandle ${path}`);
        return {
          sync: async () => {
            log.push(`flush.sync ${path}`);
            if (opts.flushError && (opts.flushFailsOn ?? path) === path) throw opts.flushError;
          },
          close: async () => {
            log.push(`flush.close ${path}`);
          },
        };
      },
      create: async (o: { path: string }) => {
        log.push(`filePool.create ${o.path}`);
      },
    },
  } as unknown as SnapshotDeps;
}

export function createPlan(dir: string, over: Partial<CreatePlan> = {}): CreatePlan {
  return {
    strategy: 'lvm-cow',
    strategyReason: 'test',
    kind: 'delta',
    fullReason: null,
    activePath: `${dir}/vol.qcow2`,
    vm: 'h16-vm',
    vmRunning: true,
    target: 'vdb',
    storeDir: `${dir}/store`,
    snapshotName: 'snap-2',
    snapshotPath: `${dir}/store/snap-2`,
    partPath: `${dir}/store/.snap-2.part`,
    parentName: 'snap-1',
    parentPath: `${dir}/store/snap-1`,
    parentBacking: 'snap-1',
    chainDepth: 1,
    virtualSize: 1 << 30,
    stagingName: 'vol.qcow2.lr-a',
    retiredName: 'vol.qcow2.old-t1',
    cloneName: 'vol.qcow2.cow-t1',
    tag: 't1',
    verify: 'none',
    compress: false,
    quiesce: false,
    ...over,
  };
}

export const io = { signal: new AbortController().signal, progress: () => undefined };
