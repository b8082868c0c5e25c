// The usual frame of a snapshot suite with VMs: libvirtd checked and a harness made before all
// tests, both cleaned up after them. (Apart from harness.ts, which benches import outside vitest.)
import { afterAll, beforeAll } from 'vitest';
import { assertLibvirtReady, Cleanup } from '../../helpers/libvirt-fixtures.js';
import { type Harness, makeHarness } from './harness.js';

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
