// The usual frame of a snapshot suite with VMs: libvirtd checked and a harness made before all
// tests, both cleaned up after them. (Apart from harness.ts, which benches import outside vitest.)
import { basename, join } from 'node:path';
import { afterAll, beforeAll, expect } from 'vitest';
import type { SnapshotCreateResult } from '../../src/protocol/index.js';
import { checkExitCode } from './images.js';
import {
  assertLibvirtReady,
  Cleanup,
  createQcow2,
  guestWrite,
  startTestDomain,
  type TestDomain,
} from './libvirt-fixtures.js';
import { differsFromReference, ReferenceDisk, roundWrites } from './reference-images.js';
import { fileSnapshotCommand, type Harness, makeHarness, runCreate } from './snapshot-harness.js';

/**
 * Registers the suite's beforeAll/afterAll. `h` stands for the harness beforeAll makes (read it in
 * tests and hooks, not at module load); `cleanup` also takes the suite's domains and files.
 */
export function libvirtSuite(
  label: string,
  opts?: Parameters<typeof makeHarness>[1],
): { h: Harness; cleanup: Cleanup } {
  const cleanup = new Cleanup();
  let made: Harness | null = null;
  beforeAll(async () => {
    await assertLibvirtReady();
    const harness = await makeHarness(label, opts);
    made = harness;
    cleanup.add('harness', () => harness.cleanup());
  });
  afterAll(() => cleanup.run());
  const h = new Proxy({} as Harness, {
    get: (_, key) => {
      if (made === null) throw new Error(`suite ${label}: the harness is read before beforeAll made it`);
      return made[key as keyof Harness];
    },
  });
  return { h, cleanup };
}

const MiB = 1024 * 1024;

/** The volume size of the suites' running VMs. */
export const VOLUME_BYTES = 32 * MiB;

/**
 * A fresh QCOW2 volume `file` (default vol.qcow2, VOLUME_BYTES) in the harness's pool (or on the
 * block device `device`), a running
 * domain on it and the raw reference of its live disk (`referenceBytes`, default the volume's size)
 * in the harness's base directory.
 */
export async function runningVolume(
  h: Harness,
  cleanup: Cleanup,
  opts: { label: string; sizeBytes?: number; reference?: string; referenceBytes?: number } & (
    | { file?: string }
    | { device: string }
  ),
) {
  const disk =
    'device' in opts
      ? { type: 'block' as const, path: opts.device }
      : { type: 'file' as const, path: join(h.pool, opts.file ?? 'vol.qcow2') };
  const active = disk.path;
  const sizeBytes = opts.sizeBytes ?? VOLUME_BYTES;
  await createQcow2(active, sizeBytes / MiB);
  const dom = await startTestDomain(cleanup, { label: opts.label, disk });
  const live = await ReferenceDisk.create(
    join(h.base, opts.reference ?? `${basename(active)}.live.raw`),
    opts.referenceBytes ?? sizeBytes,
  );
  return { active, dom, live };
}

/** Round `round`'s pattern writes (roundWrites), written in the guest and into the live reference. */
export async function guestWriteRound(
  dom: TestDomain,
  live: ReferenceDisk,
  round: number,
  sizeBytes: number,
) {
  const writes = roundWrites(round, sizeBytes);
  for (const w of writes) await guestWrite(dom, w.pattern, w.offset, w.length);
  await live.apply(writes);
  return writes;
}

/** A chain being built on a running volume: what each round adds to. */
export interface RunningChain {
  dom: TestDomain;
  live: ReferenceDisk;
  /** The volume file in the pool, and its directory in the store. */
  file: string;
  dir: string;
  /** Snapshot names so far, and the reference of what each must hold. */
  names: string[];
  frozen: ReferenceDisk[];
}

/**
 * One round: the guest writes round `round`'s patterns, snapshot `snap-<round>` of the running
 * volume is taken with `options` on the chain so far, and the reference it must hold is frozen.
 */
export async function snapshotRound(
  h: Harness,
  chain: RunningChain,
  round: number,
  options: Record<string, unknown>,
): Promise<SnapshotCreateResult> {
  await guestWriteRound(chain.dom, chain.live, round, VOLUME_BYTES);
  const name = `snap-${round}`;
  const result = await runCreate(h, chainCommand(h, chain, name, options));
  chain.names.push(name);
  chain.frozen.push(await chain.live.freeze(join(h.base, `ref-${round}.raw`)));
  return result;
}

/** The snapshot.create of `snapshot` on the running volume, its parents the chain so far. */
export function chainCommand(
  h: Harness,
  chain: Pick<RunningChain, 'dom' | 'file' | 'dir' | 'names'>,
  snapshot: string,
  options: Record<string, unknown>,
) {
  return fileSnapshotCommand(h, {
    file: chain.file,
    vm: chain.dom.name,
    dir: chain.dir,
    parents: [...chain.names],
    snapshot,
    options,
  });
}

/** Every snapshot of the chain holds its reference and passes qemu-img check. */
export async function expectChainIntact(h: Harness, chain: RunningChain): Promise<void> {
  for (const [i, ref] of chain.frozen.entries()) {
    const path = join(h.storeRoot, chain.dir, chain.names[i]!);
    expect(await differsFromReference(path, ref)).toBeNull();
    expect(await checkExitCode(path)).toBe(0);
  }
}
