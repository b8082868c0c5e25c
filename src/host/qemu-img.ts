import { z } from 'zod';
import { QemuImgOutputError, ValidationError } from '../errors/index.js';
import type { Logger } from '../observability/logger.js';
import { type RunOptions, type RunResult, runTool } from './exec.js';
import { checkAbsolutePath } from './paths.js';
import { topLayerDataBytes } from './qcow2-header.js';
import { type ConvertProgress, progressFromPercent, QemuProgressParser } from './qemu-progress.js';

export type { ConvertProgress } from './qemu-progress.js';

/** Image formats the agent reads and writes. The format is always given: qemu-img never probes it. */
export type ImageFormat = 'qcow2' | 'raw';

/** A backing file as written into an image header, with its format. */
/** What `qemu-img create` makes: a QCOW2 image, standalone or an overlay. */
export interface CreateImageOptions {
  path: string;
  sizeBytes?: number;
  backing?: BackingRef;
  clusterSize?: number;
  /** Sub-cluster allocation (QEMU ≥ 5.2): less copy-on-write for small writes into big clusters. */
  extendedL2?: boolean;
  unsafe?: boolean;
  /** `preallocation=metadata` makes later writes cheaper on thick LVs. */
  preallocation?: 'off' | 'metadata';
}

export interface BackingRef {
  /** Absolute path, or a name relative to the image's own directory (store files). */
  file: string;
  format: ImageFormat;
}

/** What `qemu-img info --output=json` says about one image. */
export interface ImageInfo {
  /** The file name qemu-img opened (as passed, or as resolved from the backing string). */
  filename: string;
  format: string;
  virtualSize: number;
  /** Bytes the file occupies on its filesystem; null for some block devices. */
  actualSize: number | null;
  clusterSize: number | null;
  /** The backing string exactly as written in the header (may be relative). */
  backingFile: string | null;
  /** The backing file resolved against the image's directory. */
  fullBackingFile: string | null;
  backingFormat: string | null;
  /** Image was not closed cleanly (lazy refcounts). */
  dirty: boolean;
  /** QCOW2 corrupt bit: QEMU refuses to write it. */
  corrupt: boolean;
  extendedL2: boolean;
  compressionType: string | null;
}

/** The result of `qemu-img check`. Exit codes 2 (corruptions) and 3 (leaks) are results, not failures. */
export interface CheckResult {
  /** No corruptions and no leaks. */
  ok: boolean;
  corruptions: number;
  leaks: number;
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  imageEndOffset: number | null;
  totalClusters: number | null;
  allocatedClusters: number | null;
  fragmentedClusters: number | null;
  compressedClusters: number | null;
  exitCode: number;
}

/** One extent of `qemu-img map --output=json`. `depth` 0 is the top image, 1 its backing... */
export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset: number | null;
}

export interface CompareResult {
  identical: boolean;
  /** qemu-img's own words, e.g. "Images are identical." or "Content mismatch at offset 1048576!". */
  message: string;
  /** First differing byte offset when qemu-img names one. */
  mismatchOffset: number | null;
}

/** Throughput switches of `qemu-img convert`; see docs/benchmarks.md "qemu-img convert options". */
export interface ConvertTuning {
  /** `-W`: allow out-of-order writes to the target. */
  outOfOrder?: boolean;
  /** `-m N`: parallel coroutines (1-16, qemu-img default 8). */
  coroutines?: number;
  /** `-t`: target cache mode (e.g. `none` = O_DIRECT, `writeback`). */
  targetCache?: CacheMode;
  /** `-T`: source cache mode. */
  sourceCache?: CacheMode;
}

/**
 * Tuning for snapshot exports into a fresh `.part` file: out-of-order writes made delta exports
 * 1.2-1.4× faster and changed nothing for full exports (docs/benchmarks.md "qemu-img convert options").
 */
export const EXPORT_TUNING: Readonly<ConvertTuning> = Object.freeze({ outOfOrder: true });
/**
 * Exports under a bandwidth limit (-r): one request in flight. With the default 8 coroutines
 * qemu-img reads ~16 MiB ahead of the limiter, so its progress runs seconds ahead of the data
 * written (ETA wrong) and every resume after a turn (SIGCONT) bursts; a throttled copy gains
 * nothing from parallel requests anyway (measured: bench/bandwidth.ts).
 */
export const RATE_LIMITED_TUNING: Readonly<ConvertTuning> = Object.freeze({ coroutines: 1 });

export type CacheMode = 'none' | 'writeback' | 'writethrough' | 'directsync' | 'unsafe';

export interface ConvertOptions {
  source: string;
  target: string;
  sourceFormat?: ImageFormat;
  targetFormat?: ImageFormat;
  /** `-B file -F fmt`: keep this backing in the target and copy only the source's top layer (a delta). */
  backing?: BackingRef;
  /** `-U`: read an image another process (QEMU) holds. */
  forceShare?: boolean;
  /** `-c -o compression_type=...`: compressed clusters (QCOW2 target only). */
  compress?: 'zstd' | 'zlib' | false;
  /** Cluster size of the target (QCOW2). */
  clusterSize?: number;
  /** `-n`: the target exists already (e.g. a pre-created block device); qemu-img does not create it. */
  targetExists?: boolean;
  tuning?: ConvertTuning;
  /** Called with each new, higher percentage. Turns on `-p`. */
  progress?: (p: ConvertProgress) => void;
  /** Bytes the progress refers to; default: the data to copy, from `qemu-img map` of the source. */
  progressBytesTotal?: number;
  /**
   * `-r`: bytes per second of this process (QEMU 7.2: data it copies, zeros and unallocated ranges
   * are free; fixed for the whole run; the first request and slice go out at once).
   */
  rateLimit?: number;
  /** Called with the qemu-img pid once it runs. */
  onSpawn?: (pid: number) => void;
  signal?: AbortSignal;
}

export interface QemuImgOptions {
  logger?: Logger;
  /** Timeout of short calls (info, create, rebase -u, measure, check, map). */
  timeoutMs: number;
  /** Timeout of calls that copy data (convert, commit, safe rebase, compare). */
  exportTimeoutMs: number;
  /** Default `qemu-img` from PATH. */
  binary?: string;
  /** Defaults to src/host/exec.ts runTool; tests may wrap it to record calls. */
  run?: (file: string, args: readonly string[], options: RunOptions) => Promise<RunResult>;
}

const num = z.number();
const infoSchema = z.object({
  filename: z.string(),
  format: z.string(),
  'virtual-size': num,
  'actual-size': num.optional(),
  'cluster-size': num.optional(),
  'backing-filename': z.string().optional(),
  'full-backing-filename': z.string().optional(),
  'backing-filename-format': z.string().optional(),
  'dirty-flag': z.boolean().optional(),
  'format-specific': z
    .object({
      type: z.string(),
      data: z
        .object({
          corrupt: z.boolean().optional(),
          'extended-l2': z.boolean().optional(),
          'compression-type': z.string().optional(),
        })
        .optional(),
    })
    .optional(),
});

const checkSchema = z.object({
  'check-errors': num.optional(),
  corruptions: num.optional(),
  leaks: num.optional(),
  'corruptions-fixed': num.optional(),
  'leaks-fixed': num.optional(),
  'image-end-offset': num.optional(),
  'total-clusters': num.optional(),
  'allocated-clusters': num.optional(),
  'fragmented-clusters': num.optional(),
  'compressed-clusters': num.optional(),
});

const mapSchema = z.array(
  z.object({
    start: num,
    length: num,
    depth: num,
    present: z.boolean().optional(),
    zero: z.boolean(),
    data: z.boolean(),
    offset: num.optional(),
  }),
);

const measureSchema = z.object({ required: num, 'fully-allocated': num });

/** qemu-img interprets `proto:` prefixes; every name we pass is absolute or plain relative segments. */
function checkBackingString(file: string): string {
  if (file.startsWith('/')) return checkAbsolutePath(file, 'backing');
  const segments = file.split('/');
  const plain = /^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}$/;
  if (file.length === 0 || segments.some((s) => s !== '..' && !plain.test(s))) {
    throw new ValidationError(
      'INVALID_PATH',
      `backing ${JSON.stringify(file)} must be absolute or a relative path of plain names`,
      { field: 'backing' },
    );
  }
  return file;
}

function checkSize(bytes: number, field: string): number {
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new ValidationError('INVALID_SIZE', `${field} must be a positive integer number of bytes`, {
      field,
    });
  }
  return bytes;
}

function parseJson<T>(subcommand: string, schema: z.ZodType<T>, stdout: string): T {
  let raw: unknown;
  try {
    raw = JSON.parse(stdout);
  } catch (error) {
    throw new QemuImgOutputError(subcommand, 'output is not JSON', { output: stdout, cause: error });
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    throw new QemuImgOutputError(subcommand, `unexpected JSON: ${parsed.error.message}`, {
      output: stdout,
      cause: parsed.error,
    });
  }
  return parsed.data;
}

function toImageInfo(raw: z.infer<typeof infoSchema>): ImageInfo {
  const data = raw['format-specific']?.data;
  return {
    filename: raw.filename,
    format: raw.format,
    virtualSize: raw['virtual-size'],
    actualSize: raw['actual-size'] ?? null,
    clusterSize: raw['cluster-size'] ?? null,
    backingFile: raw['backing-filename'] ?? null,
    fullBackingFile: raw['full-backing-filename'] ?? null,
    backingFormat: raw['backing-filename-format'] ?? null,
    dirty: raw['dirty-flag'] ?? false,
    corrupt: data?.corrupt ?? false,
    extendedL2: data?.['extended-l2'] ?? false,
    compressionType: data?.['compression-type'] ?? null,
  };
}

/** Parses `qemu-img map --output=json`. */
export function parseMap(stdout: string): MapEntry[] {
  return parseJson('map', mapSchema, stdout).map((e) => ({
    start: e.start,
    length: e.length,
    depth: e.depth,
    // qemu < 6.2 has no "present": data or zero at a depth means allocated there.
    present: e.present ?? (e.data || e.zero),
    zero: e.zero,
    data: e.data,
    offset: e.offset ?? null,
  }));
}

/** Bytes holding data in a map: all layers, or only the top image (`depth` 0). */
export function dataBytes(entries: readonly MapEntry[], opts: { topOnly?: boolean } = {}): number {
  let total = 0;
  for (const e of entries) if (e.data && (!opts.topOnly || e.depth === 0)) total += e.length;
  return total;
}

/**
 * The qemu-img adapter: one method per subcommand, argument arrays only, a timeout on every call,
 * cancellation through AbortSignal. Paths must be absolute (confine them first: SnapshotStore,
 * FilePool); formats are always explicit. Failures are HostCommandError (classified by stderr).
 */
export class QemuImg {
  readonly binary: string;
  private readonly timeoutMs: number;
  private readonly exportTimeoutMs: number;
  private readonly logger: Logger | undefined;
  private readonly run: NonNullable<QemuImgOptions['run']>;

  constructor(opts: QemuImgOptions) {
    this.binary = opts.binary ?? 'qemu-img';
    this.timeoutMs = opts.timeoutMs;
    this.exportTimeoutMs = opts.exportTimeoutMs;
    this.logger = opts.logger;
    this.run = opts.run ?? runTool;
  }

  /** The qemu-img version, e.g. "7.2.22". */
  async version(): Promise<string> {
    const { stdout } = await this.tool(['--version']);
    const version = /qemu-img version (\d+\.\d+(?:\.\d+)?)/.exec(stdout)?.[1];
    if (version === undefined)
      throw new QemuImgOutputError('--version', 'no version number', { output: stdout });
    return version;
  }

  /** `qemu-img info` of one image. `forceShare` (-U) reads an image QEMU holds (metadata may be stale). */
  async info(path: string, opts: { forceShare?: boolean; format?: ImageFormat } = {}): Promise<ImageInfo> {
    const args = ['info', '--output=json', ...this.formatArg(opts.format), ...share(opts.forceShare)];
    const { stdout } = await this.tool([...args, checkAbsolutePath(path)]);
    return toImageInfo(parseJson('info', infoSchema, stdout));
  }

  /**
   * The whole backing chain (`--backing-chain`), top first. A member's `filename` is the path
   * qemu-img resolved it to (the previous member's fullBackingFile).
   */
  async chain(path: string, opts: { forceShare?: boolean; format?: ImageFormat } = {}): Promise<ImageInfo[]> {
    const args = ['info', '--output=json', '--backing-chain', ...this.formatArg(opts.format)];
    const { stdout } = await this.tool([...args, ...share(opts.forceShare), checkAbsolutePath(path)]);
    return parseJson('info', z.array(infoSchema).min(1), stdout).map(toImageInfo);
  }

  /**
   * Creates a QCOW2 image: standalone (`sizeBytes`) or an overlay on `backing` (size defaults to the
   * backing's). `unsafe` (-u) does not open the backing (it may not exist yet); it then needs a size.
   * Overwrites an existing file: callers check first.
   */
  async create(opts: CreateImageOptions): Promise<void> {
    const options: string[] = [];
    if (opts.clusterSize !== undefined)
      options.push(`cluster_size=${checkSize(opts.clusterSize, 'clusterSize')}`);
    if (opts.extendedL2 !== undefined) options.push(`extended_l2=${opts.extendedL2 ? 'on' : 'off'}`);
    if (opts.preallocation !== undefined) options.push(`preallocation=${opts.preallocation}`);
    const args = ['create', '-q', '-f', 'qcow2'];
    if (opts.backing) args.push('-b', checkBackingString(opts.backing.file), '-F', opts.backing.format);
    if (opts.unsafe) args.push('-u');
    if (options.length > 0) args.push('-o', options.join(','));
    args.push(checkAbsolutePath(opts.path));
    if (opts.sizeBytes !== undefined) args.push(String(checkSize(opts.sizeBytes, 'sizeBytes')));
    else if (!opts.backing)
      throw new ValidationError('INVALID_SIZE', 'create needs sizeBytes or a backing file');
    await this.tool(args);
  }

  /** `qemu-img resize -f qcow2 <path> <size>`: grows the image's virtual size. Not on images in use. */
  async resize(path: string, sizeBytes: number): Promise<void> {
    await this.tool([
      'resize',
      '-q',
      '-f',
      'qcow2',
      checkAbsolutePath(path),
      String(checkSize(sizeBytes, 'sizeBytes')),
    ]);
  }

  /**
   * `qemu-img convert`: exports `source` (its whole chain flattened, or with `backing` only its top
   * layer) into `target`. With `progress`, runs with `-p` and reports percent and bytes.
   */
  async convert(opts: ConvertOptions): Promise<void> {
    const args = ['convert', '-f', opts.sourceFormat ?? 'qcow2', '-O', opts.targetFormat ?? 'qcow2'];
    if (opts.forceShare) args.push('-U');
    if (opts.targetExists) args.push('-n');
    if (opts.backing) args.push('-B', checkBackingString(opts.backing.file), '-F', opts.backing.format);
    const options: string[] = [];
    if (opts.compress) {
      args.push('-c');
      options.push(`compression_type=${opts.compress}`);
    }
    if (opts.clusterSize !== undefined)
      options.push(`cluster_size=${checkSize(opts.clusterSize, 'clusterSize')}`);
    if (options.length > 0) args.push('-o', options.join(','));
    const tuning = opts.tuning ?? {};
    if (tuning.outOfOrder) args.push('-W');
    if (tuning.coroutines !== undefined) {
      if (!Number.isInteger(tuning.coroutines) || tuning.coroutines < 1 || tuning.coroutines > 16) {
        throw new ValidationError('INVALID_ARGUMENT', 'coroutines must be 1-16', { field: 'coroutines' });
      }
      args.push('-m', String(tuning.coroutines));
    }
    if (opts.rateLimit !== undefined) {
      if (!Number.isSafeInteger(opts.rateLimit) || opts.rateLimit < 1)
        throw new ValidationError(
          'INVALID_ARGUMENT',
          'rateLimit must be a positive whole number of bytes/s',
          {
            field: 'rateLimit',
          },
        );
      args.push('-r', String(opts.rateLimit));
    }
    if (tuning.targetCache) args.push('-t', tuning.targetCache);
    if (tuning.sourceCache) args.push('-T', tuning.sourceCache);
    const source = checkAbsolutePath(opts.source, 'source');
    const target = checkAbsolutePath(opts.target, 'target');

    let bytesTotal = 0;
    if (opts.progress) {
      bytesTotal =
        opts.progressBytesTotal ??
        (await this.allocatedBytes(source, {
          topOnly: opts.backing !== undefined,
          forceShare: opts.forceShare,
          format: opts.sourceFormat,
        }));
    }
    await this.withProgress([...args, source, target], bytesTotal, opts.progress, opts.signal, opts.onSpawn);
  }

  /**
   * Changes the backing file of `image`. `unsafe` (-u) rewrites only the header (the data must be
   * identical); safe mode copies the differences so the guest view stays the same. `backing: null`
   * makes the image standalone (safe mode copies everything it needs first).
   * Never on an image a running QEMU holds: use QMP change-backing-file there.
   */
  async rebase(opts: {
    image: string;
    backing: BackingRef | null;
    unsafe: boolean;
    forceShare?: boolean;
    progress?: (p: ConvertProgress) => void;
    signal?: AbortSignal;
  }): Promise<void> {
    const args = ['rebase', '-f', 'qcow2'];
    if (opts.unsafe) args.push('-u');
    if (opts.forceShare) args.push('-U');
    if (opts.backing) args.push('-b', checkBackingString(opts.backing.file), '-F', opts.backing.format);
    else args.push('-b', '');
    const image = checkAbsolutePath(opts.image, 'image');
    if (opts.unsafe) {
      await this.tool([...args, image], { signal: opts.signal });
      return;
    }
    const total = opts.progress ? (await this.info(image, { forceShare: opts.forceShare })).virtualSize : 0;
    await this.withProgress([...args, image], total, opts.progress, opts.signal);
  }

  /**
   * `qemu-img measure -O qcow2`: bytes a QCOW2 copy needs (`required`, the whole chain flattened)
   * and when fully allocated; from an image, or for a new image of `sizeBytes`. For a delta, use
   * allocatedBytes(top, { topOnly: true }) plus metadata.
   */
  async measure(opts: {
    source?: string;
    sourceFormat?: ImageFormat;
    sizeBytes?: number;
    clusterSize?: number;
  }): Promise<{ requiredBytes: number; fullyAllocatedBytes: number }> {
    const args = ['measure', '--output=json', '-O', 'qcow2'];
    if (opts.clusterSize !== undefined)
      args.push('-o', `cluster_size=${checkSize(opts.clusterSize, 'clusterSize')}`);
    if (opts.source !== undefined) {
      args.push('-f', opts.sourceFormat ?? 'qcow2', checkAbsolutePath(opts.source, 'source'));
    } else if (opts.sizeBytes !== undefined) {
      args.push('--size', String(checkSize(opts.sizeBytes, 'sizeBytes')));
    } else {
      throw new ValidationError('INVALID_ARGUMENT', 'measure needs a source or sizeBytes');
    }
    const { stdout } = await this.tool(args);
    const m = parseJson('measure', measureSchema, stdout);
    return { requiredBytes: m.required, fullyAllocatedBytes: m['fully-allocated'] };
  }

  /**
   * `qemu-img check --output=json`. Corruptions (exit 2) and leaks (exit 3) come back in the result;
   * a check that could not complete (exit 1) throws. `repair` only on images nobody holds.
   */
  async check(
    path: string,
    opts: { forceShare?: boolean; repair?: 'leaks' | 'all'; format?: ImageFormat; signal?: AbortSignal } = {},
  ): Promise<CheckResult> {
    const args = ['check', '--output=json', ...this.formatArg(opts.format), ...share(opts.forceShare)];
    if (opts.repair) args.push('-r', opts.repair);
    const { stdout, exitCode } = await this.tool([...args, checkAbsolutePath(path)], {
      okExitCodes: [0, 2, 3],
      signal: opts.signal,
    });
    const c = parseJson('check', checkSchema, stdout);
    const corruptions = c.corruptions ?? 0;
    const leaks = c.leaks ?? 0;
    return {
      ok: corruptions === 0 && leaks === 0 && (c['check-errors'] ?? 0) === 0,
      corruptions,
      leaks,
      checkErrors: c['check-errors'] ?? 0,
      corruptionsFixed: c['corruptions-fixed'] ?? 0,
      leaksFixed: c['leaks-fixed'] ?? 0,
      imageEndOffset: c['image-end-offset'] ?? null,
      totalClusters: c['total-clusters'] ?? null,
      allocatedClusters: c['allocated-clusters'] ?? null,
      fragmentedClusters: c['fragmented-clusters'] ?? null,
      compressedClusters: c['compressed-clusters'] ?? null,
      exitCode,
    };
  }

  /**
   * `qemu-img compare`: the guest-visible content of two images (whole chains). Exit 1 means
   * "differ" and is a result; exit 2 (an error) throws. `strict` (-s) also fails on size or
   * allocation differences.
   */
  async compare(
    a: string,
    b: string,
    opts: {
      forceShare?: boolean;
      strict?: boolean;
      formatA?: ImageFormat;
      formatB?: ImageFormat;
      signal?: AbortSignal;
    } = {},
  ): Promise<CompareResult> {
    const args = ['compare', '-f', opts.formatA ?? 'qcow2', '-F', opts.formatB ?? 'qcow2'];
    if (opts.forceShare) args.push('-U');
    if (opts.strict) args.push('-s');
    args.push(checkAbsolutePath(a, 'a'), checkAbsolutePath(b, 'b'));
    const { stdout, exitCode } = await this.tool(args, {
      okExitCodes: [0, 1],
      signal: opts.signal,
      timeoutMs: this.exportTimeoutMs,
    });
    const message = stdout.trim();
    const offset = /offset (\d+)/i.exec(message)?.[1];
    return {
      identical: exitCode === 0,
      message,
      mismatchOffset: offset === undefined ? null : Number(offset),
    };
  }

  /**
   * `qemu-img commit`: writes `image`'s data into its backing file (or into `base`, further down
   * the chain). `drop` (-d) leaves `image` unchanged instead of emptying it. Not on images in use.
   */
  async commit(opts: {
    image: string;
    base?: string;
    drop?: boolean;
    progress?: (p: ConvertProgress) => void;
    signal?: AbortSignal;
  }): Promise<void> {
    const args = ['commit', '-f', 'qcow2'];
    if (opts.base !== undefined) args.push('-b', checkAbsolutePath(opts.base, 'base'));
    if (opts.drop) args.push('-d');
    const image = checkAbsolutePath(opts.image, 'image');
    const total = opts.progress ? await this.allocatedBytes(image, { topOnly: opts.base === undefined }) : 0;
    await this.withProgress([...args, image], total, opts.progress, opts.signal);
  }

  /** `qemu-img map --output=json`: allocation of every extent and the layer (depth) holding it. */
  async map(path: string, opts: { forceShare?: boolean; format?: ImageFormat } = {}): Promise<MapEntry[]> {
    const args = ['map', '--output=json', ...this.formatArg(opts.format), ...share(opts.forceShare)];
    const { stdout } = await this.tool([...args, checkAbsolutePath(path)]);
    return parseMap(stdout);
  }

  /** Bytes holding data in the image's chain, or in its top layer only (= what `convert -B` copies). */
  async allocatedBytes(
    path: string,
    opts: { topOnly?: boolean; forceShare?: boolean; format?: ImageFormat } = {},
  ): Promise<number> {
    // The top layer of a QCOW2 image: its L2 tables read in-process (a qemu-img process per
    // planning step was a tenth of a small snapshot's time); qemu-img map for everything else.
    if (opts.topOnly && (opts.format ?? 'qcow2') === 'qcow2') {
      const own = await topLayerDataBytes(checkAbsolutePath(path));
      if (own !== null) return own;
    }
    return dataBytes(await this.map(path, opts), opts);
  }

  private formatArg(format: ImageFormat | undefined): string[] {
    return ['-f', format ?? 'qcow2'];
  }

  /** Runs a data-copying subcommand, with `-p` parsed into progress when asked. */
  private async withProgress(
    args: string[],
    bytesTotal: number,
    progress: ((p: ConvertProgress) => void) | undefined,
    signal: AbortSignal | undefined,
    onSpawn?: (pid: number) => void,
  ): Promise<void> {
    if (!progress) {
      await this.tool(args, { signal, timeoutMs: this.exportTimeoutMs, onSpawn });
      return;
    }
    const parser = new QemuProgressParser((percent) => progress(progressFromPercent(percent, bytesTotal)));
    // -p goes right after the subcommand.
    const withP = [args[0] ?? '', '-p', ...args.slice(1)];
    await this.tool(withP, {
      signal,
      onSpawn,
      timeoutMs: this.exportTimeoutMs,
      onStdout: (chunk) => parser.push(chunk),
    });
    parser.end();
    if (parser.lastPercent < 100) progress(progressFromPercent(100, bytesTotal));
  }

  private tool(args: string[], extra: Partial<RunOptions> = {}): Promise<RunResult> {
    return this.run(this.binary, args, { timeoutMs: this.timeoutMs, logger: this.logger, ...extra });
  }
}

function share(forceShare: boolean | undefined): string[] {
  return forceShare ? ['-U'] : [];
}
