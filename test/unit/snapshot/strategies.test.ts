// The strategy table: the protocol's names, auto's order, and where each strategy can run on a host.
import { describe, expect, it } from 'vitest';
import type { Capabilities } from '../../../src/host/capabilities.js';
import { CONCRETE_STRATEGIES, strategyName } from '../../../src/protocol/index.js';
import { candidateStrategies } from '../../../src/snapshot/planner.js';
import { hostSupport, LIVE_ROTATE_DISABLED, STRATEGIES } from '../../../src/snapshot/strategies/index.js';

const host = (over: Partial<Capabilities['tools']> = {}): Capabilities => ({
  probedAt: new Date().toISOString(),
  tools: { qemuImg: '8.2.2', qemu: '8.2.2', libvirt: '10.0.0', lvm: '2.03.16', ...over },
  qmp: { commands: null, blockdevReopen: true, changeBackingFile: true },
  reflink: [
    { root: '/xfs', supported: true, reason: null },
    { root: '/ext4', supported: false, reason: 'Operation not supported' },
  ],
  problems: [],
});

describe('STRATEGIES', () => {
  it('has one entry per protocol name, under that name; the protocol enum is auto plus those', () => {
    for (const name of CONCRETE_STRATEGIES) expect(STRATEGIES[name].name).toBe(name);
    expect(strategyName.options).toEqual(['auto', ...CONCRETE_STRATEGIES]);
  });

  it('auto tries offline for a stopped VM, live-rotate then lvm-cow for a running one', () => {
    expect(candidateStrategies('auto', false).map((s) => s.name)).toEqual(['offline']);
    expect(candidateStrategies('auto', true).map((s) => s.name)).toEqual(['live-rotate', 'lvm-cow']);
    expect(candidateStrategies('lvm-cow', false).map((s) => s.name)).toEqual(['lvm-cow']);
  });

  it('derives where each strategy runs from the host facts, with the reasons', () => {
    const all = hostSupport(host());
    expect(all.offline).toMatchObject({ available: true, lvmPools: true, filePools: ['/xfs', '/ext4'] });
    expect(all['lvm-cow']).toMatchObject({ available: true, lvmPools: true, filePools: ['/xfs'] });
    expect(all['lvm-cow'].reasons.join()).toContain('/ext4 (Operation not supported)');
    expect(all['live-rotate']).toMatchObject({
      available: true,
      lvmPools: true,
      filePools: ['/xfs', '/ext4'],
    });

    const noLibvirt = hostSupport(host({ libvirt: null }));
    expect(noLibvirt.offline.available).toBe(true);
    expect(noLibvirt['lvm-cow'].reasons[0]).toMatch(/libvirt not available/);
    expect(noLibvirt['live-rotate'].available).toBe(false);

    const disabled = hostSupport(host(), { liveRotate: 'disabled' })['live-rotate'];
    expect(disabled).toEqual({
      available: false,
      lvmPools: false,
      filePools: [],
      reasons: [LIVE_ROTATE_DISABLED],
    });
  });
});
