// The per-command-type table of the job layer: lock keys and who handles each type.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { COMMAND_TABLE, commandSpec, commandTypesHandledBy } from '../../../src/jobs/command-table.js';
import { COMMAND_TYPES, type Command, commandSchema } from '../../../src/protocol/index.js';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'command-table-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const store = () => ({ root, dir: 'vol' });
const parse = (type: string, params: unknown): Command => commandSchema.parse({ id: 'c-1', type, params });

describe('COMMAND_TABLE', () => {
  it('describes every command type of the protocol', () => {
    expect(Object.keys(COMMAND_TABLE).sort()).toEqual([...COMMAND_TYPES].sort());
  });

  it('locks a volume job on its volume, a chain check without one on its store dir, nothing else', () => {
    const volume = { kind: 'lvm', vg: 'vg0', lv: 'disk1' } as const;
    const create = parse('snapshot.create', { volume, store: store(), snapshot: 's1' });
    expect(commandSpec(create.type).lockKey(create)).toBe('volume:lvm~vg0~disk1');
    const verify = parse('chain.verify', { store: store(), chain: ['s1'] });
    expect(commandSpec(verify.type).lockKey(verify)).toBe(`store:${root}/vol`);
    const verifyVolume = parse('chain.verify', { store: store(), chain: ['s1'], volume });
    expect(commandSpec(verifyVolume.type).lockKey(verifyVolume)).toBe('volume:lvm~vg0~disk1');
    const ping = parse('agent.ping', {});
    expect(commandSpec(ping.type).lockKey(ping)).toBeNull();
    // Every name of a volume (live rotation's layer names) takes the volume's one lock.
    const layer = { kind: 'lvm', vg: 'vg0', lv: 'disk1.lr-b' } as const;
    const resize = parse('volume.resize', { volume: layer, sizeBytes: 1024 * 1024 });
    expect(commandSpec(resize.type).lockKey(resize)).toBe('volume:lvm~vg0~disk1');
  });

  it('refuses a store root that is not configured, and a volume group not allowed', async () => {
    const policy = { storeRoots: [root], fileRoots: [], volumeGroups: ['vg0'] };
    const volume = { kind: 'lvm', vg: 'other', lv: 'disk1' } as const;
    const create = parse('snapshot.create', { volume, store: store(), snapshot: 's1' });
    await expect(commandSpec(create.type).confine(create, policy)).rejects.toMatchObject({
      code: 'VOLUME_GROUP_NOT_ALLOWED',
    });
    const elsewhere = parse('chain.verify', { store: { root: '/nowhere', dir: 'vol' }, chain: ['s1'] });
    await expect(commandSpec(elsewhere.type).confine(elsewhere, policy)).rejects.toMatchObject({
      code: 'STORE_ROOT_NOT_CONFIGURED',
    });
  });

  it('names who handles each type: the job layer job.cancel, the agent ping, the engine the rest', () => {
    expect(commandTypesHandledBy('job-layer')).toEqual(['job.cancel']);
    expect(commandTypesHandledBy('agent')).toEqual(['agent.ping']);
    expect(commandTypesHandledBy('engine').sort()).toEqual(
      ['chain.verify', 'snapshot.create', 'snapshot.delete', 'snapshot.revert', 'volume.resize'].sort(),
    );
  });
});
