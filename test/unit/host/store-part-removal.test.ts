// P3 (docs/reliability.md): an export's undo removed its part file without an fsync of the store
// directory, journaled "undone", and a power cut brought the part back under a later job. The fsync
// is what a power cut needs and nothing on a live host can observe, so a spy watches for it.
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { fsyncPath } from '../../../src/fsync.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { SnapshotStore } from '../../../src/host/store.js';
import { tempDir } from '../../support/images.js';

vi.mock('../../../src/fsync.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../../../src/fsync.js')>();
  return { fsyncPath: vi.fn(real.fsyncPath) };
});

const { dir: base, cleanup } = await tempDir('store-part');
const root = join(base, 'store');
const volume = join(root, 'vol');
await mkdir(volume, { recursive: true });
const store = new SnapshotStore({
  roots: [root],
  qemuImg: new QemuImg({ timeoutMs: 1000, exportTimeoutMs: 1000 }),
});
afterAll(cleanup);
beforeEach(() => {
  vi.mocked(fsyncPath).mockClear();
});

describe('SnapshotStore.removePart', () => {
  it('fsyncs the store directory after removing a part, before it returns', async () => {
    const part = join(volume, '.snap-1.part');
    await writeFile(part, 'partial export');
    await store.removePart(part);
    expect(await readdir(volume)).toEqual([]);
    expect(vi.mocked(fsyncPath).mock.calls).toEqual([[volume]]);
  });

  it('does not fsync when there was no part to remove', async () => {
    await store.removePart(join(volume, '.snap-2.part'));
    expect(vi.mocked(fsyncPath)).not.toHaveBeenCalled();
  });
});
