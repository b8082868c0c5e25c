// The device-mapper pieces of the dm-log-writes suites (inside the lab guest, as root): the slices
// of a scratch disk, the logged device a job writes through, and a throwaway view of the replayed
// copy to check each point on.

import { FaultyDevice, loadFaultModules } from './faults.js';
import { claimDisk, sh, uniqueName } from './lab.js';
import type { ReplaySummary } from './log-writes.js';

const SECTOR = 512;

/** A dm-log-writes device: every write to `data` is logged to `log` (once a later flush completes). */
export class LoggedDevice {
  private removed = false;
  private constructor(readonly name: string) {}

  get path(): string {
    return `/dev/mapper/${this.name}`;
  }

  static async create(prefix: string, data: string, log: string, bytes: number): Promise<LoggedDevice> {
    const device = new LoggedDevice(uniqueName(prefix));
    await sh('dmsetup', [
      'create',
      '--noudevsync',
      device.name,
      '--table',
      `0 ${bytes / SECTOR} log-writes ${data} ${log}`,
    ]);
    await sh('dmsetup', ['mknodes', device.name]);
    return device;
  }

  /** A MARK entry in the log (a named place between writes). */
  async mark(name: string): Promise<void> {
    if (!this.removed) await sh('dmsetup', ['message', this.name, '0', 'mark', name]);
  }

  /** Removing the target logs the writes still unflushed and the `dm-log-writes-end` mark. */
  async remove(): Promise<void> {
    if (this.removed) return;
    await sh('dmsetup', ['remove', '--noudevsync', '--retry', this.name], { okExitCodes: [0, 1] });
    this.removed = true;
  }
}

/**
 * Runs `use` on a throwaway view of `origin` (a non-persistent dm snapshot whose writes go to
 * `cow`: journal recovery, a mount, an lvm activation change nothing of the replayed copy), then
 * removes the view.
 */
export async function withThrowawayView<T>(
  name: string,
  origin: string,
  cow: string,
  bytes: number,
  use: (path: string) => Promise<T>,
): Promise<T> {
  await sh('dmsetup', [
    'create',
    '--noudevsync',
    name,
    '--table',
    `0 ${bytes / SECTOR} snapshot ${origin} ${cow} N 8`,
  ]);
  await sh('dmsetup', ['mknodes', name]);
  try {
    return await use(`/dev/mapper/${name}`);
  } finally {
    await sh('dmsetup', ['remove', '--noudevsync', '--retry', name], { okExitCodes: [0, 1] });
  }
}

/** The replay's summary lines, then one line per checked point. */
export function replayReport(
  title: string,
  summary: ReplaySummary,
  checked: number,
  points: string[],
): string {
  return [
    `${title}: ${summary.entries} entries (${summary.writes} writes, ${summary.bytesWritten} bytes; ` +
      `${summary.discards} discards; ${summary.flushes} flush, ${summary.fuas} FUA)`,
    `marks (log entry): ${summary.markEntries.map((m) => `${m.mark}@${m.index}`).join(' ')}`,
    `crash points: ${summary.points}, distinct disk states: ${summary.distinctPoints}, checked: ${checked}`,
    ...points,
  ].join('\n');
}

const MiB = 1024 * 1024;

/**
 * The slices of one claimed scratch disk a replay suite uses: the data device the job writes
 * through the log, its replica (the replay's target), the log, and the COW of throwaway views.
 * Linear dm devices: stale labels from an earlier user of the disk do not matter.
 */
export class ReplayDisks {
  private constructor(
    readonly data: FaultyDevice,
    readonly replica: FaultyDevice,
    readonly log: FaultyDevice,
    readonly cow: FaultyDevice,
    private readonly releaseClaim: () => void,
  ) {}

  static async claim(prefix: string, dataBytes: number): Promise<ReplayDisks> {
    await loadFaultModules();
    const { disk, release } = claimDisk();
    const slice = (name: string, bytes: number, offsetMiB: number) =>
      FaultyDevice.create(`${prefix}${name}`, disk, bytes, { offsetBytes: offsetMiB * MiB });
    return new ReplayDisks(
      await slice('data', dataBytes, 1),
      await slice('repl', dataBytes, 128),
      await slice('log', 256 * MiB, 256),
      await slice('cow', 64 * MiB, 1024),
      release,
    );
  }

  async release(): Promise<void> {
    for (const d of [this.data, this.replica, this.log, this.cow]) await d.remove().catch(() => undefined);
    this.releaseClaim();
  }
}
