// The dm-log-writes replay tool (test/support/lab/log-writes.ts) on a log built here in the kernel's
// documented layout: the lab suite replays real logs; this pins the parsing and the crash points.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  LOG_DISCARD,
  LOG_FLUSH,
  LOG_FUA,
  LOG_MARK,
  LOG_METADATA,
  LogFormatError,
  type ReplayPoint,
  replayEveryCrashPoint,
} from '../../support/lab/log-writes.js';

const dir = mkdtempSync(join(tmpdir(), 'log-writes-unit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Rec {
  sector?: number;
  fill?: number;
  sectors?: number;
  flags?: number;
  mark?: string;
}

/** A log as dm-log-writes lays it out: super block, then per entry a header block and its data blocks. */
function buildLog(recs: Rec[], sectorSize = 512, magic = 0x6a736677736872n): Buffer {
  const blocks: Buffer[] = [];
  const sup = Buffer.alloc(sectorSize);
  sup.writeBigUInt64LE(magic, 0);
  sup.writeBigUInt64LE(1n, 8);
  sup.writeBigUInt64LE(BigInt(recs.length), 16);
  sup.writeUInt32LE(sectorSize, 24);
  blocks.push(sup);
  for (const r of recs) {
    const head = Buffer.alloc(sectorSize);
    const flags = (r.flags ?? 0) | (r.mark === undefined ? 0 : LOG_MARK);
    head.writeBigUInt64LE(BigInt(r.sector ?? 0), 0);
    head.writeBigUInt64LE(BigInt(r.sectors ?? 0), 8);
    head.writeBigUInt64LE(BigInt(flags), 16);
    head.writeBigUInt64LE(BigInt(r.mark?.length ?? 0), 24);
    if (r.mark !== undefined) head.write(r.mark, 32);
    blocks.push(head);
    if (!(flags & (LOG_DISCARD | LOG_MARK)))
      blocks.push(Buffer.alloc((r.sectors ?? 0) * sectorSize, r.fill ?? 0));
  }
  return Buffer.concat(blocks);
}

async function replay(recs: Rec[], sectorSize = 512) {
  const log = join(dir, 'log');
  const target = join(dir, 'target');
  writeFileSync(log, buildLog(recs, sectorSize));
  writeFileSync(target, Buffer.alloc(16 * sectorSize, 0xee));
  const states: Array<{ point: ReplayPoint; disk: Buffer }> = [];
  const summary = await replayEveryCrashPoint(log, target, async (point) => {
    states.push({ point, disk: readFileSync(target) });
  });
  return { summary, states, final: readFileSync(target) };
}

describe('dm-log-writes replay', () => {
  it('stops after every FLUSH and FUA entry with the writes logged before it applied', async () => {
    const { summary, states, final } = await replay([
      { mark: 'start' },
      { sector: 1, sectors: 2, fill: 0xa1 },
      { sector: 4, sectors: 1, fill: 0xb2, flags: LOG_METADATA },
      { flags: LOG_FLUSH }, // an empty flush: point 1
      { flags: LOG_FLUSH }, // nothing written since: point 2, the same disk
      { sector: 6, sectors: 1, fill: 0xc3, flags: LOG_FLUSH | LOG_FUA }, // a journal commit block: point 3
      { sector: 1, sectors: 1, flags: LOG_DISCARD },
      { mark: 'middle' },
      { sector: 8, sectors: 3, fill: 0xd4, flags: LOG_FUA }, // point 4
      { sector: 12, sectors: 1, fill: 0xe5 }, // never flushed: after the last point
      { mark: 'dm-log-writes-end' },
    ]);
    expect(summary).toMatchObject({
      entries: 11,
      writes: 5,
      discards: 1,
      flushes: 3,
      fuas: 2,
      points: 4,
      distinctPoints: 3,
      marks: ['start', 'middle', 'dm-log-writes-end'],
      markEntries: [
        { mark: 'start', index: 0 },
        { mark: 'middle', index: 7 },
        { mark: 'dm-log-writes-end', index: 10 },
      ],
      bytesWritten: 8 * 512,
    });
    expect(states.map((s) => [s.point.ordinal, s.point.entry.index, s.point.changed])).toEqual([
      [1, 3, true],
      [2, 4, false],
      [3, 5, true],
      [4, 8, true],
    ]);
    expect(states.map((s) => s.point.last)).toEqual([false, false, false, true]);
    expect(states.map((s) => s.point.marks)).toEqual([['start'], ['start'], ['start'], ['start', 'middle']]);
    const at = (disk: Buffer, sector: number) => disk[sector * 512 + 100];
    // Point 1: the two writes, nothing else (0xee is the disk before the log).
    expect([0, 1, 2, 3, 4, 5, 6].map((s) => at(states[0]!.disk, s))).toEqual([
      0xee, 0xa1, 0xa1, 0xee, 0xb2, 0xee, 0xee,
    ]);
    expect(at(states[2]!.disk, 6)).toBe(0xc3);
    // Point 4: the discard zeroed sector 1, the FUA write landed, the unflushed one not yet.
    expect([1, 2, 8, 10, 12].map((s) => at(states[3]!.disk, s))).toEqual([0, 0xa1, 0xd4, 0xd4, 0xee]);
    // The log's end: every write, flushed or not.
    expect(at(final, 12)).toBe(0xe5);
  });

  it('counts sectors in the log sector size (4 KiB)', async () => {
    const { states } = await replay([{ sector: 2, sectors: 1, fill: 0x42, flags: LOG_FUA }], 4096);
    expect(states[0]!.disk[2 * 4096]).toBe(0x42);
    expect(states[0]!.disk[2 * 4096 - 1]).toBe(0xee);
  });

  it('refuses a file that is not a log', async () => {
    const log = join(dir, 'bad');
    writeFileSync(log, buildLog([], 512, 0x1234n));
    writeFileSync(join(dir, 't'), Buffer.alloc(512));
    await expect(replayEveryCrashPoint(log, join(dir, 't'), async () => undefined)).rejects.toThrow(
      LogFormatError,
    );
  });
});
