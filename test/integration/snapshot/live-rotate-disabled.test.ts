// live-rotate can be turned off (config snapshot.liveRotate 'disabled'): for a management plane
// that cannot apply the volume path the result reports (live rotation moves the active layer).
// Then on a running VM: `auto` picks lvm-cow and says why; an explicit `live-rotate` is refused
// before any step runs; the ping report does not offer it. The default is 'enabled'.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { hostReport } from '../../../src/handlers/index.js';
import type { Capabilities } from '../../../src/host/capabilities.js';
import { createQcow2, guestWrite, imageInfo, startTestDomain } from '../../support/libvirt-fixtures.js';
import { libvirtSuite } from '../../support/libvirt-suite.js';
import { fileSnapshotCommand, runCreate } from '../../support/snapshot-harness.js';

const MiB = 1024 * 1024;
const { h, cleanup } = libvirtSuite('lrdis', { reflink: true, liveRotate: 'disabled' });

describe('live-rotate disabled (config)', () => {
  it('auto picks lvm-cow for a running VM; an explicit live-rotate is refused and changes nothing', async () => {
    const active = join(h.pool, 'gate.qcow2');
    await createQcow2(active, 16);
    const dom = await startTestDomain(cleanup, { label: 'lrdis', disk: { type: 'file', path: active } });
    await guestWrite(dom, 0x5a, 0, MiB);

    const refused = runCreate(
      h,
      fileSnapshotCommand(h, {
        file: 'gate.qcow2',
        vm: dom.name,
        parents: [],
        snapshot: 'snap-1',
        options: { strategy: 'live-rotate' },
      }),
    );
    await expect(refused).rejects.toMatchObject({
      code: 'STRATEGY_UNAVAILABLE',
      message: expect.stringMatching(/snapshot\.liveRotate.*volumePath/),
    });
    // Refused at planning: the volume has no new backing and no file was made in the store.
    expect((await imageInfo(active))['backing-filename']).toBeUndefined();

    const picked = await runCreate(
      h,
      fileSnapshotCommand(h, { file: 'gate.qcow2', vm: dom.name, parents: [], snapshot: 'snap-1' }),
    );
    expect(picked.strategy.name).toBe('lvm-cow');
    expect(picked.strategy.reason).toMatch(/live-rotate is unavailable \(disabled on this host/);
  });

  it('ping offers live-rotate unless it is disabled (enabled by default)', () => {
    // A host where every strategy can run.
    const caps: Capabilities = {
      probedAt: new Date().toISOString(),
      tools: { qemuImg: '7.2', qemu: '7.2', libvirt: '9.0', lvm: '2.03' },
      qmp: { commands: null, blockdevReopen: true, changeBackingFile: true },
      reflink: [{ root: '/pools', supported: true, reason: null }],
      problems: [],
    };
    expect(hostReport(caps, { liveRotate: 'disabled' }).strategies).toEqual(['auto', 'offline', 'lvm-cow']);
    expect(hostReport(caps).strategies).toEqual(['auto', 'offline', 'lvm-cow', 'live-rotate']);
  });
});
