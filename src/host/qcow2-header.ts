// The few facts of a QCOW2 header the engine asks for on every step (virtual size, backing name
// and format), read in-process: a `qemu-img info` process costs ~10 ms to learn 100 bytes.
// Layout: QEMU's docs/interop/qcow2.txt (big-endian header, then extensions up to type 0).
import { open, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ChainInvalidError } from '../errors/index.js';

const MAGIC = 0x514649fb; // "QFI\xfb"
const EXT_END = 0;
const EXT_BACKING_FORMAT = 0xe2792aca;
/** QEMU's limit for a backing file name (BlockDriverState.backing_file is 1024 bytes). */
const MAX_BACKING_NAME = 1023;
const HEAD_BYTES = 4096;

export interface Qcow2Header {
  version: 2 | 3;
  virtualSize: number;
  clusterSize: number;
  /** The backing string exactly as written (may be relative); null: no backing. */
  backingFile: string | null;
  /** The backing format extension; null when the header has none. */
  backingFormat: string | null;
  dirty: boolean;
  corrupt: boolean;
}

/**
 * Reads the QCOW2 header of `path`; null when the file is not QCOW2 (no magic), so the caller can
 * fall back to qemu-img. Throws on an unreadable file or a header that contradicts itself.
 */
export async function readQcow2Header(path: string): Promise<Qcow2Header | null> {
  const file = await open(path, 'r');
  try {
    const head = Buffer.alloc(HEAD_BYTES);
    const { bytesRead } = await file.read(head, 0, HEAD_BYTES, 0);
    if (bytesRead < 72 || head.readUInt32BE(0) !== MAGIC) return null;
    const version = head.readUInt32BE(4);
    if (version !== 2 && version !== 3) throw badHeader(path, `version ${version}`);
    const backingOffset = Number(head.readBigUInt64BE(8));
    const backingSize = head.readUInt32BE(16);
    const clusterBits = head.readUInt32BE(20);
    if (clusterBits < 9 || clusterBits > 21) throw badHeader(path, `cluster_bits ${clusterBits}`);
    const incompatible = version === 3 ? head.readBigUInt64BE(72) : 0n;
    const headerLength = version === 3 ? head.readUInt32BE(100) : 72;
    const at = async (offset: number, length: number): Promise<Buffer> => {
      if (offset + length <= bytesRead) return head.subarray(offset, offset + length);
      const buf = Buffer.alloc(length);
      const r = await file.read(buf, 0, length, offset);
      if (r.bytesRead < length) throw badHeader(path, `truncated at ${offset}`);
      return buf;
    };
    let backingFormat: string | null = null;
    // Extensions sit between the header and the end of the first cluster.
    const clusterEnd = 2 ** clusterBits;
    for (let offset = headerLength; offset + 8 <= clusterEnd; ) {
      const ext = await at(offset, 8);
      const type = ext.readUInt32BE(0);
      const length = ext.readUInt32BE(4);
      if (type === EXT_END) break;
      if (offset + 8 + length > clusterEnd)
        throw badHeader(path, `extension 0x${type.toString(16)} overruns`);
      if (type === EXT_BACKING_FORMAT) backingFormat = (await at(offset + 8, length)).toString('utf8');
      offset += 8 + Math.ceil(length / 8) * 8;
    }
    let backingFile: string | null = null;
    if (backingOffset !== 0 && backingSize > 0) {
      if (backingSize > MAX_BACKING_NAME) throw badHeader(path, `backing name of ${backingSize} bytes`);
      backingFile = (await at(backingOffset, backingSize)).toString('utf8');
    }
    return {
      version,
      virtualSize: Number(head.readBigUInt64BE(24)),
      clusterSize: 2 ** clusterBits,
      backingFile,
      backingFormat,
      dirty: (incompatible & 1n) !== 0n,
      corrupt: (incompatible & 2n) !== 0n,
    };
  } finally {
    await file.close();
  }
}

/**
 * The backing path QEMU opens for `imagePath`'s backing string (its bdrv_get_full_backing_filename):
 * an absolute name as written, a relative one appended to the image's directory — not normalized,
 * exactly as `qemu-img info` reports full-backing-filename. Null for a name with a protocol prefix
 * (`nbd:...`, `json:{...}`), which only QEMU can resolve.
 */
export function resolveBackingPath(imagePath: string, backingFile: string): string | null {
  const cut = backingFile.search(/[:/]/);
  if (cut >= 0 && backingFile[cut] === ':') return null;
  if (backingFile.startsWith('/')) return backingFile;
  return `${dirname(imagePath)}/${backingFile}`;
}

/** Bits of an L1/L2 entry that hold a host offset (bits 9-55). */
const OFFSET_MASK = 0x00fffffffffffe00n;
const L2_COMPRESSED = 1n << 62n;
const L2_ZERO = 1n;
/** Incompatible feature bits after which the plain L2 walk below does not apply. */
const EXTERNAL_DATA_FILE = 4n;
const EXTENDED_L2 = 16n;

/**
 * Bytes of guest data the image's own layer holds (what `qemu-img map` reports as data at depth 0):
 * its L1/L2 tables walked in-process, clusters reading as zeros not counted. Null when only
 * qemu-img can tell: not QCOW2, encrypted, an external data file or extended L2 entries.
 */
export async function topLayerDataBytes(path: string): Promise<number | null> {
  const file = await open(path, 'r');
  try {
    const head = Buffer.alloc(112);
    const { bytesRead } = await file.read(head, 0, head.length, 0);
    if (bytesRead < 72 || head.readUInt32BE(0) !== MAGIC) return null;
    const version = head.readUInt32BE(4);
    if (version !== 2 && version !== 3) return null;
    const clusterBits = head.readUInt32BE(20);
    if (clusterBits < 9 || clusterBits > 21) throw badHeader(path, `cluster_bits ${clusterBits}`);
    const incompatible = version === 3 ? head.readBigUInt64BE(72) : 0n;
    if (head.readUInt32BE(32) !== 0 || (incompatible & (EXTERNAL_DATA_FILE | EXTENDED_L2)) !== 0n)
      return null;
    const virtualSize = Number(head.readBigUInt64BE(24));
    const l1Size = head.readUInt32BE(36);
    const l1Offset = Number(head.readBigUInt64BE(40));
    const clusterSize = 2 ** clusterBits;
    const l2Entries = clusterSize / 8;
    const read = async (offset: number, length: number): Promise<Buffer> => {
      const buf = Buffer.alloc(length);
      const r = await file.read(buf, 0, length, offset);
      if (r.bytesRead < length) throw badHeader(path, `table at ${offset} beyond the end of the file`);
      return buf;
    };
    const l1 = await read(l1Offset, l1Size * 8);
    let total = 0;
    for (let i = 0; i < l1Size; i++) {
      const l2Offset = Number(l1.readBigUInt64BE(i * 8) & OFFSET_MASK);
      if (l2Offset === 0) continue;
      const l2 = await read(l2Offset, clusterSize);
      for (let j = 0; j < l2Entries; j++) {
        const guest = (i * l2Entries + j) * clusterSize;
        if (guest >= virtualSize) break;
        const entry = l2.readBigUInt64BE(j * 8);
        const data =
          (entry & L2_COMPRESSED) !== 0n || ((entry & OFFSET_MASK) !== 0n && (entry & L2_ZERO) === 0n);
        if (data) total += Math.min(clusterSize, virtualSize - guest);
      }
    }
    return total;
  } finally {
    await file.close();
  }
}

/** One member of a chain read from the headers (the fields of `qemu-img info --backing-chain`). */
export interface HeaderChainMember {
  filename: string;
  format: 'qcow2';
  virtualSize: number;
  /** Bytes the file occupies; null for a block device. */
  actualSize: number | null;
  backingFile: string | null;
  fullBackingFile: string | null;
  backingFormat: string | null;
}

/** QEMU refuses chains deeper than this anyway; a longer walk is a loop or a broken chain. */
const MAX_CHAIN = 1000;

/**
 * The backing chain of `topPath`, top first, from the QCOW2 headers alone. Null whenever only
 * qemu-img can answer as qemu-img would: a layer that is not QCOW2 (a raw base, or a format the
 * header names otherwise), a backing name with a protocol, a missing file (qemu-img's error says
 * which), a loop. The caller then asks qemu-img.
 */
export async function chainFromHeaders(topPath: string): Promise<HeaderChainMember[] | null> {
  const chain: HeaderChainMember[] = [];
  const seen = new Set<string>();
  let path: string | null = topPath;
  let expectedFormat: string | null = null;
  while (path !== null) {
    if (seen.has(path) || chain.length >= MAX_CHAIN) return null;
    seen.add(path);
    if (expectedFormat !== null && expectedFormat !== 'qcow2') return null;
    let header: Qcow2Header | null;
    let st: Awaited<ReturnType<typeof stat>>;
    try {
      [header, st] = await Promise.all([readQcow2Header(path), stat(path)]);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw error;
    }
    if (header === null) return null;
    const fullBackingFile: string | null =
      header.backingFile === null ? null : resolveBackingPath(path, header.backingFile);
    if (header.backingFile !== null && fullBackingFile === null) return null;
    chain.push({
      filename: path,
      format: 'qcow2',
      virtualSize: header.virtualSize,
      actualSize: st.isBlockDevice() ? null : st.blocks * 512,
      backingFile: header.backingFile,
      fullBackingFile,
      backingFormat: header.backingFormat,
    });
    path = fullBackingFile;
    expectedFormat = header.backingFormat;
  }
  return chain;
}

function badHeader(path: string, why: string): ChainInvalidError {
  return new ChainInvalidError('unreadable QCOW2 header', [`${path}: ${why}`]);
}
