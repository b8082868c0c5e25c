// A small replay tool for dm-log-writes logs (the kernel's Documentation/admin-guide/device-mapper/
// log-writes.rst; the on-disk layout is described at the top of drivers/md/dm-log-writes.c):
//
//   byte 0              super: magic u64, version u64, nr_entries u64, sectorsize u32 (little-endian),
//                       padded to one `sectorsize` block
//   then, nr_entries×   entry: sector u64, nr_sectors u64, flags u64, data_len u64, padded to one
//                       block (a MARK's name follows the 32 bytes of the entry, data_len bytes)
//                       followed by nr_sectors blocks of written data (none for DISCARD and MARK)
//
// `sector` and `nr_sectors` count `sectorsize` blocks (the data device's logical block size).
// Writes are logged when a later flush completes (FUA writes when they complete), so replaying the
// entries up to a FLUSH or FUA entry gives what a disk with a volatile write cache holds if the
// power fails right after that request: the worst case a file system must survive.
//
// Test support only (lab suites, as root): it reads the log device and writes the replay target
// with plain positioned I/O.
import { closeSync, fdatasyncSync, openSync, readSync, writeSync } from 'node:fs';

export const LOG_FLUSH = 1;
export const LOG_FUA = 2;
export const LOG_DISCARD = 4;
export const LOG_MARK = 8;
export const LOG_METADATA = 16;

const MAGIC = 0x6a736677736872n;
const ENTRY_BYTES = 32;

export interface LogSuper {
  version: number;
  entries: number;
  sectorSize: number;
}

export interface LogEntry {
  /** Position in the log, from 0. */
  index: number;
  /** First block written on the data device (in `sectorSize` blocks). */
  sector: number;
  nrSectors: number;
  flags: number;
  /** A MARK's name. */
  mark?: string;
  /** Byte offset of the written data in the log device. */
  dataOffset: number;
}

export class LogFormatError extends Error {}

function readExactly(fd: number, length: number, position: number): Buffer {
  const buffer = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buffer, done, length - done, position + done);
    if (n === 0)
      throw new LogFormatError(`log ends at byte ${position + done}, ${length - done} bytes short`);
    done += n;
  }
  return buffer;
}

/** Reads and checks the super block. */
export function readLogSuper(fd: number): LogSuper {
  const b = readExactly(fd, 28, 0);
  const magic = b.readBigUInt64LE(0);
  if (magic !== MAGIC) throw new LogFormatError(`not a dm-log-writes log: magic 0x${magic.toString(16)}`);
  const version = Number(b.readBigUInt64LE(8));
  if (version !== 1) throw new LogFormatError(`log version ${version}, only 1 is known`);
  const sectorSize = b.readUInt32LE(24);
  if (sectorSize < 512 || (sectorSize & (sectorSize - 1)) !== 0) {
    throw new LogFormatError(`log sector size ${sectorSize}`);
  }
  return { version, entries: Number(b.readBigUInt64LE(16)), sectorSize };
}

/** Every entry of the log, in order (only the headers are read; data stays on the log device). */
export function readLogEntries(fd: number, sup: LogSuper): LogEntry[] {
  const entries: LogEntry[] = [];
  let at = sup.sectorSize; // the super takes the first block
  for (let index = 0; index < sup.entries; index++) {
    const b = readExactly(fd, sup.sectorSize, at);
    const sector = Number(b.readBigUInt64LE(0));
    const nrSectors = Number(b.readBigUInt64LE(8));
    const flags = Number(b.readBigUInt64LE(16));
    const dataLen = Number(b.readBigUInt64LE(24));
    const entry: LogEntry = { index, sector, nrSectors, flags, dataOffset: at + sup.sectorSize };
    if (flags & LOG_MARK) {
      if (ENTRY_BYTES + dataLen > sup.sectorSize) throw new LogFormatError(`entry ${index}: mark too long`);
      entry.mark = b.toString('utf8', ENTRY_BYTES, ENTRY_BYTES + dataLen);
    } else if (dataLen !== 0) {
      // Inline data comes only from DAX devices, which the lab never logs.
      throw new LogFormatError(`entry ${index}: inline data (data_len ${dataLen}) is not supported`);
    }
    entries.push(entry);
    at += sup.sectorSize;
    if (!(flags & (LOG_DISCARD | LOG_MARK))) at += nrSectors * sup.sectorSize;
  }
  return entries;
}

/** Whether replaying up to and including this entry is a crash point (a completed FLUSH or FUA). */
export function isCrashPoint(entry: LogEntry): boolean {
  return (entry.flags & (LOG_FLUSH | LOG_FUA)) !== 0;
}

export interface ReplayPoint {
  /** The FLUSH/FUA entry the replay stopped after. */
  entry: LogEntry;
  /** Its number among the crash points, from 1. */
  ordinal: number;
  /** Marks seen so far, oldest first. */
  marks: string[];
  /** False when nothing was written since the previous point (the same disk state). */
  changed: boolean;
  /** No FLUSH/FUA entry follows (later entries are writes never flushed, or marks). */
  last: boolean;
}

export interface ReplaySummary {
  entries: number;
  writes: number;
  discards: number;
  flushes: number;
  fuas: number;
  marks: string[];
  /** Each mark with its log entry. */
  markEntries: Array<{ mark: string; index: number }>;
  /** FLUSH/FUA entries (crash points). */
  points: number;
  /** Crash points whose disk state differs from the previous one. */
  distinctPoints: number;
  bytesWritten: number;
}

const CHUNK = 1024 * 1024;

/**
 * Replays `logPath` onto `targetPath` (which must hold the data device's state when logging began),
 * stopping after every FLUSH/FUA entry to call `atPoint` with the target synced. Discarded ranges
 * are written with zeros. Replays to the log's end and returns what it saw.
 */
export async function replayEveryCrashPoint(
  logPath: string,
  targetPath: string,
  atPoint: (point: ReplayPoint) => Promise<void>,
): Promise<ReplaySummary> {
  const log = openSync(logPath, 'r');
  const target = openSync(targetPath, 'r+');
  try {
    const sup = readLogSuper(log);
    const entries = readLogEntries(log, sup);
    const summary: ReplaySummary = {
      entries: entries.length,
      writes: 0,
      discards: 0,
      flushes: 0,
      fuas: 0,
      marks: [],
      markEntries: [],
      points: 0,
      distinctPoints: 0,
      bytesWritten: 0,
    };
    const lastPoint = entries.filter(isCrashPoint).at(-1)?.index;
    let changed = false;
    for (const entry of entries) {
      if (entry.mark !== undefined) {
        summary.marks.push(entry.mark);
        summary.markEntries.push({ mark: entry.mark, index: entry.index });
        continue;
      }
      const bytes = entry.nrSectors * sup.sectorSize;
      const position = entry.sector * sup.sectorSize;
      if (entry.flags & LOG_DISCARD) {
        summary.discards++;
        for (let done = 0; done < bytes; done += CHUNK) {
          const n = Math.min(CHUNK, bytes - done);
          writeSync(target, Buffer.alloc(n), 0, n, position + done);
        }
        changed ||= bytes > 0;
      } else if (bytes > 0) {
        summary.writes++;
        for (let done = 0; done < bytes; done += CHUNK) {
          const n = Math.min(CHUNK, bytes - done);
          writeSync(target, readExactly(log, n, entry.dataOffset + done), 0, n, position + done);
        }
        summary.bytesWritten += bytes;
        changed = true;
      }
      if (entry.flags & LOG_FLUSH) summary.flushes++;
      if (entry.flags & LOG_FUA) summary.fuas++;
      if (!isCrashPoint(entry)) continue;
      summary.points++;
      if (changed) summary.distinctPoints++;
      // The point's state must be on the target device itself (a dm snapshot over it reads the device).
      fdatasyncSync(target);
      const last = entry.index === lastPoint;
      await atPoint({ entry, ordinal: summary.points, marks: [...summary.marks], changed, last });
      changed = false;
    }
    fdatasyncSync(target);
    return summary;
  } finally {
    closeSync(target);
    closeSync(log);
  }
}
