// Independent reference images for the snapshot tests: raw files to which a test applies the
// same pattern writes it makes the guest do, with qemu-io (QEMU's tool, not the agent's code),
// and frozen copies of them at each snapshot. Compare them with `qemu-img compare` against a
// snapshot read through its chain: neither side is produced by the code under test.
import { existsSync } from 'node:fs';
import { execa } from 'execa';

export interface PatternWrite {
  pattern: number;
  offset: number;
  length: number;
}

/** A raw disk image that mirrors what the guest should see. */
export class ReferenceDisk {
  private constructor(
    readonly path: string,
    readonly sizeBytes: number,
  ) {}

  /** A sparse, all-zero raw file of `sizeBytes`. */
  static async create(path: string, sizeBytes: number): Promise<ReferenceDisk> {
    await execa('truncate', ['-s', String(sizeBytes), path], { timeout: 30_000 });
    return new ReferenceDisk(path, sizeBytes);
  }

  /** Applies writes in order with `qemu-io -f raw`. */
  async apply(writes: readonly PatternWrite[]): Promise<void> {
    if (writes.length === 0) return;
    const commands = writes.flatMap((w) => ['-c', `write -q -P ${w.pattern} ${w.offset} ${w.length}`]);
    await execa('qemu-io', ['-f', 'raw', ...commands, this.path], { timeout: 60_000 });
  }

  /** A frozen copy (what the guest saw at a snapshot), as a new ReferenceDisk. */
  async freeze(path: string): Promise<ReferenceDisk> {
    if (existsSync(path)) throw new Error(`reference ${path} exists already`);
    // Sparse (qemu-img skips zeros; the lab's busybox cp cannot): the lab guest keeps these in RAM.
    await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', this.path, path], { timeout: 60_000 });
    return new ReferenceDisk(path, this.sizeBytes);
  }
}

/**
 * Oracle: `qemu-img compare -U` of a QCOW2 image (through its whole backing chain) against a raw
 * reference. Returns qemu-img's message when they differ, null when identical.
 */
export async function differsFromReference(image: string, reference: ReferenceDisk): Promise<string | null> {
  const result = await execa(
    'qemu-img',
    ['compare', '-U', '-f', 'qcow2', '-F', 'raw', image, reference.path],
    {
      timeout: 120_000,
      reject: false,
    },
  );
  if (result.exitCode === 0) return null;
  if (result.exitCode === 1) return `${image} vs ${reference.path}: ${String(result.stdout).trim()}`;
  throw new Error(`qemu-img compare ${image} ${reference.path} failed: ${String(result.stderr)}`);
}

/** Deterministic pseudo-random writes for round `round`: 1-3 writes of 64 KiB-1 MiB inside `sizeBytes`. */
export function roundWrites(round: number, sizeBytes: number): PatternWrite[] {
  const KiB = 1024;
  let seed = (round * 2654435761) >>> 0;
  const next = (): number => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed;
  };
  const count = 1 + (next() % 3);
  const writes: PatternWrite[] = [];
  for (let i = 0; i < count; i++) {
    const length = 64 * KiB * (1 + (next() % 16));
    const offset = Math.floor((next() % (sizeBytes - length)) / (64 * KiB)) * 64 * KiB;
    writes.push({ pattern: 1 + ((round * 7 + i * 13) % 254), offset, length });
  }
  return writes;
}
