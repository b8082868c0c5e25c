// The usual frame of a snapshot suite with VMs: libvirtd checked and a harness made before all
// tests, both cleaned up after them. (Apart from harness.ts, which benches import outside vitest.)
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import {
  assertLibvirtReady,
  Cleanup,
  createQcow2,
  guestWrite,
  startTestDomain,
  type TestDomain,
} from './libvirt-fixtures.js';
import { ReferenceDisk, roundWrites } from './reference-images.js';
import { type Harness, makeHarness } from './snapshot-harness.js';

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

/**
 * A fresh QCOW2 volume `file` in the harness's pool, a running domain on it and the raw reference
 * of its live disk (`referenceBytes`, default the volume's size) in the harness's base directory.
 */
export async function runningVolume(
  h: Harness,
  cleanup: Cleanup,
  opts: { label: string; file: string; sizeBytes: number; reference: string; referenceBytes?: number },
) {
  const active = join(h.pool, opts.file);
  await createQcow2(active, opts.sizeBytes / MiB);
  const dom = await startTestDomain(cleanup, { label: opts.label, disk: { type: 'file', path: active } });
  const live = await ReferenceDisk.create(
    join(h.base, opts.reference),
    opts.referenceBytes ?? opts.sizeBytes,
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
