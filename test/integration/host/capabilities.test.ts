import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  hasStableBlockdevReopen,
  probeCapabilities,
  probeQemuBinary,
} from '../../../src/host/capabilities.js';
import { FilePool } from '../../../src/host/file-pool.js';
import { Libvirt } from '../../../src/host/libvirt.js';
import { Lvm } from '../../../src/host/lvm.js';
import { QemuImg } from '../../../src/host/qemu-img.js';
import { hostSupport } from '../../../src/snapshot/strategies/index.js';
import { tempDir } from '../../support/images.js';
import { mountXfs, type XfsMount } from '../../support/xfs.js';

let xfs: XfsMount;
let ext: { dir: string; cleanup: () => Promise<void> };
let xfsRoot: string;
let extRoot: string;

beforeAll(async () => {
  xfs = await mountXfs('capabilities-test');
  ext = await tempDir('capabilities-test-ext');
  xfsRoot = join(xfs.mountPoint, 'pools');
  extRoot = join(ext.dir, 'pools');
  await mkdir(xfsRoot);
  await mkdir(extRoot);
});
afterAll(async () => {
  await xfs?.cleanup();
  await ext?.cleanup();
});

/** Oracle: the first version number a tool prints. */
async function versionOf(file: string, args: string[], pattern: RegExp): Promise<string> {
  const { stdout } = await execa(file, args, { timeout: 10_000 });
  const match = pattern.exec(String(stdout));
  if (!match?.[1]) throw new Error(`${file} printed no version: ${String(stdout)}`);
  return match[1];
}

describe('probeCapabilities', () => {
  it('finds the real tools and derives the strategies this host can run', async () => {
    const qemuImg = new QemuImg({ timeoutMs: 10_000, exportTimeoutMs: 10_000 });
    const roots = [xfsRoot, extRoot];
    const caps = await probeCapabilities(
      {
        qemuImg,
        libvirt: new Libvirt({ uri: process.env.TEST_LIBVIRT_URI ?? 'qemu:///system', timeoutMs: 10_000 }),
        lvm: new Lvm({ timeoutMs: 10_000 }),
        filePool: new FilePool({ roots, qemuImg, timeoutMs: 10_000 }),
      },
      { pools: { fileRoots: roots } },
    );
    expect(caps.problems).toEqual([]);
    expect(caps.tools.qemuImg).toBe(await versionOf('qemu-img', ['--version'], /version (\d+\.\d+\.\d+)/));
    expect(caps.tools.libvirt).toBe(await versionOf('virsh', ['--version'], /^(\d+\.\d+\.\d+)/));
    expect(caps.tools.qemu).toBe(
      await versionOf('qemu-system-x86_64', ['--version'], /QEMU emulator version (\d+\.\d+\.\d+)/),
    );
    expect(caps.tools.lvm).toMatch(/^2\.\d+\.\d+$/);
    expect(caps.qmp.commands).toContain('blockdev-reopen');
    expect(caps.qmp.commands).toContain('query-named-block-nodes');
    expect(caps.qmp).toMatchObject({ blockdevReopen: true, changeBackingFile: true });

    expect(caps.reflink).toEqual([
      { root: xfsRoot, supported: true, reason: null },
      { root: extRoot, supported: false, reason: expect.stringMatching(/not supported/i) },
    ]);
    expect(hostSupport(caps).offline).toMatchObject({ available: true, lvmPools: true, filePools: roots });
    expect(hostSupport(caps)['lvm-cow']).toMatchObject({
      available: true,
      lvmPools: true,
      filePools: [xfsRoot],
    });
    expect(hostSupport(caps)['lvm-cow'].reasons.join()).toContain(extRoot);
    expect(hostSupport(caps)['live-rotate']).toMatchObject({
      available: true,
      lvmPools: true,
      filePools: roots,
      reasons: [],
    });
    expect(Date.parse(caps.probedAt)).not.toBeNaN();
  });

  it('turns missing tools into nulls and unavailable strategies, never a throw', async () => {
    const absent = new QemuImg({ timeoutMs: 5_000, exportTimeoutMs: 5_000, binary: '/nonexistent/qemu-img' });
    const caps = await probeCapabilities(
      {
        qemuImg: absent,
        libvirt: null,
        lvm: new Lvm({ timeoutMs: 5_000, binaryDir: '/nonexistent' }),
        filePool: new FilePool({ roots: [extRoot], qemuImg: absent, timeoutMs: 5_000 }),
        qemuBinary: () => probeQemuBinary({ binary: '/nonexistent/qemu-system-x86_64' }),
      },
      { pools: { fileRoots: [extRoot, join(ext.dir, 'not-a-root')] } },
    );
    expect(caps.tools).toEqual({ qemuImg: null, qemu: null, libvirt: null, lvm: null });
    expect(caps.qmp).toEqual({ commands: null, blockdevReopen: false, changeBackingFile: false });
    for (const kind of ['offline', 'lvm-cow', 'live-rotate'] as const) {
      expect(hostSupport(caps)[kind]).toMatchObject({ available: false, lvmPools: false, filePools: [] });
      expect(hostSupport(caps)[kind].reasons[0]).toBe('qemu-img not found');
    }
    expect(caps.reflink.map((r) => r.supported)).toEqual([false, false]);
    expect(caps.problems.join('\n')).toMatch(/qemu-img.*not installed/);
    expect(caps.problems.join('\n')).toMatch(/not-a-root/);
  });

  it('an old QEMU (5.2) without reflink: offline and live rotation through libvirt, no lvm-cow', async () => {
    const qemuImg = new QemuImg({ timeoutMs: 10_000, exportTimeoutMs: 10_000 });
    const caps = await probeCapabilities(
      {
        qemuImg,
        libvirt: { versions: async () => ({ libvirt: '6.0.0', qemu: '5.2.0' }) },
        lvm: null,
        filePool: new FilePool({ roots: [extRoot], qemuImg, timeoutMs: 10_000 }),
        qemuBinary: null,
      },
      { pools: { fileRoots: [extRoot] } },
    );
    expect(caps.tools.qemu).toBe('5.2.0');
    expect(hostSupport(caps).offline).toMatchObject({
      available: true,
      lvmPools: false,
      filePools: [extRoot],
    });
    expect(hostSupport(caps)['lvm-cow'].available).toBe(false);
    // live-rotate goes through libvirt (snapshot-create-as, blockcommit): no blockdev-reopen needed.
    expect(hostSupport(caps)['live-rotate']).toMatchObject({ available: true, filePools: [extRoot] });
    expect(hostSupport(caps)['live-rotate'].reasons.join()).not.toMatch(/blockdev-reopen/);
  });

  it('asks the QEMU binary for its QMP commands without a VM', async () => {
    const info = await probeQemuBinary();
    expect(info.version).toMatch(/^\d+\.\d+\.\d+$/);
    expect(info.qmpCommands).toEqual(
      expect.arrayContaining(['change-backing-file', 'blockdev-add', 'query-version']),
    );
  });

  it('compares QEMU versions for blockdev-reopen', () => {
    expect(hasStableBlockdevReopen('6.1.0')).toBe(true);
    expect(hasStableBlockdevReopen('7.2.22')).toBe(true);
    expect(hasStableBlockdevReopen('10.0.0')).toBe(true);
    expect(hasStableBlockdevReopen('6.0.1')).toBe(false);
    expect(hasStableBlockdevReopen('5.2.0')).toBe(false);
    expect(hasStableBlockdevReopen(null)).toBe(false);
  });
});
