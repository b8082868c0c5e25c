/**
 * `qemu-img -p` prints `    (NN.NN/100%)` and ends each update with `\r`, not `\n`, so a line
 * reader would see nothing until the end. This parser takes raw output chunks (split anywhere,
 * even inside a number) and reports each new, higher percentage once.
 */

/** One progress update of a qemu-img convert/commit/rebase. */
export interface ConvertProgress {
  /** 0-100, as qemu-img printed it. */
  percent: number;
  /** percent × bytesTotal, rounded down. */
  bytesDone: number;
  /**
   * The data qemu-img has to copy: the allocated bytes it will read (only the top layer's when a
   * backing file is kept with `-B`), or the virtual size when that was not known.
   */
  bytesTotal: number;
}

const PROGRESS = /\((\d{1,3}(?:\.\d+)?)\/100%\)/;

/** Turns raw `-p` output into increasing percentages. Feed chunks with `push`, then call `end`. */
export class QemuProgressParser {
  private pending = '';
  private last = -1;

  constructor(private readonly onPercent: (percent: number) => void) {}

  /** Feeds a chunk of qemu-img's stdout; complete updates (ending in `\r` or `\n`) are parsed. */
  push(chunk: string): void {
    this.pending += chunk;
    const pieces = this.pending.split(/[\r\n]/);
    this.pending = pieces.pop() ?? '';
    for (const piece of pieces) this.parse(piece);
    // A stream that never sends a line end must not grow without bound.
    if (this.pending.length > 4096) this.pending = this.pending.slice(-64);
  }

  /** Parses what is left after the process ended. */
  end(): void {
    this.parse(this.pending);
    this.pending = '';
  }

  /** The highest percentage seen, or -1. */
  get lastPercent(): number {
    return this.last;
  }

  private parse(piece: string): void {
    const match = PROGRESS.exec(piece);
    if (!match) return;
    const percent = Math.min(100, Number(match[1]));
    // qemu-img repeats values (and prints 0 first); report only progress.
    if (!(percent > this.last)) return;
    this.last = percent;
    this.onPercent(percent);
  }
}

/** Builds a ConvertProgress from a percentage and the total bytes to copy. */
export function progressFromPercent(percent: number, bytesTotal: number): ConvertProgress {
  return { percent, bytesTotal, bytesDone: Math.floor((percent / 100) * bytesTotal) };
}
