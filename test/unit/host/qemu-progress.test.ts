import { describe, expect, it } from 'vitest';
import { progressFromPercent, QemuProgressParser } from '../../../src/host/qemu-progress.js';

function parse(chunks: string[]): number[] {
  const seen: number[] = [];
  const parser = new QemuProgressParser((p) => seen.push(p));
  for (const c of chunks) parser.push(c);
  parser.end();
  return seen;
}

describe('QemuProgressParser', () => {
  it('reads updates that end in \\r, as qemu-img -p prints them', () => {
    // Bytes recorded from a real `qemu-img convert -p` (7.2).
    const out =
      '    (0.00/100%)\r    (25.00/100%)\r    (26.56/100%)\r    (76.56/100%)\r    (100.00/100%)\r    (100.00/100%)\r\n';
    expect(parse([out])).toEqual([0, 25, 26.56, 76.56, 100]);
  });

  it('joins updates split across chunks, even inside a number', () => {
    expect(parse(['    (1', '2.5', '0/100', '%)\r    (50.00/1', '00%)\r'])).toEqual([12.5, 50]);
  });

  it('reports only increasing values and ignores other text', () => {
    expect(parse(['(10.00/100%)\r(10.00/100%)\rwarning: something\n(5.00/100%)\r(20.00/100%)\r'])).toEqual([
      10, 20,
    ]);
  });

  it('parses a last update without a line end at end()', () => {
    expect(parse(['(30.00/100%)\r(99.00/100%)'])).toEqual([30, 99]);
  });

  it('does not buffer without bound when no line end comes', () => {
    const seen: number[] = [];
    const parser = new QemuProgressParser((p) => seen.push(p));
    parser.push('x'.repeat(10_000));
    parser.push('(42.00/100%)\r');
    expect(seen).toEqual([42]);
  });

  it('turns percent into bytes of the data to copy', () => {
    expect(progressFromPercent(25, 8 * 1024 * 1024)).toEqual({
      percent: 25,
      bytesDone: 2 * 1024 * 1024,
      bytesTotal: 8 * 1024 * 1024,
    });
    expect(progressFromPercent(33.33, 1000).bytesDone).toBe(333);
  });
});
