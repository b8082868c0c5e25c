import { describe, expect, it } from 'vitest';
import { chooseKind, chooseStrategy } from '../../../src/snapshot/planner.js';

describe('chooseStrategy', () => {
  const reflink = { supported: true, reason: null };
  const noReflink = { supported: false, reason: 'Operation not supported' };
  const live = { supported: true, reason: 'QEMU 7.2.0 rotates live' };
  const noLive = { supported: false, reason: 'QEMU 5.2.0 of the VM is older than 6.1' };
  const input = {
    requested: 'auto',
    vmRunning: true,
    poolKind: 'lvm',
    probes: {},
  } as const;

  it('auto: offline for a stopped VM; live-rotate for a running one when it can; else lvm-cow; with the reason', () => {
    expect(chooseStrategy({ ...input, vmRunning: false }).name).toBe('offline');
    expect(chooseStrategy({ ...input, probes: { 'live-rotate': live } })).toEqual({
      name: 'live-rotate',
      reason: 'auto: the VM is running and QEMU 7.2.0 rotates live',
    });
    const lvm = chooseStrategy({ ...input, probes: { 'live-rotate': noLive } });
    expect(lvm).toMatchObject({
      name: 'lvm-cow',
      reason: expect.stringMatching(/older than 6.1.*LVM copy-on-write/),
    });
    const file = chooseStrategy({
      ...input,
      poolKind: 'file',
      probes: { 'lvm-cow': reflink, 'live-rotate': noLive },
    });
    expect(file).toMatchObject({ name: 'lvm-cow', reason: expect.stringMatching(/reflink/) });
    expect(
      chooseStrategy({ ...input, poolKind: 'file', probes: { 'lvm-cow': noReflink, 'live-rotate': live } })
        .name,
    ).toBe('live-rotate');
  });

  it('refuses what cannot run, with the reason, instead of silently choosing another way', () => {
    expect(() =>
      chooseStrategy({ ...input, poolKind: 'file', probes: { 'lvm-cow': noReflink, 'live-rotate': noLive } }),
    ).toThrow(/older than 6.1.*Operation not supported/);
    expect(() => chooseStrategy({ ...input, requested: 'offline' })).toThrow(/running/);
    expect(() =>
      chooseStrategy({ ...input, requested: 'live-rotate', probes: { 'live-rotate': noLive } }),
    ).toThrow(
      expect.objectContaining({
        code: 'STRATEGY_UNAVAILABLE',
        message: expect.stringMatching(/older than 6.1/),
      }),
    );
    expect(() => chooseStrategy({ ...input, requested: 'live-rotate', vmRunning: false })).toThrow(
      /not running/,
    );
    expect(chooseStrategy({ ...input, requested: 'live-rotate', probes: { 'live-rotate': live } }).name).toBe(
      'live-rotate',
    );
    expect(chooseStrategy({ ...input, requested: 'lvm-cow', probes: { 'live-rotate': live } }).name).toBe(
      'lvm-cow',
    );
  });

  it('lvm-cow on a stopped VM is allowed (rebase -u then)', () => {
    expect(
      chooseStrategy({
        ...input,
        requested: 'lvm-cow',
        vmRunning: false,
        poolKind: 'file',
        probes: { 'lvm-cow': reflink },
      }).reason,
    ).toMatch(/rebase -u/);
  });
});

describe('chooseKind', () => {
  const base = {
    parentName: 'snap-3',
    parentExists: true,
    parentDepth: 3,
    activeBacksOntoParent: true,
    maxChainLength: 8,
  };
  it('delta when the parent exists, backs the active and the chain has room', () => {
    expect(chooseKind(base)).toEqual({ kind: 'delta' });
  });
  it.each([
    [{ parentName: null }, /no parent/],
    [{ parentExists: false }, /missing/],
    [{ parentDepth: 8 }, /maxChainLength 8/],
    [{ activeBacksOntoParent: false }, /does not back onto/],
  ])('full with a reason: %o', (change, reason) => {
    const choice = chooseKind({ ...base, ...change });
    expect(choice.kind).toBe('full');
    expect(choice.kind === 'full' && choice.reason).toMatch(reason);
  });
});
