import { join } from 'node:path';
import { z } from 'zod';
import {
  HostCommandError,
  LvmReportError,
  LvmVolumeInUseError,
  LvmVolumeNotFoundError,
  ValidationError,
} from '../errors/index.js';
import type { Logger } from '../observability/logger.js';
import { lvmNameProblem } from '../protocol/names.js';
import { type RunOptions, type RunResult, runTool } from './exec.js';
import { type FlushHandle, openFlushHandle } from './rooted-files.js';

/** One logical volume as `lvs` reports it. */
export interface LogicalVolume {
  vg: string;
  name: string;
  /** `/dev/<vg>/<name>` (exists only while the LV is active on this host). */
  path: string;
  sizeBytes: number;
  /** The 10-character `lv_attr` string, e.g. `-wi-ao----`. */
  attr: string;
  /** attr[4] == 'a': active on this host. */
  activeHere: boolean;
  /** attr[5] == 'o': some process (QEMU, qemu-nbd...) holds the device open. */
  open: boolean;
  /** The origin LV's name when this LV is a copy-on-write snapshot. */
  origin: string | null;
  tags: string[];
  /** How full a copy-on-write snapshot's exception store is (0-100); null for other LVs. */
  snapshotPercent: number | null;
  /** attr[0] == 'S' or attr[4] == 'I': the snapshot overflowed and can no longer be read. */
  snapshotInvalid: boolean;
  /** `linear`, `striped`, `snapshot`, `thin`... */
  segType: string;
}

/** One volume group as `vgs` reports it. */
export interface VolumeGroup {
  name: string;
  sizeBytes: number;
  freeBytes: number;
  extentSizeBytes: number;
  tags: string[];
  /** attr[5] is 's' (lvmlockd shared VG) or 'c' (clvmd clustered VG). */
  shared: boolean;
}

/** How to activate an LV: `-aey`, `-asy`, `-aly` or `-an`. */
export type ActivationMode = 'exclusive' | 'shared' | 'local' | 'off';

/** The process runner; tests may inject one that records argv (LVM needs device-mapper). */
export type ToolRunner = (file: string, args: readonly string[], options: RunOptions) => Promise<RunResult>;

export interface LvmOptions {
  /** Timeout of every single lvm2 call. */
  timeoutMs: number;
  logger?: Logger;
  /** Directory of the lvm2 binaries (`/sbin`); default: found on PATH. */
  binaryDir?: string;
  /** Defaults to src/host/exec.ts runTool. */
  run?: ToolRunner;
  /** Flushes a block device's write cache (fsync of the device); tests without devices inject one. */
  flushDevice?: (path: string) => Promise<void>;
}

const LV_FIELDS = 'lv_name,vg_name,lv_size,lv_attr,origin,lv_tags,data_percent,segtype';
const VG_FIELDS = 'vg_name,vg_size,vg_free,vg_extent_size,vg_tags,vg_attr';
// Units in bytes without a suffix: every size is a plain integer string.
const REPORT_ARGS = ['--reportformat', 'json', '--units', 'b', '--nosuffix'];
// lvm2 warns on stderr about every inherited file descriptor; that is noise here.
const LVM_ENV = { LVM_SUPPRESS_FD_WARNINGS: '1' };

const lvRow = z.object({
  lv_name: z.string(),
  vg_name: z.string(),
  lv_size: z.string(),
  lv_attr: z.string(),
  origin: z.string(),
  lv_tags: z.string(),
  data_percent: z.string(),
  segtype: z.string(),
});
const pvRow = z.object({ pv_name: z.string() });
const vgRow = z.object({
  vg_name: z.string(),
  vg_size: z.string(),
  vg_free: z.string(),
  vg_extent_size: z.string(),
  vg_tags: z.string(),
  vg_attr: z.string(),
});
const lvReport = z.object({ report: z.array(z.object({ lv: z.array(lvRow) })).min(1) });
const vgReport = z.object({ report: z.array(z.object({ vg: z.array(vgRow) })).min(1) });
const pvReport = z.object({ report: z.array(z.object({ pv: z.array(pvRow) })).min(1) });

// lvm(8) tags: A-Z a-z 0-9 _ + . - / = ! : # &, at most 1024 characters.
const TAG_PATTERN = /^[A-Za-z0-9_+.\-/=!:#&]{1,1024}$/;

/**
 * The lvm2 adapter: reports (`lvs`, `vgs` as JSON in bytes) and the LV operations the snapshot
 * strategies need. Every name is checked against LVM's naming rules before any tool runs, and
 * every call has a timeout.
 */
export class Lvm {
  private readonly timeoutMs: number;
  private readonly logger: Logger | undefined;
  private readonly binaryDir: string | undefined;
  private readonly run: ToolRunner;
  private readonly flushDevice: (path: string) => Promise<void>;

  constructor(opts: LvmOptions) {
    this.timeoutMs = opts.timeoutMs;
    this.logger = opts.logger;
    this.binaryDir = opts.binaryDir;
    this.run = opts.run ?? runTool;
    this.flushDevice = opts.flushDevice ?? flushBlockDevice;
  }

  /** The lvm2 version, e.g. "2.03.16" (works without device-mapper). */
  async version(): Promise<string> {
    const { stdout } = await this.tool('lvm', ['version']);
    const match = /LVM version:\s*([0-9][0-9.]*)/.exec(stdout);
    if (!match?.[1]) {
      throw new HostCommandError('failed', 'lvm version printed no "LVM version:" line', {
        command: this.binary('lvm'),
        args: ['version'],
        stderr: stdout,
      });
    }
    return match[1];
  }

  /** The LVs of `vg` (or just `vg/lv`; an unknown LV yields an empty list). Hidden LVs are not listed. */
  async listVolumes(vg: string, lv?: string): Promise<LogicalVolume[]> {
    checkName('vg', vg);
    if (lv !== undefined) checkName('lv', lv);
    const args = ['-o', LV_FIELDS, ...REPORT_ARGS];
    // A selection rather than `vg/lv`: an unknown LV is then an empty report, while an unknown VG still fails.
    if (lv !== undefined) args.push('--select', `lv_name="${lv}"`);
    args.push(vg);
    const { stdout } = await this.tool('lvs', args);
    return parseLvsReport(stdout);
  }

  /** One LV, or undefined when the VG has no LV of that name. */
  async getVolume(vg: string, lv: string): Promise<LogicalVolume | undefined> {
    const found = await this.listVolumes(vg, lv);
    return found.find((v) => v.name === lv);
  }

  /** Size, free space and extent size of a volume group. */
  async volumeGroup(vg: string): Promise<VolumeGroup> {
    checkName('vg', vg);
    const { stdout } = await this.tool('vgs', ['-o', VG_FIELDS, ...REPORT_ARGS, vg]);
    const [group] = parseVgsReport(stdout);
    if (!group) {
      throw new HostCommandError('not-found', `vgs reported no volume group ${vg}`, {
        command: this.binary('vgs'),
        args: [vg],
      });
    }
    return group;
  }

  /** `bytes` rounded up to a whole number of extents (LVs are allocated in extents). */
  roundToExtents(bytes: number, extentSizeBytes: number): number {
    checkSize('sizeBytes', bytes);
    checkSize('extentSizeBytes', extentSizeBytes);
    return Math.ceil(bytes / extentSizeBytes) * extentSizeBytes;
  }

  /** Creates a linear LV of at least `sizeBytes` (rounded up to the VG's extent size) and returns it. */
  async createVolume(spec: {
    vg: string;
    name: string;
    sizeBytes: number;
    tags?: string[];
  }): Promise<LogicalVolume> {
    checkName('vg', spec.vg);
    checkName('name', spec.name);
    checkSize('sizeBytes', spec.sizeBytes);
    const tags = spec.tags ?? [];
    for (const tag of tags) checkTag(tag);
    const { extentSizeBytes } = await this.volumeGroup(spec.vg);
    const size = this.roundToExtents(spec.sizeBytes, extentSizeBytes);
    const tagArgs = tags.flatMap((t) => ['--addtag', t]);
    // --yes answers lvm's "wipe signature?" prompt; zeroing the start keeps an old QCOW2 header from reappearing.
    await this.tool('lvcreate', [
      '--yes',
      '--zero',
      'y',
      '--size',
      `${size}b`,
      '--name',
      spec.name,
      ...tagArgs,
      spec.vg,
    ]);
    await this.commitDurably(spec.vg);
    return this.mustGet(spec.vg, spec.name);
  }

  /**
   * Creates a copy-on-write snapshot `name` of `vg/origin` with an exception store of `sizeBytes`
   * (rounded up to extents). Watch `snapshotPercent` of the result: at 100 the snapshot becomes invalid.
   */
  async createSnapshot(spec: {
    vg: string;
    origin: string;
    name: string;
    sizeBytes: number;
  }): Promise<LogicalVolume> {
    checkName('vg', spec.vg);
    checkName('origin', spec.origin);
    checkName('name', spec.name);
    checkSize('sizeBytes', spec.sizeBytes);
    const { extentSizeBytes } = await this.volumeGroup(spec.vg);
    await this.snapshotVolume({ ...spec, sizeBytes: this.roundToExtents(spec.sizeBytes, extentSizeBytes) });
    await this.commitDurably(spec.vg);
    return this.mustGet(spec.vg, spec.name);
  }

  /**
   * createSnapshot's lvcreate alone (no vgs before, no lvs after, no flush of the PVs), for inside
   * a VM's pause: the caller gives the exception store's size in whole extents.
   */
  async snapshotVolume(spec: { vg: string; origin: string; name: string; sizeBytes: number }): Promise<void> {
    checkName('vg', spec.vg);
    checkName('origin', spec.origin);
    checkName('name', spec.name);
    checkSize('sizeBytes', spec.sizeBytes);
    await this.tool('lvcreate', [
      '--yes',
      '--snapshot',
      '--size',
      `${spec.sizeBytes}b`,
      '--name',
      spec.name,
      `${spec.vg}/${spec.origin}`,
    ]);
  }

  /**
   * Removes an LV. Refuses with LvmVolumeInUseError when it is open (checked first, and lvremove's own
   * "in use" refusal maps to the same error); LvmVolumeNotFoundError when it does not exist.
   */
  async removeVolume(vg: string, name: string): Promise<void> {
    const volume = await this.getVolume(vg, name);
    if (!volume) throw new LvmVolumeNotFoundError(vg, name);
    if (volume.open) throw new LvmVolumeInUseError(vg, name);
    try {
      await this.tool('lvremove', ['--yes', `${vg}/${name}`]);
    } catch (error) {
      if (error instanceof HostCommandError && error.kind === 'busy') {
        throw new LvmVolumeInUseError(vg, name, { cause: error });
      }
      throw error;
    }
    await this.commitDurably(vg);
  }

  /** Renames an LV inside its VG; an open LV can be renamed (its holders keep the device). */
  async renameVolume(vg: string, from: string, to: string): Promise<void> {
    checkName('vg', vg);
    checkName('from', from);
    checkName('to', to);
    await this.tool('lvrename', [vg, from, to]);
    await this.commitDurably(vg);
  }

  /**
   * A descriptor of active LV `name`'s device to fsync later (openFlushHandle): reports the errors
   * of writes (QEMU's, through the page cache) that fail from now on.
   */
  async flushHandle(vg: string, name: string): Promise<FlushHandle> {
    checkName('vg', vg);
    checkName('name', name);
    return openFlushHandle(`/dev/${vg}/${name}`);
  }

  /** Adds and removes tags of an LV in one `lvchange` (one metadata commit: both or neither). */
  async changeTags(vg: string, name: string, tags: { add: string[]; remove: string[] }): Promise<void> {
    checkName('vg', vg);
    checkName('name', name);
    for (const tag of [...tags.add, ...tags.remove]) checkTag(tag);
    if (tags.add.length === 0 && tags.remove.length === 0) return;
    await this.tool('lvchange', [
      ...tags.remove.flatMap((t) => ['--deltag', t]),
      ...tags.add.flatMap((t) => ['--addtag', t]),
      `${vg}/${name}`,
    ]);
    await this.commitDurably(vg);
  }

  /**
   * Grows an LV to at least `sizeBytes` (rounded up to extents); an LV already that large is left
   * as it is. Works on an open LV (the holder sees the new size of the device). Never shrinks.
   */
  async extendVolume(vg: string, name: string, sizeBytes: number): Promise<LogicalVolume> {
    checkName('vg', vg);
    checkName('name', name);
    checkSize('sizeBytes', sizeBytes);
    const volume = await this.mustGet(vg, name);
    const { extentSizeBytes } = await this.volumeGroup(vg);
    const size = this.roundToExtents(sizeBytes, extentSizeBytes);
    if (volume.sizeBytes >= size) return volume;
    await this.tool('lvextend', ['--size', `${size}b`, `${vg}/${name}`]);
    await this.commitDurably(vg);
    return this.mustGet(vg, name);
  }

  /** Activates (exclusive/shared/local) or deactivates an LV on this host. */
  async activate(vg: string, name: string, mode: ActivationMode): Promise<void> {
    checkName('vg', vg);
    checkName('name', name);
    const flag = { exclusive: '-aey', shared: '-asy', local: '-aly', off: '-an' }[mode];
    if (!flag)
      throw new ValidationError('INVALID_ACTIVATION_MODE', `unknown activation mode ${String(mode)}`);
    await this.tool('lvchange', [flag, `${vg}/${name}`]);
  }

  /**
   * Makes `vg`'s last metadata commit durable before the change is reported done. lvm2 writes its
   * metadata with O_DIRECT and never asks the disks to flush their write caches, so a power cut
   * could undo an lvrename or lvremove that had returned (P5 in docs/reliability.md); an fsync of a
   * PV's block device is that flush. The PVs are read each time: a PV list kept from before would
   * flush the old device after a PV moves or is seen under another name. A failed flush is thrown,
   * never retried: a new descriptor would not see the error.
   */
  private async commitDurably(vg: string): Promise<void> {
    const { stdout } = await this.tool('pvs', [
      '-o',
      'pv_name',
      ...REPORT_ARGS,
      '--select',
      `vg_name="${vg}"`,
    ]);
    const devices = parseReport(stdout, pvReport, 'pvs').report.flatMap((r) =>
      r.pv.map((row) => row.pv_name),
    );
    if (devices.length === 0)
      throw new LvmReportError(`pvs reported no physical volume of ${vg}`, { output: stdout });
    for (const device of devices) await this.flushDevice(device);
  }

  private async mustGet(vg: string, name: string): Promise<LogicalVolume> {
    const volume = await this.getVolume(vg, name);
    if (!volume) throw new LvmVolumeNotFoundError(vg, name);
    return volume;
  }

  private binary(tool: string): string {
    return this.binaryDir ? join(this.binaryDir, tool) : tool;
  }

  private tool(tool: string, args: string[]): Promise<RunResult> {
    return this.run(this.binary(tool), args, {
      timeoutMs: this.timeoutMs,
      logger: this.logger,
      env: LVM_ENV,
    });
  }
}

/** fsync of a block device: the kernel sends the device a cache flush. */
async function flushBlockDevice(path: string): Promise<void> {
  const handle = await openFlushHandle(path);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Parses `lvs --reportformat json --units b --nosuffix -o <LV_FIELDS>` output. */
export function parseLvsReport(stdout: string): LogicalVolume[] {
  const report = parseReport(stdout, lvReport, 'lvs');
  return report.report.flatMap((r) => r.lv).map(toLogicalVolume);
}

/** Parses `vgs --reportformat json --units b --nosuffix -o <VG_FIELDS>` output. */
export function parseVgsReport(stdout: string): VolumeGroup[] {
  const report = parseReport(stdout, vgReport, 'vgs');
  return report.report
    .flatMap((r) => r.vg)
    .map((row) => ({
      name: row.vg_name,
      sizeBytes: toBytes(row.vg_size),
      freeBytes: toBytes(row.vg_free),
      extentSizeBytes: toBytes(row.vg_extent_size),
      tags: splitTags(row.vg_tags),
      shared: row.vg_attr[5] === 's' || row.vg_attr[5] === 'c',
    }));
}

function parseReport<T>(stdout: string, schema: z.ZodType<T>, tool: string): T {
  let json: unknown;
  try {
    json = JSON.parse(stdout);
  } catch (error) {
    throw new LvmReportError(`${tool} printed no JSON report`, { cause: error, output: stdout });
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    throw new LvmReportError(`${tool} report has an unexpected shape: ${z.prettifyError(parsed.error)}`, {
      output: stdout,
    });
  }
  return parsed.data;
}

function toLogicalVolume(row: z.infer<typeof lvRow>): LogicalVolume {
  const attr = row.lv_attr;
  const isSnapshot = attr[0] === 's' || attr[0] === 'S';
  return {
    vg: row.vg_name,
    name: row.lv_name,
    path: `/dev/${row.vg_name}/${row.lv_name}`,
    sizeBytes: toBytes(row.lv_size),
    attr,
    activeHere: attr[4] === 'a',
    open: attr[5] === 'o',
    origin: row.origin === '' ? null : row.origin,
    tags: splitTags(row.lv_tags),
    snapshotPercent: isSnapshot && row.data_percent !== '' ? Number(row.data_percent) : null,
    snapshotInvalid: attr[0] === 'S' || attr[4] === 'I',
    segType: row.segtype,
  };
}

function toBytes(value: string): number {
  const n = Number(value);
  if (value === '' || !Number.isSafeInteger(n) || n < 0) {
    throw new LvmReportError(`lvm reported a size that is not whole bytes: ${JSON.stringify(value)}`);
  }
  return n;
}

function splitTags(value: string): string[] {
  return value === '' ? [] : value.split(',');
}

function checkName(field: string, name: string): void {
  const problem = lvmNameProblem(name);
  if (problem) {
    throw new ValidationError(
      'INVALID_NAME',
      `invalid LVM name for ${field} ${JSON.stringify(name)}: ${problem}`,
      {
        field,
      },
    );
  }
}

function checkTag(tag: string): void {
  if (!TAG_PATTERN.test(tag)) {
    throw new ValidationError('INVALID_TAG', `invalid LVM tag ${JSON.stringify(tag)}`, { field: 'tags' });
  }
}

function checkSize(field: string, bytes: number): void {
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new ValidationError(
      'INVALID_SIZE',
      `${field} must be a positive whole number of bytes, got ${bytes}`,
      {
        field,
      },
    );
  }
}
