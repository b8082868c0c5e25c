// QMP shapes and pure helpers used by the libvirt adapter: reply parsing, error mapping,
// walking the block graph into a disk chain, and blockdev-add option builders.
import { QmpError, ValidationError } from '../errors/index.js';

/** One layer of a disk's chain as QEMU sees it (a format node and the protocol node under it). */
export interface BlockNode {
  /** Format node name (qcow2/raw layer), e.g. `libvirt-1-format`. */
  nodeName: string;
  /** Format driver: qcow2, raw... */
  driver: string;
  /** Protocol node under the format node (`file` child), e.g. `libvirt-1-storage`; null if none. */
  fileNodeName: string | null;
  /** Protocol driver: file, host_device...; null if no protocol node. */
  fileDriver: string | null;
  /** Path QEMU opened for this layer (the protocol node's filename). */
  filename: string;
  /**
   * Filename of the layer QEMU reads as this one's backing (the next layer's `filename`); null
   * for the bottom layer. This is QEMU's open chain, not the header string: change-backing-file
   * rewrites only the header (read it with `qemu-img info -U`).
   */
  backingFilename: string | null;
  readOnly: boolean;
  /** Host cache mode of the format node (O_DIRECT, flushes); absent when QEMU does not report it. */
  cache?: BlockCache;
}

/** Options of blockdev-add / blockdev-reopen entries (QAPI BlockdevOptions). */
export interface BlockdevOptions {
  driver: string;
  'node-name': string;
  [option: string]: unknown;
}

/** Subset of QAPI BlockDeviceInfo (query-named-block-nodes) that the adapter reads. */
export interface QmpBlockDeviceInfo {
  'node-name': string;
  drv: string;
  ro: boolean;
  file: string;
  cache?: { writeback: boolean; direct: boolean; 'no-flush': boolean };
}

/** Host cache options of a node (QAPI BlockdevCacheOptions); a reopen must repeat them. */
export interface BlockCache {
  direct: boolean;
  'no-flush': boolean;
}

/** x-debug-query-block-graph: nodes and parent→child edges named root/file/backing/... */
export interface QmpBlockGraph {
  nodes: Array<{ id: number; type: string; name: string }>;
  edges: Array<{ parent: number; child: number; name: string }>;
}

/** Subset of QAPI BlockInfo (query-block). */
export interface QmpBlockInfo {
  device: string;
  qdev?: string;
  inserted?: { 'node-name'?: string; file: string };
}

/**
 * Turns the text virsh printed for `qemu-monitor-command` into the QMP `return` value, or throws
 * a QmpError carrying QEMU's error class and description.
 */
export function parseQmpReply<T>(domain: string, command: string, text: string): T {
  let reply: unknown;
  try {
    reply = JSON.parse(text);
  } catch (error) {
    throw new QmpError({
      domain,
      command,
      qmpClass: 'InvalidReply',
      desc: `reply is not JSON: ${text.trim().slice(0, 200)}`,
      cause: error,
    });
  }
  if (reply === null || typeof reply !== 'object') {
    throw new QmpError({
      domain,
      command,
      qmpClass: 'InvalidReply',
      desc: `unexpected reply: ${text.trim()}`,
    });
  }
  const r = reply as { return?: unknown; error?: { class?: unknown; desc?: unknown } };
  if (r.error !== undefined) {
    throw new QmpError({
      domain,
      command,
      qmpClass: typeof r.error.class === 'string' ? r.error.class : 'GenericError',
      desc: typeof r.error.desc === 'string' ? r.error.desc : JSON.stringify(r.error),
    });
  }
  if (!('return' in r)) {
    throw new QmpError({ domain, command, qmpClass: 'InvalidReply', desc: `no "return" in ${text.trim()}` });
  }
  return r.return as T;
}

/**
 * HMP has no error object: a failing command prints "Error: ..." as its output. Throws a QmpError
 * of class HmpError in that case, otherwise returns the output.
 */
export function checkHmpOutput(domain: string, commandLine: string, output: string): string {
  const match = /^\s*Error:\s*(.*)/.exec(output);
  if (match) {
    throw new QmpError({
      domain,
      command: `human-monitor-command ${commandLine}`,
      qmpClass: 'HmpError',
      desc: (match[1] ?? '').trim(),
    });
  }
  return output;
}

/** Whether a query-block entry belongs to the device with libvirt alias `alias` (e.g. virtio-disk0). */
export function blockInfoMatchesAlias(info: QmpBlockInfo, alias: string): boolean {
  if (info.device === alias || info.device === `drive-${alias}`) return true;
  const qdev = info.qdev ?? '';
  return (
    qdev === alias ||
    qdev === `/machine/peripheral/${alias}` ||
    qdev.startsWith(`/machine/peripheral/${alias}/`)
  );
}

/**
 * Walks the block graph from `topNodeName` down the `backing` edges and returns the chain
 * top first, each layer with its protocol (`file`) node and the details from query-named-block-nodes.
 */
export function chainFromGraph(
  domain: string,
  topNodeName: string,
  graph: QmpBlockGraph,
  nodes: readonly QmpBlockDeviceInfo[],
): BlockNode[] {
  const byName = new Map(nodes.map((n) => [n['node-name'], n]));
  const idByName = new Map(graph.nodes.map((n) => [n.name, n.id]));
  const nameById = new Map(graph.nodes.map((n) => [n.id, n.name]));
  const childOf = (id: number, edge: string): string | null => {
    const found = graph.edges.find((e) => e.parent === id && e.name === edge);
    return found === undefined ? null : (nameById.get(found.child) ?? null);
  };

  const chain: BlockNode[] = [];
  const seen = new Set<string>();
  let current: string | null = topNodeName;
  while (current !== null) {
    if (seen.has(current)) throw invalidGraph(domain, `the backing chain loops at node ${current}`);
    seen.add(current);
    const info = byName.get(current);
    const id = idByName.get(current);
    if (info === undefined || id === undefined) {
      throw invalidGraph(domain, `node ${current} is in the block graph but not in query-named-block-nodes`);
    }
    const fileNodeName = childOf(id, 'file');
    const fileInfo = fileNodeName === null ? undefined : byName.get(fileNodeName);
    // A format node opened with explicit options reports a json:{...} pseudo filename; the
    // protocol node under it has the real path.
    const filename = fileInfo?.file ?? info.file;
    const previous = chain[chain.length - 1];
    if (previous !== undefined) previous.backingFilename = filename;
    chain.push({
      nodeName: current,
      driver: info.drv,
      fileNodeName,
      fileDriver: fileInfo?.drv ?? null,
      filename,
      backingFilename: null,
      readOnly: info.ro,
      ...(info.cache === undefined
        ? {}
        : { cache: { direct: info.cache.direct, 'no-flush': info.cache['no-flush'] } }),
    });
    current = childOf(id, 'backing');
  }
  return chain;
}

function invalidGraph(domain: string, desc: string): QmpError {
  return new QmpError({ domain, command: 'x-debug-query-block-graph', qmpClass: 'InvalidReply', desc });
}

/**
 * blockdev-add options for a QCOW2 layer on a file or block device: a format node `nodeName`
 * over a protocol node `nodeName-file`. `backing: null` opens it without its header's backing chain
 * (used for new overlays that blockdev-snapshot will attach); a node name attaches that node.
 */
export function qcow2Blockdev(opts: {
  nodeName: string;
  filename: string;
  sourceType: 'file' | 'block';
  readOnly?: boolean;
  backing?: string | null;
  /** Same host cache mode as the layer it joins (a VM started with cache=none keeps O_DIRECT). */
  cache?: BlockCache;
}): BlockdevOptions {
  const readOnly = opts.readOnly ?? false;
  const cache = opts.cache === undefined ? {} : { cache: opts.cache };
  const options: BlockdevOptions = {
    driver: 'qcow2',
    'node-name': opts.nodeName,
    'read-only': readOnly,
    ...cache,
    file: {
      driver: opts.sourceType === 'block' ? 'host_device' : 'file',
      'node-name': `${opts.nodeName}-file`,
      filename: opts.filename,
      'read-only': readOnly,
      ...cache,
    },
  };
  if (opts.backing !== undefined) options.backing = opts.backing;
  return options;
}

/**
 * blockdev-reopen options that keep a format node as it is but attach `backing` (a node name).
 * Reopen resets every option not given to its default, so this names the driver, protocol child
 * and read-only flag the node already has.
 */
export function reopenWithBacking(node: BlockNode, backing: string | null): BlockdevOptions {
  if (node.fileNodeName === null) {
    throw new ValidationError(
      'NODE_HAS_NO_FILE_CHILD',
      `node ${node.nodeName} has no protocol (file) child`,
      {
        field: 'node',
      },
    );
  }
  return {
    driver: node.driver,
    'node-name': node.nodeName,
    'read-only': node.readOnly,
    ...(node.cache === undefined ? {} : { cache: node.cache }),
    file: node.fileNodeName,
    backing,
  };
}
