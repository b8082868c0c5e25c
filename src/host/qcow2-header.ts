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
